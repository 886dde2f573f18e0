"""The low items of hardening round 3: each a clear line or a bound instead of "internal error" or a surprise."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core.errors import ArtifactError, UsageError
from beit_deploy.core.manifest import read_manifest


def run(*args, env=None):
    result = CliRunner().invoke(main, list(map(str, args)), env=env)
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    return result


def test_export_seed_must_be_a_valid_seed(tiny_dir, tmp_path):
    from beit_deploy.exporter.loading import ModelSpec

    result = run("export", "--model", tiny_dir("features"), "--random-weights", "--seed", "-1", "--out", tmp_path)
    assert result.exit_code == 2 and "--seed" in result.stderr
    with pytest.raises(UsageError, match="seed must be"):
        ModelSpec("x", random_weights=True, seed=-1)


def test_export_into_proc_is_refused_before_the_model_loads(tiny_dir, monkeypatch):
    from beit_deploy.exporter import pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    result = run("export", "--model", tiny_dir("features"), "--out", "/proc/beit-deploy-export")
    assert result.exit_code == 2 and "cannot write into '/proc/beit-deploy-export'" in result.stderr


def test_full_disk_during_fp16_conversion_is_one_clear_line(tiny_dir, tmp_path, monkeypatch):
    """onnx's shape inference writes a truncated file on a full disk and says nothing; loading it then raised
    protobuf's DecodeError, reported as "internal error: DecodeError"."""
    from onnxruntime.transformers import float16

    def truncated(src, dst, *args, **kwargs):
        with open(src, "rb") as f, open(dst, "wb") as out:
            out.write(f.read()[:1000])  # what a full disk leaves

    monkeypatch.setattr(float16, "infer_shapes_path", truncated)
    result = run("export", "--model", tiny_dir("features"), "--fp16", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "disk is full" in result.stderr and "nothing was written" in result.stderr
    assert not list((tmp_path / "out").rglob("manifest.json"))


def _edited(tiny_export, tmp_path, **changes):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_export("classification"), copy)
    data = json.loads((copy / "manifest.json").read_text())
    data.update(changes)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


def test_format_version_as_a_string_says_so(tiny_export, tmp_path):
    with pytest.raises(ArtifactError, match=r"format version '1' \(a str, not the number 1\)"):
        read_manifest(_edited(tiny_export, tmp_path, format_version="1"))


def test_labels_must_be_strings(tiny_export, tmp_path):
    with pytest.raises(ArtifactError, match="labels must map class ids to names"):
        read_manifest(_edited(tiny_export, tmp_path, labels={"0": ["not", "a", "name"], "1": 7}))


@pytest.mark.parametrize("value, traceback", [("0", False), ("", False), ("false", False), ("1", True)])
def test_debug_zero_means_no_traceback(monkeypatch, value, traceback):
    from beit_deploy.cli.common import debugging

    monkeypatch.setenv("BEIT_DEPLOY_DEBUG", value)
    assert debugging() is traceback


def test_source_and_weights_must_be_objects(tiny_export, tmp_path):
    with pytest.raises(ArtifactError, match="source and weights must be JSON objects"):
        read_manifest(_edited(tiny_export, tmp_path, source="somebody/beit"))


def test_compare_random_is_bounded(tiny_export):
    result = run("compare", tiny_export("classification"), "--runners", "onnxrt-fp32", "--random", "100000")
    assert result.exit_code == 2 and "--random must be 0 to 64" in result.stderr
