import onnx
import pytest

from beit_deploy.exporter import fp16
from beit_deploy.exporter.graph_files import node_precisions
from conftest import TASKS


def _precisions(folder):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(folder / "model.fp16.onnx")))
    return model, node_precisions(model)


@pytest.mark.parametrize("task", TASKS)
def test_precision_placement(task, tiny_export):
    model, precision = _precisions(tiny_export(task, (80, 48), fp16=True))
    producers = {out: n for n in model.graph.node for out in n.output}
    by_op = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, set()).add(precision[node.name])
    assert by_op["LayerNormalization"] == {"float32"}
    assert by_op["Softmax"] == {"float32"}
    assert "float16" in by_op["MatMul"] and "float16" in by_op["Erf"]  # GELU in fp16
    for node in model.graph.node:
        if node.op_type == "Softmax":
            assert precision[producers[node.input[0]].name] == "float32"  # the bias add
    heads = set(fp16.fp32_nodes(onnx.load(str(tiny_export(task, (80, 48)) / "model.onnx")), task))
    for node in model.graph.node:
        if node.name in heads and node.op_type not in ("Cast", "Reshape", "Transpose", "Slice"):
            assert precision[node.name] == "float32", node.name


def test_matmuls_in_fp16_except_the_head(tiny_export):
    model, precision = _precisions(tiny_export("classification", fp16=True))
    layer_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and "/layers." in n.name]
    assert layer_matmuls and all(precision[n.name] == "float16" for n in layer_matmuls)
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert gemm and all(precision[n.name] == "float32" for n in gemm)  # classifier


@pytest.mark.parametrize("task", TASKS)
def test_inputs_and_outputs_stay_fp32(task, tiny_export):
    model = onnx.load(str(tiny_export(task, fp16=True) / "model.fp16.onnx"))
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL), value.name


@pytest.mark.parametrize("task", TASKS)
def test_fp16_graph_is_strongly_typed(task, tiny_export):
    """Every tensor has one known type (strict inference and the full checker pass), and no compute node mixes
    fp16 and fp32 inputs: every precision change is an explicit Cast, as a strongly typed TensorRT network needs."""
    model = onnx.load(str(tiny_export(task, fp16=True) / "model.fp16.onnx"))
    onnx.checker.check_model(model, full_check=True)  # raises on a type conflict
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    typed = {v.name for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    typed |= {i.name for i in inferred.graph.initializer}
    untyped = [o for n in inferred.graph.node for o in n.output if o and o not in typed]
    assert untyped == []
    precisions = node_precisions(inferred)
    assert "mixed" not in precisions.values(), [k for k, v in precisions.items() if v == "mixed"]
    assert {"float16", "float32"} <= set(precisions.values())


def test_gathered_bias_table_stays_fp32(tiny_dir, tmp_path):
    """The bias Add runs in fp32, so its gathered table is stored in fp32: no fp16 rounding of the bias, and no
    Cast of a full (heads, T, T) tensor per layer; the export's own parity check passes."""
    from beit_deploy.exporter.pipeline import ExportOptions, export
    from beit_deploy.exporter.loading import ModelSpec

    options = ExportOptions(resolutions=((96, 64),), fp16=True, out_dir=tmp_path, bias_mode="gathered")
    result = export(ModelSpec(str(tiny_dir("classification"))), options)[0]
    model = onnx.load(str(result.folder / "model.fp16.onnx"))
    tables = [i for i in model.graph.initializer if i.name.endswith("bias_table")]
    assert len(tables) == 4 and all(t.data_type == onnx.TensorProto.FLOAT for t in tables)
    producers = {out: n for n in model.graph.node for out in n.output}
    for node in model.graph.node:
        if node.op_type == "Softmax":
            add = producers[node.input[0]]
            assert [producers[i].op_type for i in add.input] == ["Cast", "Transpose"]  # fp16 scores cast up; bias
    assert result.manifest.parity["fp16"]["passed"]
    assert _dead_nodes(model) == []  # 4 unread Casts per layer before they were dropped


def _dead_nodes(model) -> list[str]:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if not any(o in used for o in n.output)]


@pytest.mark.parametrize("task", TASKS)
def test_fp16_graph_has_no_dead_nodes(task, tiny_export):
    """Every node's output is read: ONNX Runtime runs unread nodes anyway and their outputs pile up over the
    call (the converter's unread fp16 Casts took a batch-2 call of beit-large@512 to 9.04 GiB, 2.09 without)."""
    assert _dead_nodes(onnx.load(str(tiny_export(task, fp16=True) / "model.fp16.onnx"))) == []

