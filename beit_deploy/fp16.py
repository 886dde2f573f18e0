"""The mixed-precision graph: fp16 compute with fp32 precision islands, strongly typed for TensorRT.

TensorRT 11 takes precision only from the graph (every network is strongly typed), so the graph itself says
what runs in fp16. MatMul, Conv and GELU run in fp16. In fp32 stay: LayerNormalization (mean of squares
overflows fp16, and eps 1e-12 is 0 there), the attention Softmax and the bias Add feeding it, and the head
(final norm, pooler, classifier). Inputs and outputs stay fp32. Casts at island borders are explicit.

The conversion is ONNX Runtime's `convert_float_to_float16` with op and node block lists.
"""

from __future__ import annotations

import re
from pathlib import Path

from .onnx_graph import EXTERNAL_DATA_BYTES
from .progress import step

FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean"]
LAYER_SCOPE = re.compile(r"/layers\.\d+/")


def fp32_nodes(model, task: str) -> list[str]:
    """Names of the nodes to keep in fp32 beyond FP32_OPS: bias Adds feeding a Softmax, and the head.

    The head is every node after the last encoder layer (final norm, pooler, classifier, MIM's lm_head); for
    segmentation only the final classifier conv, since UperNet is most of the model's work.
    """
    nodes = list(model.graph.node)
    producers = {out: node for node in nodes for out in node.output}
    names = [producers[n.input[0]].name for n in nodes
             if n.op_type == "Softmax" and producers.get(n.input[0]) is not None
             and producers[n.input[0]].op_type == "Add"]
    if task == "segmentation":
        outputs = {out.name for out in model.graph.output}
        return names + [n.name for n in nodes if outputs.intersection(n.output)]
    last = max(i for i, n in enumerate(nodes) if LAYER_SCOPE.search(n.name))
    return names + [n.name for n in nodes[last + 1:]]


def fp16_from_onnx(fp32_path: Path, task: str, path: Path) -> Path:
    """Write the mixed-precision version of the fp32 graph at `fp32_path` to `path`."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with step("converting to mixed precision (fp16 with fp32 islands)"):
        model = onnx.load(str(fp32_path))
        model = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS,
                                         node_block_list=fp32_nodes(model, task),
                                         disable_shape_infer=_too_big_to_infer(model))
        del model.graph.value_info[:]  # the converter leaves stale fp16 types on fp32 island tensors
        big = sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
        onnx.save_model(model, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    return path


def _too_big_to_infer(model) -> bool:
    # onnx's Python shape inference serialises the model, which fails past 2 GB.
    return sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_BYTES


def node_precisions(model) -> dict[str, str]:
    """Compute dtype of every node ("float16", "float32", or "other"), from the types of its float inputs.

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
