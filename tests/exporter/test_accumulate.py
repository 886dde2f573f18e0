"""Exports that accumulate: the same weights and graph form add to a folder; another form is refused (or
replaced with --replace); two exports finishing together keep each other's graphs; kept files are hash-checked."""

from __future__ import annotations

import json

import pytest

from beit_deploy.core.errors import UsageError
from beit_deploy.core.manifest import check_artifact, read_manifest
from beit_deploy.exporter.loading import ModelSpec
from beit_deploy.exporter.pipeline import ExportOptions, export
from beit_deploy.exporter.quantize import QuantizeOptions

CPU_INT8 = QuantizeOptions(int8_cpu=True)


def run(model, out, **options):
    random = options.pop("random_weights", False)
    seed = options.pop("seed", 0)
    return export(ModelSpec(str(model), random, seed), ExportOptions(out_dir=out, **options))[0]


def all_checked(folder):
    manifest = read_manifest(folder)
    for precision in manifest.artifacts:
        check_artifact(folder, manifest, precision, hashes=True)  # size and sha256, file by file
    return manifest


def test_the_same_form_adds_refreshes_and_keeps(tiny_dir, tmp_path, capsys):
    model = tiny_dir("classification")
    first = run(model, tmp_path, fp16=True)
    fp16_hash = first.manifest.sha256["model.fp16.onnx"]
    second = run(model, tmp_path, quantize=CPU_INT8)
    err = capsys.readouterr().err
    assert "kept: model.fp16.onnx (from an earlier export)" in err and "refreshed: model.onnx" in err
    assert second.kept == ("fp16",) and second.folder == first.folder
    manifest = all_checked(second.folder)
    assert list(manifest.artifacts) == ["fp32", "fp16", "int8cpu"]
    assert manifest.sha256["model.fp16.onnx"] == fp16_hash and manifest.parity["fp16"] == first.manifest.parity["fp16"]
    assert [run_["artifacts"] for run_ in manifest.runs] == [["fp16"], ["fp32", "int8cpu"]]
    assert all({"date", "command", "python", "platform", "versions"} <= set(r) for r in manifest.runs)
    assert manifest == second.manifest


@pytest.mark.parametrize("change, needle", [
    (dict(attention="fused"), "--attention fused (there: decomposed)"),
    (dict(bias_mode="gathered"), "--bias-mode gathered (there: materialised)"),
    (dict(random_weights=True, seed=3), "other weights (there: pretrained"),
])
def test_another_form_is_refused_before_any_work_and_replace_replaces(tiny_dir, tmp_path, change, needle,
                                                                       monkeypatch):
    model = tiny_dir("classification")
    folder = run(model, tmp_path, fp16=True).folder
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    from beit_deploy.exporter import pipeline

    monkeypatch.setattr(pipeline, "_build", lambda *a: pytest.fail("refused only after the work"))
    with pytest.raises(UsageError) as refused:
        run(model, tmp_path, **dict(change))
    assert needle in str(refused.value) and "--replace" in str(refused.value) and "--out" in str(refused.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # untouched
    monkeypatch.undo()
    replaced = run(model, tmp_path, replace=True, **dict(change))
    assert replaced.kept == () and list(all_checked(folder).artifacts) == ["fp32"]
    assert not (folder / "model.fp16.onnx").exists()


def interleaved(monkeypatch, other):
    """Make the next export run `other()` (a whole export) after its own graphs are built and before its swap:
    the moment two exports started together finish in the other order."""
    from beit_deploy.exporter import pipeline

    real, calls = pipeline._build, []

    def build_then_let_the_other_finish(*args):
        manifest = real(*args)
        if not calls:
            calls.append("other")
            other()
        return manifest

    monkeypatch.setattr(pipeline, "_build", build_then_let_the_other_finish)
    return calls


def test_concurrent_exports_keep_each_others_graphs(tiny_dir, tmp_path, monkeypatch):
    """Export A (int8cpu) passed its up-front check on an empty folder; export B (fp16) swaps in before A does.
    A then merges under the swap's lock and keeps B's fp16 graph (before: the last swap won, silently)."""
    model = tiny_dir("classification")
    calls = interleaved(monkeypatch, lambda: run(model, tmp_path, fp16=True))
    a = run(model, tmp_path, quantize=CPU_INT8)
    assert calls == ["other"] and a.kept == ("fp16",)
    assert list(all_checked(a.folder).artifacts) == ["fp32", "fp16", "int8cpu"]


def test_a_concurrent_export_of_another_form_makes_the_later_one_fail_cleanly(tiny_dir, tmp_path, monkeypatch):
    model = tiny_dir("classification")
    interleaved(monkeypatch, lambda: run(model, tmp_path, attention="fused"))
    with pytest.raises(UsageError, match="--attention decomposed"):
        run(model, tmp_path, fp16=True)
    folder = tmp_path / "tiny-classification" / "64x64"
    assert read_manifest(folder).attention == "fused" and list(all_checked(folder).artifacts) == ["fp32"]
    assert [p.name for p in folder.parent.iterdir()] == ["64x64"]  # no leftovers


def test_a_changed_earlier_artifact_is_not_kept(tiny_dir, tmp_path, capsys):
    model = tiny_dir("classification")
    folder = run(model, tmp_path, fp16=True).folder
    with open(folder / "model.fp16.onnx", "r+b") as f:  # same size, other bytes
        f.seek(100)
        f.write(b"\0\0\0\0")
    result = run(model, tmp_path, quantize=CPU_INT8)
    assert "not kept: model.fp16.onnx" in capsys.readouterr().err
    assert result.kept == () and list(all_checked(folder).artifacts) == ["fp32", "int8cpu"]
    assert not (folder / "model.fp16.onnx").exists()


def test_an_older_manifest_without_a_weights_hash_is_not_merged_into(tiny_dir, tmp_path):
    model = tiny_dir("classification")
    folder = run(model, tmp_path, fp16=True).folder
    data = json.loads((folder / "manifest.json").read_text())
    del data["weights"]["sha256"], data["runs"]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match="records no weights hash"):
        run(model, tmp_path)
    result = run(model, tmp_path, replace=True)
    assert list(result.manifest.artifacts) == ["fp32"]



def test_an_earlier_artifact_that_is_a_link_is_not_kept(tiny_dir, tmp_path, capsys):
    model = tiny_dir("classification")
    folder = run(model, tmp_path, fp16=True).folder
    (folder / "model.fp16.onnx").rename(folder / "real.fp16")
    (folder / "model.fp16.onnx").symlink_to("real.fp16")  # inside the folder, same bytes: still not kept
    result = run(model, tmp_path, quantize=CPU_INT8)
    assert "not kept: model.fp16.onnx (a symbolic link" in capsys.readouterr().err
    assert result.kept == () and not (folder / "real.fp16").exists()


def test_several_resolutions_are_refused_before_the_first_is_written(tiny_dir, tmp_path):
    model = tiny_dir("classification")
    run(model, tmp_path, resolutions=((32, 32),), attention="fused")
    with pytest.raises(UsageError, match="--attention decomposed"):
        run(model, tmp_path, resolutions=((64, 64), (32, 32)))
    assert not (tmp_path / "tiny-classification" / "64x64").exists()  # the first resolution was not written
