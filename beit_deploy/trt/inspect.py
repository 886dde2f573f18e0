"""`beit-deploy inspect`: what an ONNX graph or a TensorRT engine takes, gives and is made of.

ONNX (works anywhere): inputs/outputs, opset, node count, op histogram, and the precision of the compute nodes
(fp16 vs fp32, per op type), from the tensor types after onnx shape inference; so an fp16 export shows its
MatMuls in fp16 and its LayerNormalization/Softmax islands in fp32. Quantized graphs: Q/DQ counts, the quantized
type, and the layers that read a dequantized tensor (or are integer ops), by op type.
Engine (needs TensorRT and the GPU it was built for): I/O tensors, the profile, the layers as TensorRT's engine
inspector reports them, whether attention was fused into MHA kernels, and how many layers have int8/fp8 tensors
(both text heuristics on the inspector's JSON, said as such).
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.engine_manifest import ENGINE_FILE, ENGINE_SUFFIXES, TRT_PURPOSE, check_engine_compatible, current_gpu, \
    read_engine_manifest
from ..core.errors import ArtifactError, UsageError, describe, require
from ..core.onnx_wire import weightless
from ..exporter.graph_files import node_precisions, qdq_summary, tensor_specs

if TYPE_CHECKING:
    import tensorrt as trt

# Nodes that move or reinterpret data rather than compute on it: left out of the precision count.
DATA_MOVEMENT = frozenset({"Cast", "Constant", "Identity", "Reshape", "Transpose", "Flatten", "Squeeze",
                           "Unsqueeze", "Concat", "Gather", "Slice", "Split", "Expand", "Shape"})
FUSED_ATTENTION = re.compile(r"mha|flash|fused_?attention", re.IGNORECASE)
INT8, FP8 = re.compile(r"\bint8\b", re.IGNORECASE), re.compile(r"\bfp8\b|float8|e4m3", re.IGNORECASE)


def inspect_path(path: Path) -> dict:
    """The report for an ONNX file (*.onnx) or an engine (*.engine / *.plan, or an engine folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / ENGINE_FILE
    if not path.is_file():
        raise UsageError(f"'{path}' does not exist: pass an .onnx file, an .engine file or an engine folder")
    if path.suffix == ".onnx":
        return inspect_onnx(path)
    if path.suffix in ENGINE_SUFFIXES:
        return inspect_engine(path)
    raise UsageError(f"'{path}' is neither .onnx nor .engine: pass a graph from `export` or an engine from `build`")


def inspect_onnx(path: Path) -> dict:
    """Inputs/outputs (name, shape with "batch", dtype), opset, nodes, ops and compute precision of a graph."""
    import onnx

    try:
        model = onnx.ModelProto.FromString(weightless(path))  # the structure only, whatever the weights weigh
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises several types for a broken file
        raise ArtifactError(f"{path} is not a readable ONNX graph ({describe(exc)})") from exc
    precisions = node_precisions(inferred)
    by_op: dict[str, dict[str, int]] = collections.defaultdict(lambda: collections.Counter())
    for node in inferred.graph.node:
        if node.op_type not in DATA_MOVEMENT and precisions[node.name] in ("float16", "float32"):
            by_op[node.op_type][precisions[node.name]] += 1
    totals: collections.Counter[str] = collections.Counter()
    for counts in by_op.values():
        totals.update(counts)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"kind": "onnx", "path": str(path), "opset": opset,
            "inputs": [spec.to_dict() for spec in tensor_specs(model.graph.input)],
            "outputs": [spec.to_dict() for spec in tensor_specs(model.graph.output)],
            "nodes": len(model.graph.node),
            "ops": dict(collections.Counter(n.op_type for n in model.graph.node).most_common()),
            "precision": {"float16": totals["float16"], "float32": totals["float32"],
                          "by_op": {op: dict(sorted(c.items())) for op, c in sorted(by_op.items())}},
            "quantization": qdq_summary(model)}


