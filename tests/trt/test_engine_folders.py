"""Engine folders on a machine without TensorRT: how an export finds the engine `build` wrote for it, and what
predict, verify and compare say they would do with it (one clear line each: TensorRT is needed)."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core import engine_manifest as em
from beit_deploy.core.errors import ArtifactError, MissingDependencyError, UsageError
from beit_deploy.core.files import artifact_sha256
from beit_deploy.core.manifest import read_manifest
from beit_deploy.runtime.runner import BeitTRTRunner
from test_build import H100, engine_manifest

NO_TRT = importlib.util.find_spec("tensorrt") is None
needs_no_trt = pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot "
                                                     "be shown")
PHOTO = str(Path(__file__).resolve().parents[2] / "samples" / "images" / "rocket.jpg")


def write_engine(export: Path, out: Path, precision: str = "fp32", sha: str | None = None) -> Path:
    """What `build` writes (engine bytes stand in for a real engine): <out>/<model>/<H>x<W>/."""
    manifest = read_manifest(export)
    folder = em.engine_folder(out, manifest)
    folder.mkdir(parents=True)
    onnx = manifest.artifacts[precision]
    (folder / em.ENGINE_FILE).write_bytes(b"engine")
    em.write_engine_manifest(folder, engine_manifest(
        precision=precision, engine_bytes=6, tf32=False,
        source={"folder": str(export), "onnx": onnx, "sha256": sha or artifact_sha256(export / onnx)}))
    shutil.copy(export / "manifest.json", folder / "manifest.json")
    return folder


@pytest.fixture
def export(tiny_export):
    return tiny_export("classification", fp16=True)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # build's default engines/ folder is relative to the working directory
    return tmp_path


def test_find_engine_by_the_sha256_of_the_exports_onnx(export, in_tmp):
    assert em.find_engine(export, read_manifest(export)) == (None, [])
    folder = write_engine(export, Path("engines"), "fp16")
    found, passed_over = em.find_engine(export, read_manifest(export))
    assert found.path == folder / "model.engine" and found.onnx == "model.fp16.onnx" and passed_over == []
    assert found.describe() == (f"{folder / 'model.engine'} (fp16, TensorRT 10.13.0.35, {H100.name}, built from "
                                "model.fp16.onnx)")
    assert em.find_engine(export, read_manifest(export), engine=folder)[0] == found


def test_an_engine_of_another_onnx_is_passed_over(export, in_tmp):
    folder = write_engine(export, Path("engines"), sha="00" * 32)
    found, passed_over = em.find_engine(export, read_manifest(export))
    assert found is None and passed_over == [f"{folder / 'model.engine'}: built from another model.onnx (sha256 "
                                             "differs): build it again from this export"]
    with pytest.raises(UsageError, match="is not an engine of .*sha256 differs"):
        em.find_engine(export, read_manifest(export), engine=folder / "model.engine")
    with pytest.raises(UsageError, match="not an engine written by `beit-deploy build`"):
        em.find_engine(export, read_manifest(export), engine=export)


def test_engine_folder_refuses_a_model_name_that_is_a_path(export):
    with pytest.raises(ValueError, match="not a plain file name"):  # a manifest cannot even hold such a name
        dataclasses.replace(read_manifest(export), model="../../etc")
    manifest = read_manifest(export)
    object.__setattr__(manifest, "model", "../../etc")  # forced past the manifest's own check
    with pytest.raises(ArtifactError, match="not a plain folder name"):
        em.engine_folder(Path("engines"), manifest)


@needs_no_trt
def test_runner_opens_an_engine_folder_and_says_tensorrt_is_needed(export, tmp_path):
    folder = write_engine(export, tmp_path, "fp16")
    with pytest.raises(MissingDependencyError) as err:
        BeitTRTRunner(folder)
    assert str(folder / "model.engine") in str(err.value) and "pip install 'beit-deploy[gpu]'" in str(err.value)
    assert "export" not in str(err.value)  # not "missing ONNX, export again"
    with pytest.raises(UsageError, match="is a fp16 engine, not fp32"):
        BeitTRTRunner(folder, precision="fp32")


@needs_no_trt
@pytest.mark.parametrize("which", ["resolution folder", "model folder"])
def test_predict_on_an_engine_folder_says_tensorrt_is_needed_in_one_line(export, tmp_path, which):
    folder = write_engine(export, tmp_path / "engines")
    result = CliRunner().invoke(main, ["predict", str(folder if which == "resolution folder" else folder.parent),
                                       PHOTO])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: running the TensorRT engine ")
    assert "needs the Python package 'tensorrt'" in lines[0] and "Traceback" not in result.output


@needs_no_trt
def test_verify_says_what_it_would_run(export, in_tmp):
    from beit_deploy.proof.verify import parity_report

    folder = write_engine(export, Path("engines"), "fp16")
    report = parity_report(export, random=1)
    assert report.passed and [a.name for a in report.artifacts] == ["fp32", "fp16", "engine"]
    engine = report.artifacts[2]
    assert engine.precision == "fp16" and not engine.outputs
    assert engine.skipped == (f"would run {folder / 'model.engine'} (fp16, TensorRT 10.13.0.35, {H100.name}, built "
                              "from model.fp16.onnx) against eager, but TensorRT is not installed")
    assert f"engine    skipped: would run {folder / 'model.engine'}" in report.table()


def test_verify_cli_engine_option(export, in_tmp):
    other = write_engine(export, in_tmp / "elsewhere", sha="00" * 32)
    result = CliRunner().invoke(main, ["verify", str(export), "--random", "1", "--engine", str(other)])
    assert result.exit_code == 2 and "is not an engine of" in result.stderr
    write_engine(export, Path("engines"), sha="11" * 32)  # a stale default: said, not run, not a failure
    result = CliRunner().invoke(main, ["verify", str(export), "--random", "1"])
    assert result.exit_code == 0, result.output
    assert "engine    skipped: no engine of this export: " in result.stdout and "sha256 differs" in result.stdout


@needs_no_trt
def test_compare_says_what_it_would_run(export, in_tmp):
    args = ["compare", str(export), "--runners", "onnxrt-fp32,trt", "--random", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert ("skipped trt: would build an engine from model.fp16.onnx with Polygraphy (TF32 off) and compare it, "
            "but TensorRT is not installed") in result.stdout
    folder = write_engine(export, in_tmp / "mine")
    result = CliRunner().invoke(main, args + ["--engine", str(folder)])
    assert result.exit_code == 0, result.output
    assert (f"skipped trt: would compare {folder / 'model.engine'} (fp32, TensorRT 10.13.0.35, {H100.name}, built "
            "from model.onnx), but TensorRT is not installed") in result.stdout
