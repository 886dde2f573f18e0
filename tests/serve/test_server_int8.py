"""The int8 CPU form served: `--precision int8cpu` puts ONNX Runtime's dynamic int8 graph (and only it) in the
model stage, and the real server (CPU, python stage) answers like BeitRunner on that graph."""

from __future__ import annotations

import pytest

from beit_deploy import BeitTritonClient, BeitRunner
from beit_deploy.core.errors import UsageError
from beit_deploy.serve.configs import MODEL, stage_names
from beit_deploy.serve.load import LoadReport, run_load, to_markdown
from beit_deploy.serve.repository import TritonOptions, write_repository

from serving import PHOTOS, needs_server, serving
from test_server import assert_same


@pytest.fixture(scope="module")
def int8cpu_export(tiny_dir, tmp_path_factory):
    from beit_deploy.exporter.loading import ModelSpec
    from beit_deploy.exporter.pipeline import ExportOptions, export
    from beit_deploy.exporter.quantize import QuantizeOptions

    options = ExportOptions(out_dir=tmp_path_factory.mktemp("export"), quantize=QuantizeOptions(int8_cpu=True))
    return export(ModelSpec(str(tiny_dir("classification"))), options)[0].folder


@needs_server
def test_int8cpu_is_served_like_the_runner(int8cpu_export, tmp_path):
    repo = tmp_path / "repo"
    with serving({"classification": int8cpu_export}, repo, precision="int8cpu", name="cls") as served:
        # one image per batch on both sides: dynamic int8 scales each call's activations over the whole batch, so
        # an image's scores move (by ~1e-3 here) with the images batched beside it
        with BeitTritonClient(served.server.http_url, "cls", concurrency=1) as client:
            remote = client.predict(PHOTOS, top_k=3)
        report = run_load(served.server.http_url, "cls", [p.read_bytes() for p in PHOTOS], clients=2, requests=2)
    fp32 = LoadReport(2, 2, 4, 0, 1.0, 4.0, 1.0, 1.0, 1.0, 2.0, 2)
    table = to_markdown(fp32, 5.0, "tiny", 1.0, "fp32", (("int8cpu", report, 6.0),))
    assert report.answered == 4 and report.failed == 0
    assert "| Triton ensemble | fp32 | 2 x 2 |" in table and "| Triton ensemble | int8cpu | 2 x 2 |" in table
    assert "| in-process BeitRunner.predict (batch 8) | int8cpu | 1 x 4 | 6.00 |" in table
    stage = repo / stage_names("cls")[MODEL] / "1"
    assert sorted(p.name for p in stage.glob("*.*")) == ["manifest.json", "model.int8cpu.onnx", "model.py"]
    assert 'string_value: "int8cpu"' in (stage.parent / "config.pbtxt").read_text()
    with BeitRunner(int8cpu_export, precision="int8cpu", batch_size=1) as runner:
        local = runner.predict(PHOTOS, top_k=3)
    assert runner.precision == "int8cpu"
    for a, b in zip(local, remote, strict=True):
        assert_same("classification", a, b)


def test_a_precision_the_export_lacks_is_refused(tiny_export, tmp_path):
    with pytest.raises(UsageError, match="has no int8cpu graph .* export with --int8-cpu"):
        write_repository([tiny_export("classification")], TritonOptions(out=tmp_path / "r", precision="int8cpu"))
    with pytest.raises(UsageError, match="CPU form"):
        TritonOptions(precision="int8cpu", ort_tensorrt=True)
    assert TritonOptions().precision == "fp32"  # a quantized form is never chosen for you


def test_the_onnxruntime_accelerator_runs_the_qdq_graph_in_int8(tiny_export):
    from beit_deploy.core.manifest import read_manifest
    from beit_deploy.serve.configs import Batching, model_config

    manifest, batching = read_manifest(tiny_export("classification")), Batching(8, 1, "KIND_GPU", 0)
    for precision, mode in (("int8", "INT8"), ("fp16", "FP16"), ("fp32", "FP32")):
        config = model_config("m", manifest, batching, "onnxruntime", "g.onnx", precision, True)
        accelerator, = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
        assert accelerator["parameters"] == [{"key": "precision_mode", "value": mode}]
