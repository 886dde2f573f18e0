"""`beit-deploy inspect` on ONNX graphs (CPU), and the engines line of `export`."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.trt.inspect import inspect_path, layer_summary


def inspect_json(path) -> dict:
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_inspect_fp32_graph(tiny_export):
    report = inspect_json(tiny_export("classification", fp16=True) / "model.onnx")
    assert report["inputs"] == [{"name": "pixel_values", "shape": ["batch", 3, 64, 64], "dtype": "float32"}]
    assert report["outputs"] == [{"name": "logits", "shape": ["batch", 5], "dtype": "float32"}]
    assert report["opset"] == 17
    assert report["nodes"] == sum(report["ops"].values()) > 0
    assert report["precision"]["float16"] == 0 and report["precision"]["float32"] > 0
    assert report["precision"]["by_op"]["MatMul"] == {"float32": report["ops"]["MatMul"]}


def test_inspect_fp16_graph_shows_its_precision_islands(tiny_export):
    report = inspect_json(tiny_export("classification", fp16=True) / "model.fp16.onnx")
    # fp32 in and out: the casts are inside the graph
    assert report["inputs"][0]["dtype"] == "float32" and report["outputs"][0]["dtype"] == "float32"
    by_op = report["precision"]["by_op"]
    # The 4 layers' projections (q, k, v, out, fc1, fc2 = 6) and attention matmuls (2) are fp16; the classifier
    # head (after the last layer) stays fp32.
    assert by_op["MatMul"]["float16"] >= 4 * 8
    assert set(by_op["MatMul"]) <= {"float16", "float32"}
    assert set(by_op["LayerNormalization"]) == {"float32"}
    assert set(by_op["Softmax"]) == {"float32"} and by_op["Softmax"]["float32"] == 4
    assert report["precision"]["float16"] > 0 and report["precision"]["float32"] > 0


def test_inspect_mim_graph_lists_both_inputs(tiny_export):
    report = inspect_path(tiny_export("masked-image-modeling") / "model.onnx")
    assert [(t["name"], t["shape"], t["dtype"]) for t in report["inputs"]] == [
        ("pixel_values", ["batch", 3, 64, 64], "float32"), ("bool_masked_pos", ["batch", 16], "bool")]


def test_inspect_text_report(tiny_export):
    result = CliRunner().invoke(main, ["inspect", str(tiny_export("classification", fp16=True) / "model.fp16.onnx")])
    assert result.exit_code == 0, result.output
    assert "input  pixel_values: float32 ['batch', 3, 64, 64]" in result.stdout
    assert "compute precision:" in result.stdout and "MatMul: float16" in result.stdout


def test_inspect_refuses_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "notes.txt")])
    assert result.exit_code == 2 and "neither .onnx nor .engine" in result.output
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "broken.onnx")])
    assert result.exit_code == 1 and "not a readable ONNX graph" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_inspect_engine_without_tensorrt_names_the_extra(tmp_path):
    (tmp_path / "model.engine").write_bytes(b"\0")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "model.engine")])
    assert result.exit_code == 1 and "pip install 'beit-deploy[gpu]'" in result.output


def test_layer_summary_finds_fused_attention():
    layers = [{"Name": "/layers.0/attention/MatMul", "LayerType": "MatrixMultiply", "TacticName": "sm90_xmma"},
              {"Name": "{ForeignNode[/layers.0/...]}", "LayerType": "Myelin", "TacticName": "_gemm_mha_v2_fp16"},
              "/layers.1/output/dense"]
    summary = layer_summary(layers)
    assert summary["layers"] == 3
    assert summary["layer_types"] == {"MatrixMultiply": 1, "Myelin": 1, "?": 1}
    assert summary["fused_attention_layers"] == ["{ForeignNode[/layers.0/...]}"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_export_says_engines_were_skipped_and_how_to_build(tiny_dir, tmp_path):
    result = CliRunner().invoke(main, ["export", "-m", str(tiny_dir("classification")), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    line = [x for x in result.stdout.splitlines() if x.startswith("TensorRT engines")]
    assert line == [f"TensorRT engines: skipped (TensorRT is not installed); build them later on a GPU machine "
                    f"with `beit-deploy build {tmp_path / 'tiny-classification' / '64x64'}`"]
