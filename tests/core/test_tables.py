"""The precision and backend tables: what each row says, what the stages read from them, and that a new
precision is a row (a fake one is offered by the CLI and opened by the runner)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core import backends, precisions
from beit_deploy.core.errors import UsageError

PHOTO = Path(__file__).resolve().parents[2] / "samples" / "images" / "rocket.jpg"


def test_precision_rows():
    assert precisions.names() == ("fp32", "fp16", "int8", "fp8", "int8cpu")
    assert precisions.names(tensorrt=True) == ("fp32", "fp16", "int8", "fp8")
    assert precisions.names(making=precisions.FLOAT) == ("fp32", "fp16")
    assert precisions.PRECISIONS[precisions.REFERENCE].file == "model.onnx"
    assert {p.flag for p in precisions.PRECISIONS.values()} == {None, "--fp16", "--int8", "--fp8", "--int8-cpu"}
    with pytest.raises(UsageError, match="precision 'bf17' is not one of fp32, fp16"):
        precisions.precision("bf17")


@pytest.mark.parametrize("asked, available, gpu, chosen", [
    (None, ("fp32", "fp16"), False, "fp32"), (None, ("fp32", "fp16"), True, "fp16"), (None, ("fp32",), True, "fp32"),
    (None, ("fp32", "int8"), True, "fp32"),  # quantized graphs are never chosen for you
    ("int8", ("fp32", "int8", "int8cpu"), False, "int8cpu"), ("int8", ("fp32", "int8", "int8cpu"), True, "int8"),
    ("int8", ("fp32", "int8"), False, "int8"), ("int8", ("fp32", "int8cpu"), True, "int8cpu"),
    ("int8cpu", ("fp32", "int8", "int8cpu"), True, "int8cpu"), ("fp8", ("fp32",), False, "fp8")])
def test_choose_picks_the_form_for_this_machine(asked, available, gpu, chosen):
    assert precisions.choose(asked, available, gpu) == chosen


def test_export_hints():
    assert precisions.export_hint("int8") == "--int8 or --int8-cpu"
    assert precisions.export_hint("int8cpu") == "--int8-cpu" and precisions.export_hint("fp16") == "--fp16"


def test_backend_rows():
    assert backends.names(served=True) == ("onnxruntime", "tensorrt", "python")
    assert list(backends.compare_runners()) == ["onnxrt-fp32", "onnxrt-fp16", "onnxrt-int8", "onnxrt-fp8",
                                                "onnxrt-int8cpu", "torch", "trt"]
    assert backends.provider_device("CUDAExecutionProvider") == "cuda"
    assert backends.provider_device("SomethingElse") == "cpu"
    with pytest.raises(UsageError, match="backend 'openvino' is not one of"):
        backends.backend("openvino")


def test_the_stages_read_the_tables():
    from beit_deploy.bench.report import BACKENDS, ORT_ARTIFACTS
    from beit_deploy.exporter import parity, quantize
    from beit_deploy.proof import compare
    from beit_deploy.trt.build import BUILDABLE

    assert parity.THRESHOLDS == {p.name: p.thresholds for p in precisions.PRECISIONS.values()} | {
        name: row["thresholds"] for name, row in precisions.LOOSENED.items()}  # tf32: an fp32 engine built --tf32
    assert compare.TOLERANCES["fp16"]["cosine"] == parity.THRESHOLDS["fp16"]["cosine"]
    assert set(BUILDABLE) == set(precisions.names(tensorrt=True))
    assert quantize.FILES == {"int8": "model.int8.onnx", "fp8": "model.fp8.onnx", "int8cpu": "model.int8cpu.onnx"}
    assert set(ORT_ARTIFACTS.values()) == set(precisions.PRECISIONS) and set(ORT_ARTIFACTS) <= set(BACKENDS)


def test_export_options_validate_and_place_each_precision():
    from beit_deploy.exporter.pipeline import ExportOptions, export_options

    options = export_options(["fp32", "fp16", "int8cpu"], out_dir=Path("x"))
    assert options.fp16 and options.quantize.int8_cpu and not options.quantize.int8
    assert options.precisions == ("fp32", "fp16", "int8cpu")
    with pytest.raises(UsageError, match="bias mode 'gatherd' is not one of materialised, gathered"):
        ExportOptions(bias_mode="gatherd")
    with pytest.raises(UsageError, match="attention 'flash' is not one of decomposed, fused"):
        ExportOptions(attention="flash")


@pytest.fixture
def fake_row(monkeypatch):
    """A 'bf16' precision row (ONNX Runtime runs its file like any graph), in the table for one test."""
    row = replace(precisions.PRECISIONS["fp16"], name="bf16", file="model.bf16.onnx", option="bf16",
                  gpu_default=False, about="the bf16 graph")
    monkeypatch.setitem(precisions.PRECISIONS, "bf16", row)
    return row


def _with_bf16(folder: Path, tmp_path: Path) -> Path:
    """A copy of an export whose manifest also lists a 'bf16' graph (the fp32 graph under the row's file name)."""
    copy = shutil.copytree(folder, tmp_path / folder.name)
    shutil.copyfile(copy / "model.onnx", copy / "model.bf16.onnx")
    raw = json.loads((copy / "manifest.json").read_text())
    raw["artifacts"]["bf16"] = "model.bf16.onnx"
    raw["sha256"]["model.bf16.onnx"] = raw["sha256"]["model.onnx"]
    (copy / "manifest.json").write_text(json.dumps(raw))
    return copy


def test_a_new_precision_is_a_row(fake_row, tiny_export, tmp_path):
    from beit_deploy import BeitRunner

    for command in (["predict", "--help"], ["build", "--help"]):
        assert "bf16" in CliRunner().invoke(main, command).output
    folder = _with_bf16(tiny_export("classification"), tmp_path)
    with BeitRunner(folder, precision="bf16") as runner, BeitRunner(folder, precision="fp32") as fp32:
        assert runner.precision == "bf16" and runner.predict(PHOTO) == fp32.predict(PHOTO)
    done = CliRunner().invoke(main, ["predict", str(folder), str(PHOTO), "--precision", "bf16", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output.splitlines()[0])["task"] == "classification"
    with pytest.raises(UsageError, match="has no bf16 graph .* export with --bf16"):
        BeitRunner(tiny_export("classification"), precision="bf16")
