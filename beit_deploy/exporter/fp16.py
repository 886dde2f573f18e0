"""The mixed-precision graph: fp16 compute with fp32 precision islands, strongly typed for TensorRT.

TensorRT 11 takes precision only from the graph (every network is strongly typed), so the graph itself says
what runs in fp16. MatMul, Conv and GELU run in fp16. In fp32 stay: LayerNormalization (mean of squares
overflows fp16, and eps 1e-12 is 0 there), the attention Softmax and the bias Add feeding it, and the head
(final norm, pooler, classifier). Inputs and outputs stay fp32. Casts at island borders are explicit.

The conversion is ONNX Runtime's `convert_float_to_float16` with op and node block lists.
"""

from __future__ import annotations

import heapq
import re
from pathlib import Path

from ..core import tasks
from ..core.errors import EnvironmentProblem, ExportError
from ..core.progress import step
from .graph_files import load_graph, save_proto

FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean"]
LAYER_SCOPE = re.compile(r"/layers\.\d+/")
# Ops between a gathered bias table and the Add that uses it (bake.GATHERED).
BIAS_PATH_OPS = ("Gather", "Reshape", "Transpose", "Unsqueeze")


def fp32_nodes(model, task: str) -> list[str]:
    """Names of the nodes to keep in fp32 beyond FP32_OPS: bias Adds feeding a Softmax (with the gather that
    brings a gathered bias), and the head.

    The head follows the task's `fp16_head` rule: every node after the last encoder layer (final norm, pooler,
    classifier, MIM's lm_head), or for segmentation only the nodes giving the outputs (the final classifier
    conv), since UperNet is most of the model's work.
    """
    nodes = list(model.graph.node)
    producers = {out: node for node in nodes for out in node.output}
    adds = [producers[n.input[0]] for n in nodes
            if n.op_type == "Softmax" and producers.get(n.input[0]) is not None
            and producers[n.input[0]].op_type == "Add"]
    names = [add.name for add in adds] + [name for add in adds for name in _bias_path(add, producers)]
    return names + _HEADS[tasks.task(task).fp16_head](model, nodes)


def _after_layers(model, nodes) -> list[str]:
    last = max(i for i, n in enumerate(nodes) if LAYER_SCOPE.search(n.name))
    return [n.name for n in nodes[last + 1:]]


def _output_nodes(model, nodes) -> list[str]:
    outputs = {out.name for out in model.graph.output}
    return [n.name for n in nodes if outputs.intersection(n.output)]


_HEADS = {tasks.HEAD_AFTER_LAYERS: _after_layers, tasks.HEAD_OUTPUT_NODES: _output_nodes}


def _bias_path(add, producers) -> list[str]:
    """The nodes that bring a gathered bias to its Add (Gather from the table, then reshapes), if any.

    Kept in fp32 with the Add, the table stays an fp32 initializer, as exact as the fp32 graph's, and no Cast of a
    full (heads, T, T) tensor runs per layer (converted, the table would be rounded to fp16 and cast back)."""
    names = []
    for value in add.input:
        node = producers.get(value)
        while node is not None and node.op_type in BIAS_PATH_OPS:
            names.append(node.name)
            node = producers.get(node.input[0])
    return names


def fp16_from_onnx(fp32_path: Path, task: str, path: Path) -> Path:
    """Write the mixed-precision version of the fp32 graph at `fp32_path` to `path`."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with step("converting to mixed precision (fp16 with fp32 islands)"):
        keep_fp32 = fp32_nodes(load_graph(fp32_path), task)
        # From the path, the converter infers types file to file (onnx's C++ infer_shapes_path, fine past 2 GB)
        # and loads the model once: a copy fewer than handing it a loaded model.
        try:
            model = convert_float_to_float16(str(fp32_path), keep_io_types=True, op_block_list=FP32_OPS,
                                             node_block_list=keep_fp32)
        except Exception as exc:
            if type(exc).__name__ != "DecodeError":  # protobuf's: the inferred copy is truncated
                raise
            raise EnvironmentProblem(
                f"converting {fp32_path.name} to fp16 failed: the copy onnx's shape inference wrote beside it "
                f"({fp32_path.parent}) cannot be read back, it is truncated; most often that disk is full (onnx "
                "does not report it): free some disk space, or export to another disk (--out); nothing was "
                "written") from exc
        del model.graph.value_info[:]  # the converter leaves stale fp16 types on fp32 island tensors
        _drop_round_trips(model)
        _drop_dead_nodes(model)
        _sort(model.graph)
        save_proto(model, path)
    return path


def _drop_round_trips(model) -> None:
    """Remove fp32 -> fp16 -> fp32 Cast pairs the converter puts between two fp32 islands.

    Between the bias Add and the Softmax it would otherwise round the attention scores to fp16, which is
    exactly what keeping both in fp32 is for. Consumers of the second Cast read the original fp32 tensor.
    """
    import onnx

    def to(node):
        return next(a.i for a in node.attribute if a.name == "to")

    producers = {out: n for n in model.graph.node for out in n.output}
    rename = {}
    for node in model.graph.node:
        first = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if first is not None and first.op_type == "Cast" and to(node) == onnx.TensorProto.FLOAT \
                and to(first) == onnx.TensorProto.FLOAT16:
            rename[node.output[0]] = first.input[0]
    outputs = {o.name for o in model.graph.output}
    rename = {k: v for k, v in rename.items() if k not in outputs}
    for node in model.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]


def _drop_dead_nodes(model) -> None:
    """Remove nodes none of whose outputs is read (by a node or as a graph output), until there are none.

    The converter leaves fp16 Casts of fp32-island tensors that nothing reads (4 per layer with a gathered bias),
    and the round trips removed above leave chains of them. ONNX Runtime runs such nodes anyway, and their outputs
    piled up over the call: a batch-2 call of beit-large@512's fp16 graph peaked at 9.04 GiB, 2.09 without them.
    """
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(keep)


def _sort(graph) -> None:
    """Put the nodes in topological order, in place (the converter appends its input Casts last; TensorRT's parser
    needs order). Kahn's algorithm, stable: a node keeps its place among those that are ready."""
    nodes = list(graph.node)
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    producer = {out: k for k, node in enumerate(nodes) for out in node.output}
    waiting = [{producer[i] for i in node.input if i not in known and i in producer} for node in nodes]
    users: dict[int, list[int]] = {}
    for k, needs in enumerate(waiting):
        for need in needs:
            users.setdefault(need, []).append(k)
    ready, order = [k for k, needs in enumerate(waiting) if not needs], []
    heapq.heapify(ready)
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for user in users.get(k, ()):
            waiting[user].discard(k)
            if not waiting[user]:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        raise ExportError("the fp16 graph has a cycle: this is a beit-deploy bug, please report it")
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)
