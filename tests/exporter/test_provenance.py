"""Reproducible manifests: each export's date, command line, Python, platform and versions (`runs`), the hub
revision asked for and the commit it resolved to, the weights' sha256; older manifests still read."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core.manifest import read_manifest, this_run
from beit_deploy.exporter import loading


def test_this_run_says_when_how_and_where(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/beit-deploy", "export", "--model", "a b"])
    run = this_run({"fp32": "model.onnx"}, packages=("click",))
    assert run["command"] == "beit-deploy export --model 'a b'" and run["artifacts"] == ["fp32"]
    assert run["date"].endswith("+00:00") and run["python"].count(".") == 2 and run["platform"]
    assert set(run["versions"]) == {"click"}


def test_an_export_records_its_run_and_older_manifests_still_read(tiny_export, tmp_path):
    folder = tiny_export("classification")
    manifest = read_manifest(folder)
    assert len(manifest.runs) == 1 and manifest.runs[0]["artifacts"] == ["fp32"]
    assert len(manifest.weights["sha256"]) == 64 and "revision" not in manifest.source  # a local folder
    data = json.loads((folder / "manifest.json").read_text())
    for key in ("runs", "labels_from"):
        del data[key]
    del data["weights"]["sha256"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    old = read_manifest(tmp_path)
    assert old.runs == [] and old.labels_from == {} and old.weights == {"kind": "pretrained", "seed": None}


def test_the_weights_hash_tells_weights_apart_not_spellings(tiny_dir):
    model = tiny_dir("classification")
    a = loading.load_model(loading.ModelSpec(str(model))).model
    b = loading.load_model(loading.ModelSpec(str(model) + "/")).model
    c = loading.load_model(loading.ModelSpec(str(model), random_weights=True, seed=1)).model
    assert loading.weights_sha256(a) == loading.weights_sha256(b) != loading.weights_sha256(c)


def test_the_hub_commit_is_read_from_the_cache_path(monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    seen = {}

    def cached(repo, filename, revision=None, **_):
        seen.update(repo=repo, revision=revision)
        return f"/cache/models--microsoft--beit/snapshots/{commit}/config.json"

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    assert loading.hub_commit("microsoft/beit-base-patch16-224", "v1") == commit and seen["revision"] == "v1"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert loading.hub_commit("microsoft/x", None) is None


def test_revision_reaches_from_pretrained(monkeypatch):
    calls = []

    class Fake:
        @classmethod
        def from_pretrained(cls, model, **kwargs):
            calls.append((model, kwargs))
            return "model"

    assert loading._from_pretrained(Fake, "beit-base-patch16-224", "registry", revision="refs/pr/3") == "model"
    assert calls == [("microsoft/beit-base-patch16-224", {"local_files_only": False, "revision": "refs/pr/3"})]


@pytest.mark.parametrize("extra", [[], ["--random-weights"]])
def test_revision_without_the_hub_is_refused(tiny_dir, tmp_path, extra):
    model = ["--model", str(tiny_dir("classification"))] if not extra else ["--model", "beit-base-patch16-224"]
    result = CliRunner().invoke(main, ["export", *model, *extra, "--revision", "v1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--revision 'v1' picks a version on the Hugging Face Hub" in result.output


def test_verify_rebuilds_the_recorded_commit(tiny_export, monkeypatch):
    from beit_deploy.proof import verify

    manifest = read_manifest(tiny_export("classification"))
    hub = manifest.__class__(**{**manifest.__dict__, "source": {"kind": "hub", "model": "org/beit",
                                                              "revision": "main", "commit": "c" * 40}})
    seen = []

    def load_model(spec):
        seen.append(spec)
        raise RuntimeError("stop here: the spec is what this test looks at")

    monkeypatch.setattr(loading, "load_model", load_model)
    with pytest.raises(RuntimeError, match="stop here"):
        verify.reference_model(hub)
    assert seen[0].revision == "c" * 40 and seen[0].model == "org/beit"
