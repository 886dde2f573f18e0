"""`export --attention fused`: one ONNX Attention op (opset 23) per layer, with the parity every export has.

Every head at the native and a non-square size, fp32 and fp16, both bias storage modes; the graph's form (op
counts, opset, attributes, fp16 q/k/v); torch-level equivalence of the fused and decomposed baked models.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core import tasks
from beit_deploy.core.manifest import read_manifest
from beit_deploy.exporter import bake, onnx_graph
from beit_deploy.exporter.loading import ModelSpec
from beit_deploy.exporter.pipeline import ExportOptions, export
from conftest import TASKS, tiny_model

NATIVE, NON_SQUARE = (64, 64), (80, 48)
LAYERS = 4


@pytest.fixture(scope="module")
def fused_export(tiny_dir, tmp_path_factory):
    """fused_export(task, resolution, bias_mode=None) -> resolution folder of a fused fp32 + fp16 export."""
    @functools.cache
    def make(task, resolution=NATIVE, bias_mode=None):
        options = ExportOptions(resolutions=(resolution,), fp16=True, out_dir=tmp_path_factory.mktemp("fused"),
                                bias_mode=bias_mode, attention=bake.FUSED)
        return export(ModelSpec(str(tiny_dir(task))), options)[0].folder
    return make


def _attention_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type == "Attention"]


@pytest.mark.parametrize("resolution", [NATIVE, NON_SQUARE], ids=["native", "non-square"])
@pytest.mark.parametrize("task", TASKS)
def test_fused_export_passes_parity_on_every_head(fused_export, task, resolution):
    folder = fused_export(task, resolution)  # export() raises ParityError when a graph misses its thresholds
    # UperNet reads hidden_states[i - 1] for i in out_indices (1..4): the last layer's attention is unused
    layers = LAYERS - 1 if tasks.task(task).decoder else LAYERS
    manifest = read_manifest(folder)
    assert manifest.attention == "fused" and set(manifest.parity) == {"fp32", "fp16"}
    for precision, figures in manifest.parity.items():
        assert figures["passed"], figures
        for out in figures["outputs"]:
            if precision == "fp32":
                assert out["rel"] <= 1e-4
            else:
                assert out["cosine"] >= 0.999
    for file in ("model.onnx", "model.fp16.onnx"):
        graph = onnx.load(str(folder / file))
        assert {(o.domain, o.version) for o in graph.opset_import} == {("", onnx_graph.FUSED_OPSET)}
        assert graph.ir_version >= 11  # what opset 23 needs
        assert len(_attention_nodes(graph)) == layers
        assert "Softmax" not in {n.op_type for n in graph.graph.node}
        assert onnx_graph.forbidden_nodes(graph) == []


@pytest.mark.parametrize("task, resolution", [("classification", NON_SQUARE), ("masked-image-modeling", NATIVE)])
def test_fused_export_with_the_gathered_bias(fused_export, task, resolution):
    folder = fused_export(task, resolution, bake.GATHERED)
    manifest = read_manifest(folder)
    assert manifest.bias_mode == bake.GATHERED and all(f["passed"] for f in manifest.parity.values())
    graph = onnx.load(str(folder / "model.onnx"))
    producers = {out: node for node in graph.graph.node for out in node.output}
    for node in _attention_nodes(graph):  # mask = Reshape(Transpose(Reshape(Gather(table, index))))
        chain, name = [], node.input[3]
        while name in producers and len(chain) < 5:
            chain.append(producers[name].op_type)
            name = producers[name].input[0]
        assert "Gather" in chain, chain


def test_attention_node_form(fused_export):
    """4D q, k, v (B, heads, T, d), a (1, heads, T, T) mask, the layer's scale, fp32 softmax; fp16 q/k/v in
    the fp16 graph."""
    folder = fused_export("classification")
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(folder / "model.onnx")))
    shapes = {v.name: [d.dim_value or "batch" for d in v.type.tensor_type.shape.dim]
              for v in graph.graph.value_info}
    inits = {i.name: list(i.dims) for i in graph.graph.initializer}
    for node in _attention_nodes(graph):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"scale": pytest.approx(16 ** -0.5), "softmax_precision": onnx.TensorProto.FLOAT}
        assert [shapes[name] for name in node.input[:3]] == [["batch", 2, 17, 16]] * 3
        assert inits.get(node.input[3], shapes.get(node.input[3])) == [1, 2, 17, 17]
    fp16 = onnx.shape_inference.infer_shapes(onnx.load(str(folder / "model.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in fp16.graph.value_info}
    for node in _attention_nodes(fp16):
        assert [types[name] for name in node.input[:3]] == [onnx.TensorProto.FLOAT16] * 3


@pytest.mark.parametrize("mode", [bake.MATERIALISED, bake.GATHERED])
def test_fused_and_decomposed_baked_models_agree_in_torch(mode):
    model = tiny_model("features")
    x = torch.randn(3, 3, *NON_SQUARE)
    with torch.no_grad():
        ref = model(x).last_hidden_state
        fused = bake.bake(model, NON_SQUARE, mode, bake.FUSED)(x).last_hidden_state
        decomposed = bake.bake(model, NON_SQUARE, mode)(x).last_hidden_state
    assert float((fused - ref).abs().max() / ref.abs().max()) < 1e-6
    np.testing.assert_allclose(fused.numpy(), decomposed.numpy(), rtol=0, atol=1e-6)


def test_unknown_attention_form_is_refused():
    with pytest.raises(Exception, match="attention form 'flash'"):
        bake.bake(tiny_model("classification"), NATIVE, attention="flash")


def test_cli_export_attention_option(tiny_dir, tmp_path):
    result = CliRunner().invoke(main, ["export", "-m", str(tiny_dir("classification")), "--attention", "fused",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "tiny-classification" / "64x64").attention == "fused"
    result = CliRunner().invoke(main, ["export", "-m", str(tiny_dir("classification")), "--attention", "flash"])
    assert result.exit_code == 2 and "flash" in result.output
