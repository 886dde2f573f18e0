"""ONNX files without torch: load, save (external data past the protobuf limit), and describe a graph.

Shared by the export stage (after tracing), the fp16 conversion, and `beit-deploy inspect`, which must work on
a machine with onnx but no torch.
"""

from __future__ import annotations

import collections
from pathlib import Path

from ..core.manifest import TensorSpec
from ..core.onnx_wire import weightless

EXTERNAL_DATA_BYTES = 1_800_000_000  # below ONNX's 2 GiB protobuf limit, with room for the graph itself


def weight_bytes(model) -> int:
    """Bytes of a ModelProto's initializers (as serialised)."""
    return sum(t.ByteSize() for t in model.graph.initializer)


def needs_external_data(nbytes: int) -> bool:
    """True when weights of `nbytes` must go to an external data file (ONNX protobufs stop at 2 GiB)."""
    return nbytes > EXTERNAL_DATA_BYTES


def save_ir(model, path: Path) -> Path:
    """Save an onnx_ir model to `path`, its weights in `<path>.data` past the protobuf limit. Consumes `model`
    (its initializers are moved out while it is written)."""
    import onnx_ir as ir

    values = list(model.graph.initializers.values())
    if needs_external_data(sum(v.const_value.nbytes for v in values)):
        ir.save(model, path, external_data=Path(path).name + ".data")  # onnx_ir streams external data itself
        return Path(path)
    model.graph.initializers.clear()
    shell = ir.serde.serialize_model(model)
    return _write_streamed(path, shell, (_named(ir.serde.serialize_tensor(v.const_value), v.name) for v in values))


def _named(tensor, name: str):
    tensor.name = name  # the graph knows the value by its own name, which folding may have changed
    return tensor


def save_proto(model, path: Path) -> Path:
    """onnx.save_model for a ModelProto, its weights in `<path>.data` past the protobuf limit."""
    import onnx

    if needs_external_data(weight_bytes(model)):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(path).name + ".data")
        return Path(path)
    shell = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(shell, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(shell.graph, field, value)
    return _write_streamed(path, shell, model.graph.initializer)


def _copy_field(target, field, value) -> None:
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
    if repeated:
        getattr(target, field.name).extend(value)
    elif field.message_type is not None:
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)


def _write_streamed(path: Path, shell, tensors) -> Path:
    """Write a model as its weightless shell followed by one small message per initializer.

    Serialised protobuf messages that follow each other parse as one merged message (repeated fields append), so
    the file reads as the whole model in onnx, ONNX Runtime and TensorRT, but writing it never holds a second and
    third copy of all the weights (a ModelProto and its serialised bytes) as onnx.save does.
    """
    import onnx

    with open(path, "wb") as f:
        f.write(shell.SerializeToString())
        for tensor in tensors:
            piece = onnx.ModelProto()
            piece.graph.initializer.append(tensor)
            f.write(piece.SerializeToString())
    return Path(path)


def load_graph(path: Path, with_weights: bool = False):
    """The ONNX ModelProto at `path`. Without `with_weights`, its initializers have their names, dims and types but
    no data (read past on disk, inline or external: core.onnx_wire), so reading a graph's structure costs kilobytes."""
    import onnx

    if with_weights:
        return onnx.load(str(path))
    return onnx.ModelProto.FromString(weightless(Path(path)))


def op_counts(model) -> dict[str, int]:
    """{op type: nodes}, most frequent first."""
    return dict(collections.Counter(node.op_type for node in model.graph.node).most_common())


def tensor_specs(values) -> list[TensorSpec]:
    """Graph inputs or outputs (ValueInfoProtos) as TensorSpecs: symbolic axes by name, numpy dtype names."""
    import onnx

    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, shape, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name))
    return specs


def node_precisions(model) -> dict[str, str]:
    """Compute dtype of every node ("float16", "float32", "mixed" or "other"), from the types of its float inputs.

    Needs type information for intermediate tensors: run on a shape-inferred model.
    """
    import onnx

    types = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
    result = {}
    for node in model.graph.node:
        kinds = {names[types[i]] for i in node.input if types.get(i) in names}
        result[node.name] = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "other")
    return result


QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv")
# Ops that read a dequantized tensor without computing on it: not counted as quantized layers.
SHAPE_OPS = frozenset({"Shape", "Concat", "Reshape", "Transpose", "Resize", "Slice", "Gather", "Flatten", "Squeeze",
                       "Unsqueeze", "Cast", "Identity", "Split", "Expand"})


def qdq_summary(model) -> dict:
    """What is quantized in a graph: Q/DQ node counts, the quantized type(s) (from the zero points / scales), and
    the compute nodes that read a DequantizeLinear output (or are integer ops), by op type.

    {"QuantizeLinear": n, "DequantizeLinear": n, "DynamicQuantizeLinear": n, "types": ["int8", ...],
     "quantized": {"MatMul": n, ...}, "quantized_nodes": [names]}. All counts 0 for a float graph."""
    import onnx

    counts = collections.Counter(n.op_type for n in model.graph.node)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    types = {onnx.helper.tensor_dtype_to_np_dtype(inits[n.input[2]]).name if len(n.input) > 2 and n.input[2] in inits
             else "int8" for n in model.graph.node if n.op_type == "QuantizeLinear"}
    if counts["DynamicQuantizeLinear"]:
        types.add("uint8")
    nodes = [n for n in model.graph.node if n.op_type in INTEGER_OPS
             or (n.op_type not in QUANTIZE_OPS and n.op_type not in SHAPE_OPS and dequantized.intersection(n.input))]
    return {**{op: counts[op] for op in QUANTIZE_OPS}, "types": sorted(_type_name(t) for t in types),
            "quantized": dict(collections.Counter(n.op_type for n in nodes).most_common()),
            "quantized_nodes": [n.name for n in nodes]}


def _type_name(numpy_name: str) -> str:
    return {"float8_e4m3fn": "fp8", "float8e4m3fn": "fp8"}.get(numpy_name.replace("ml_dtypes.", ""), numpy_name)
