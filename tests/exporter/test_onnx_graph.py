import numpy as np
import onnx
import onnxruntime as ort
import pytest

from beit_deploy.exporter import bake, graph_files, onnx_graph
from conftest import TASKS, tiny_model

NATIVE, NON_SQUARE = (64, 64), (80, 48)


def _graph(folder):
    return onnx.load(str(folder / "model.onnx"))


@pytest.mark.parametrize("task", TASKS)
def test_no_runtime_bias_or_shape_ops(task, tiny_export):
    for resolution in (NATIVE, NON_SQUARE):
        graph = _graph(tiny_export(task, resolution))
        assert onnx_graph.forbidden_nodes(graph) == []
        ops = {n.op_type for n in graph.graph.node}
        assert "Constant" not in ops and "Identity" not in ops
        if task != "segmentation":  # UperNet still sizes its resizes from shapes
            assert "Shape" not in ops


@pytest.mark.parametrize("task", TASKS)
def test_dynamic_batch_only(task, tiny_export):
    graph = _graph(tiny_export(task, NON_SQUARE))
    for value in list(graph.graph.input) + list(graph.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"
        assert all(d.dim_value > 0 for d in dims[1:]), value.name
    assert graph.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 80
    assert graph.graph.input[0].type.tensor_type.shape.dim[3].dim_value == 48


def test_opset_and_layernorm_nodes(tiny_export):
    graph = _graph(tiny_export("classification"))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    counts = graph_files.op_counts(graph)
    assert counts["LayerNormalization"] == 2 * 4 + 1  # two per layer + pooler
    assert counts["Softmax"] == 4


def test_attention_has_the_fused_attention_form(tiny_export):
    """Per layer: (q * scale) @ k^T -> Add(bias) -> Softmax -> @ v, the pattern TensorRT fuses."""
    graph = _graph(tiny_export("classification"))
    producers = {out: n for n in graph.graph.node for out in n.output}
    inits = {i.name: i for i in graph.graph.initializer}
    softmaxes = [n for n in graph.graph.node if n.op_type == "Softmax"]
    for softmax in softmaxes:
        add = producers[softmax.input[0]]
        assert add.op_type == "Add"
        scores = next(producers[i] for i in add.input if i in producers)
        assert scores.op_type == "MatMul"
        q_side = producers[scores.input[0]]
        while q_side.op_type in ("Transpose", "Reshape"):
            q_side = producers[q_side.input[0]]
        assert q_side.op_type == "Mul"  # q scaled before the first MatMul
        bias = next(i for i in add.input if i in inits)
        assert tuple(inits[bias].dims) == (1, 2, 17, 17)


def test_gathered_bias_stays_gathered(tmp_path):
    model = tiny_model("classification")
    baked = bake.bake(model, (96, 64), bake.GATHERED)
    path = onnx_graph.onnx_from_model(baked, "classification", (96, 64), tmp_path / "m.onnx")
    graph = onnx.load(str(path))
    gathers = _table_gathers(graph)
    assert len(gathers) == 4  # one per layer
    assert len({i.name for i in graph.graph.initializer if i.name.endswith("bias_index")}) == 1  # one shared index
    biggest = max(int(np.prod(i.dims)) for i in graph.graph.initializer if "bias" in i.name or "table" in i.name)
    assert biggest < 2 * 25 * 25  # no materialised (heads, T, T) bias
    _assert_matches_eager(model, path, (96, 64))


def test_onnx_runtime_keeps_the_gathered_bias_gathered(tmp_path):
    """ONNX Runtime folds constant subgraphs at session creation: a gather of a constant table by a constant index
    would become a full (heads, T, T) initializer per layer. The index depends on each layer's input, so the
    optimized graph ONNX Runtime itself writes out still gathers, and holds no bias bigger than a table."""
    baked = bake.bake(tiny_model("classification"), (96, 64), bake.GATHERED)
    path = onnx_graph.onnx_from_model(baked, "classification", (96, 64), tmp_path / "m.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options)
    optimized = onnx.load(options.optimized_model_filepath)
    assert len(_table_gathers(optimized)) == 4
    tokens = 25
    assert not [i.name for i in optimized.graph.initializer if not i.name.endswith("bias_index")
                and (tokens * tokens in i.dims or list(i.dims[-2:]) == [tokens, tokens])]


def _table_gathers(graph):
    tables = {i.name for i in graph.graph.initializer if i.name.endswith("bias_table")}
    return [n for n in graph.graph.node if n.op_type == "Gather" and n.input[0] in tables]


def test_external_data_past_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(graph_files, "EXTERNAL_DATA_BYTES", 0)
    model = tiny_model("classification")
    path = onnx_graph.onnx_from_model(bake.bake(model, (64, 64)), "classification", (64, 64), tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").stat().st_size > path.stat().st_size
    _assert_matches_eager(model, path, (64, 64))


def test_graph_runs_at_batch_one_and_many(tiny_export):
    session = ort.InferenceSession(str(tiny_export("classification") / "model.onnx"))
    for batch in (1, 5):
        (logits,) = session.run(None, {"pixel_values": np.zeros((batch, 3, 64, 64), np.float32)})
        assert logits.shape == (batch, 5)


def _assert_matches_eager(model, path, resolution):
    import torch

    x = np.random.default_rng(0).standard_normal((2, 3, *resolution)).astype(np.float32)
    (got,) = ort.InferenceSession(str(path)).run(None, {"pixel_values": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).logits.numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