def inspect_engine(path: Path) -> dict:
    """I/O tensors with profile ranges, layer types and fused-attention layers of an engine from `build`."""
    require("tensorrt", "gpu", TRT_PURPOSE)
    import tensorrt as trt

    from ..runtime.tensorrt_backend import trt_logger, trt_object

    info = read_engine_manifest(path.parent)
    check_engine_compatible(info, trt.__version__, current_gpu())
    runtime = trt_object(trt.Runtime, trt_logger(), "runtime")
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ArtifactError(f"TensorRT could not load {path} (its messages above say why): build it again")
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry = {"name": name, "mode": "input" if is_input else "output",
                 "shape": list(engine.get_tensor_shape(name)[:]), "dtype": engine.get_tensor_dtype(name).name}
        if is_input:
            entry["profile"] = [list(dims[:]) for dims in engine.get_tensor_profile_shape(name, 0)]
        tensors.append(entry)
    layers = _layers(engine)
    return {"kind": "engine", "path": str(path), "tensorrt": info.tensorrt, "gpu": info.gpu.name,
            "precision": info.precision, "profiles": engine.num_optimization_profiles,
            "inputs": [t for t in tensors if t["mode"] == "input"],
            "outputs": [t for t in tensors if t["mode"] == "output"], **layer_summary(layers)}


def _layers(engine: trt.ICudaEngine) -> list:
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    data = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return data.get("Layers", [])


def layer_summary(layers: list) -> dict:
    """Layer count, type histogram and fused-attention layers from the engine inspector's JSON "Layers".

    Each layer is a dict (detailed verbosity: Name, LayerType, TacticName, ...) or just a name.
    """
    def text(layer) -> str:
        if isinstance(layer, dict):
            return " ".join(str(layer.get(k, "")) for k in ("Name", "LayerType", "TacticName", "Metadata"))
        return str(layer)

    types = collections.Counter(layer.get("LayerType", "?") if isinstance(layer, dict) else "?" for layer in layers)
    fused = [(layer.get("Name") if isinstance(layer, dict) else str(layer)) for layer in layers
             if FUSED_ATTENTION.search(text(layer))]
    as_json = [json.dumps(layer) for layer in layers]  # detailed verbosity lists each tensor's "Int8"/"FP8" format
    return {"layers": len(layers), "layer_types": dict(types.most_common()), "fused_attention_layers": fused,
            "int8_layers": sum(bool(INT8.search(t)) for t in as_json),
            "fp8_layers": sum(bool(FP8.search(t)) for t in as_json)}


def _quantization_lines(q: dict) -> list[str]:
    """Q/DQ (or dynamic quantization) counts and the quantized layers by op type; nothing for a float graph."""
    if not (q["QuantizeLinear"] or q["DequantizeLinear"] or q["DynamicQuantizeLinear"] or q["quantized"]):
        return []
    return [f"  quantization: {q['QuantizeLinear']} QuantizeLinear, {q['DequantizeLinear']} DequantizeLinear, "
            f"{q['DynamicQuantizeLinear']} DynamicQuantizeLinear; types {', '.join(q['types']) or '-'}",
            "  quantized layers: " + ", ".join(f"{op} {n}" for op, n in q["quantized"].items())]


def format_report(report: dict) -> str:
    """The report as lines for people; `--json` prints the dict instead."""
    lines = [f"{report['path']} ({report['kind']})"]

    def io(kind):
        for t in report[kind]:
            extra = f"  profile min/opt/max {t['profile']}" if t.get("profile") else ""
            lines.append(f"  {kind[:-1]:6} {t['name']}: {t['dtype']} {t['shape']}{extra}")

    io("inputs")
    io("outputs")
    if report["kind"] == "onnx":
        p = report["precision"]
        lines.append(f"  opset {report['opset']}, {report['nodes']} nodes")
        lines.append("  ops: " + ", ".join(f"{op} {n}" for op, n in report["ops"].items()))
        lines.append(f"  compute precision: {p['float16']} nodes fp16, {p['float32']} fp32")
        for op, counts in p["by_op"].items():
            lines.append(f"    {op}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines += _quantization_lines(report["quantization"])
    else:
        lines.append(f"  TensorRT {report['tensorrt']}, {report['gpu']}, {report['precision']}, "
                     f"{report['profiles']} profile(s), {report['layers']} layers")
        lines.append("  layer types: " + ", ".join(f"{k} {v}" for k, v in report["layer_types"].items()))
        fused = report["fused_attention_layers"]
        lines.append(f"  fused attention (layer/tactic names with mha/flash): {len(fused)}"
                     + (f", e.g. {fused[0]}" if fused else ""))
        lines.append("  layers with int8 / fp8 tensors (inspector text): "
                     f"{report.get('int8_layers', 0)} / {report.get('fp8_layers', 0)}")
    return "\n".join(lines)
