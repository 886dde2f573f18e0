"""compare: Polygraphy Comparator over onnxrt/torch runners, planted errors, JSON saves, data_loader.py + CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_verify import planted_copy

from beit_deploy.proof.compare import CompareOptions, compare
from beit_deploy.exporter.data_loader import write_data_loader
from beit_deploy.core import progress
from beit_deploy.core.errors import UsageError
from beit_deploy.core.manifest import read_manifest
from beit_deploy.proof.verify import feed_dicts, photo_paths


@pytest.fixture
def classification(tiny_export):
    return tiny_export("classification", fp16=True)


def test_compare_passes_and_saves_json(classification, tmp_path, capfd, monkeypatch):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    monkeypatch.setenv(progress.VERBOSITY_ENV, str(progress.VERBOSE))  # Polygraphy's own report only with -v
    options = CompareOptions(random=1, save_inputs=tmp_path / "in.json", save_outputs=tmp_path / "out.json")
    outcome = compare(classification, options)
    assert outcome.passed and outcome.failed() == []
    assert [p[:2] for p in outcome.pairs] == [("onnxrt-fp32", "torch"), ("onnxrt-fp16", "torch")]
    assert "trt" in outcome.skipped  # no TensorRT on CPU machines; the reason is said
    printed = capfd.readouterr().out
    assert "Accuracy Summary | onnxrt-fp32 vs. torch" in printed and "Cosine Similarity" in printed
    feeds = feed_dicts(read_manifest(classification), photo_paths(None), random=1)
    saved = load_json(str(tmp_path / "in.json"))
    assert len(saved) == len(feeds) and np.array_equal(saved[0]["pixel_values"], feeds[0]["pixel_values"])
    results = RunResults.load(str(tmp_path / "out.json"))
    assert list(results.keys()) == ["onnxrt-fp32", "onnxrt-fp16", "torch"]


def test_zeroed_bias_fails_the_culprit_only(classification, tmp_path, capfd):
    bad = planted_copy(classification, tmp_path / "bad", zero_bias=True)
    outcome = compare(bad, CompareOptions(runners=("onnxrt-fp32", "onnxrt-fp16", "torch"), random=1))
    assert not outcome.passed and outcome.failed() == ["onnxrt-fp32 vs torch"]
    assert "FAILED" in capfd.readouterr().out


def test_wrong_normalisation_fails(classification, tmp_path):
    bad = planted_copy(classification, tmp_path / "bad", mean=(0.485, 0.456, 0.406))
    outcome = compare(bad, CompareOptions(runners=("onnxrt-fp32", "torch"), random=1))
    assert outcome.failed() == ["onnxrt-fp32 vs torch"]


def test_masked_image_modeling_feeds_masks(tiny_export):
    folder = tiny_export("masked-image-modeling")
    outcome = compare(folder, CompareOptions(runners=("onnxrt-fp32", "torch"), images=[], random=2))
    assert outcome.passed and outcome.skipped == {}
    assert feed_dicts(read_manifest(folder), [], random=2)[0]["bool_masked_pos"].shape == (2, 16)


def test_unknown_runner():
    with pytest.raises(UsageError, match="onnx-fp32"):
        CompareOptions(runners=("onnx-fp32",))


def test_polygraphy_cli_runs_the_data_loader(tiny_export, tmp_path):
    import shutil

    folder = Path(shutil.copytree(tiny_export("masked-image-modeling"), tmp_path / "mim"))
    script = write_data_loader(folder, read_manifest(folder))
    polygraphy = Path(sys.executable).parent / "polygraphy"
    done = subprocess.run([str(polygraphy), "run", str(folder / "model.onnx"), "--onnxrt", "--data-loader-script",
                           str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASSED" in done.stdout + done.stderr and "bool_masked_pos" in done.stdout + done.stderr


def test_cli_compare_exit_status(classification, tmp_path):
    from click.testing import CliRunner

    from beit_deploy.cli import main

    bad = planted_copy(classification, tmp_path / "bad", zero_bias=True)
    result = CliRunner().invoke(main, ["compare", str(bad), "--runners", "onnxrt-fp32,torch,trt", "--random", "1"])
    assert result.exit_code == 1
    assert "skipped trt" in result.output and "onnxrt-fp32 vs torch" in result.output


@pytest.mark.parametrize("args, needle", [(["--atol", "-1"], "--atol must be a finite number"),
                                          (["--rtol", "nan"], "--rtol must be a finite number"),
                                          (["--cosine", "2"], "--cosine must be between 0 and 1")])
def test_nonsense_tolerances_are_refused(tiny_export, args, needle):
    from click.testing import CliRunner

    from beit_deploy.cli import main

    folder = tiny_export("classification")
    result = CliRunner().invoke(main, ["compare", str(folder), "--runners", "onnxrt-fp32", *args])
    assert result.exit_code == 2 and needle in result.stderr, result.output


def test_a_hub_source_is_read_from_the_cache_only(tiny_export, tmp_path, monkeypatch):
    import json
    import shutil

    import transformers

    from beit_deploy.core.errors import ModelLoadError
    from beit_deploy.proof.compare import CompareOptions, compare

    asked = []

    def offline_config(name, **kwargs):
        asked.append(kwargs)
        raise OSError(f"{name} is not cached")

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export("features"), copy)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline_config)
    data = json.loads((copy / "manifest.json").read_text())
    data["source"], data["weights"] = {"kind": "hub", "model": "somebody/beit-x"}, {"kind": "pretrained", "seed": None}
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="--allow-download"):
        compare(copy, CompareOptions(runners=("onnxrt-fp32", "torch"), images=[], random=1))
    assert asked == [{"local_files_only": True}]


def test_cli_compare_json(classification, tmp_path):
    """--json: the verdict as JSON on stdout (pairs and skipped runners), the same exit status."""
    import json

    from click.testing import CliRunner

    from beit_deploy.cli import main

    bad = planted_copy(classification, tmp_path / "bad", zero_bias=True)
    result = CliRunner().invoke(main, ["compare", str(bad), "--runners", "onnxrt-fp32,torch,trt", "--random", "1",
                                       "--json"])
    assert result.exit_code == 1
    verdict = json.loads(result.stdout)
    assert verdict["passed"] is False and "trt" in verdict["skipped"]
    assert {"runner": "onnxrt-fp32", "reference": "torch", "passed": False} in verdict["pairs"]
