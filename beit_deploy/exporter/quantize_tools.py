"""The quantizers behind exporter.quantize: ModelOpt and ONNX Runtime (static Q/DQ, dynamic), one function each.

Each writes one graph and returns what the manifest records about it (tool, version, method, settings). The
nodes to leave in float (`float_nodes`) and the Q/DQ census (`qdq_counts`) are shared with `inspect`.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import importlib.util
import multiprocessing
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import ExportError, MissingDependencyError, describe, require
from ..core.machine import versions
from ..core.precisions import PRECISIONS, QDQ, names
from ..core.progress import chatty, quiet_logger
from ..core.signals import die_with_parent
from . import fp16
from .graph_files import load_graph, needs_external_data, qdq_summary, weight_bytes

MODELOPT_PURPOSE = "making Q/DQ graphs with NVIDIA ModelOpt"
ORT_PURPOSE = "quantizing graphs with ONNX Runtime"
# What both tools quantize (weights per channel, activations per tensor): linear layers, the patch Conv, UperNet's
# convolutions, and (if on) the attention MatMuls. ModelOpt's own placement would also put Q/DQ on the
# LayerNormalization and residual Add inputs (the residual stream): kept float here, like the fp16 islands.
LINEAR_OPS = ["MatMul", "Conv", "ConvTranspose", "Gemm"]
FP8_OPS = ["MatMul", "Conv", "Gemm"]  # ModelOpt 0.47 has no fp8 ConvTranspose
QMAX = {p: PRECISIONS[p].qmax for p in names(making=QDQ)}  # largest quantized magnitude: scale = amax / QMAX
MODELOPT_OPS = {"int8": LINEAR_OPS, "fp8": FP8_OPS}  # what ModelOpt quantizes in each Q/DQ form
MODELOPT, ORT = "modelopt", "onnxruntime"  # the two quantizers (QuantizeOptions.tool; the rows' `quantizers`)
CALIBRATION_BATCH = 8


def modelopt_available() -> bool:
    return importlib.util.find_spec("modelopt") is not None


def _version(package: str) -> str:
    return versions((package,))[package]


def float_nodes(fp32_path: Path, task: str) -> list[str]:
    """Nodes never quantized, as the fp16 graph keeps them in fp32: the bias Adds feeding a Softmax and the head.
    (LayerNormalization and Softmax are not quantizable ops in either tool.)"""
    return fp16.fp32_nodes(load_graph(fp32_path), task)


def decoder_nodes(fp32_path: Path) -> list[str]:
    """Quantizable nodes outside the encoder (not in a /layers.N/ scope, not the patch Conv): the head, and
    UperNet's FPN and decoder for segmentation."""
    model = load_graph(fp32_path)
    patch = next((n.name for n in model.graph.node if n.op_type == "Conv"), None)
    return [n.name for n in model.graph.node if n.op_type in LINEAR_OPS and n.name != patch
            and not fp16.LAYER_SCOPE.search(n.name)]


def attention_matmuls(model) -> list[str]:
    """Names of the MatMuls with no constant operand: Q @ K^T and P @ V in every layer."""
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                             for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not constants.intersection(n.input)]


def qdq_counts(path: Path) -> dict:
    return qdq_summary(load_graph(path))


def _external(path: Path) -> bool:
    return needs_external_data(weight_bytes(load_graph(path, with_weights=True)))


# --- ONNX Runtime ---------------------------------------------------------------------------------------------
def dynamic_int8(fp32_path: Path, out: Path, keep: list[str]) -> dict:
    """ONNX Runtime's dynamic quantization: int8 weights (per tensor) on every linear MatMul but the head's, uint8
    activations quantized per call (DynamicQuantizeLinear -> MatMulInteger); attention MatMuls stay fp32."""
    q = require("onnxruntime.quantization", "export", ORT_PURPOSE)
    with quiet_logger():  # ONNX Runtime's quantizer logs advice on the root logger
        q.quantize_dynamic(str(fp32_path), str(out), op_types_to_quantize=["MatMul"], per_channel=False,
                           reduce_range=False, weight_type=q.QuantType.QInt8, nodes_to_exclude=list(keep),
                           use_external_data_format=_external(fp32_path), extra_options={"MatMulConstBOnly": True})
    return {"tool": "onnxruntime", "version": _version("onnxruntime"), "method": "dynamic (per-call activation range)",
            "form": "MatMulInteger (ONNX Runtime CPU; not a TensorRT form)", "high_precision": "fp32",
            "excluded": len(keep)}


class _Reader:
    """An onnxruntime CalibrationDataReader over feeds (N, ...) in batches of CALIBRATION_BATCH."""

    def __init__(self, feeds: dict[str, np.ndarray]):
        n = len(feeds["pixel_values"])
        self.batches = [{k: v[i:i + CALIBRATION_BATCH] for k, v in feeds.items()}
                        for i in range(0, n, CALIBRATION_BATCH)]
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.batches)


def _ort_static(fp32_path: Path, out: Path, calibration, method: str, keep: list[str], attention: bool) -> dict:
    """ONNX Runtime's static Q/DQ quantizer set up as ModelOpt sets it up for TensorRT (int8 only)."""
    q = require("onnxruntime.quantization", "export", ORT_PURPOSE)
    methods = {"max": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    exclude = list(keep) + ([] if attention else attention_matmuls(load_graph(fp32_path)))
    reader = type("Reader", (_Reader, q.CalibrationDataReader), {})(calibration.feeds)
    q.quantize_static(str(fp32_path), str(out), reader, quant_format=q.QuantFormat.QDQ,
                      op_types_to_quantize=LINEAR_OPS, per_channel=True, activation_type=q.QuantType.QInt8,
                      weight_type=q.QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=methods[method],
                      use_external_data_format=_external(fp32_path),
                      extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                     "OpTypesToExcludeOutputQuantization": LINEAR_OPS,
                                     "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
    return {"tool": "onnxruntime", "version": _version("onnxruntime"), "method": method, "high_precision": "fp32",
            "softmax_scale": "calibrated" if attention else None, "excluded": len(exclude)}


# --- ModelOpt -------------------------------------------------------------------------------------------------
def _modelopt(mode: str, fp32_path: Path, out: Path, calibration, method: str, keep: list[str], attention: bool
              ) -> dict:
    """ModelOpt's ONNX PTQ on a private copy of the fp32 graph (it writes beside, and into, its input), on CPU.

    Its default fixes the Softmax output scale to 1/127 (amax 1), which costs accuracy when attention is spread
    thin; the scale is set from the calibration photos instead (`_calibrate_softmax`)."""
    if not modelopt_available():  # checked without importing it here (see _modelopt_pool)
        raise MissingDependencyError("nvidia-modelopt", "quantize", MODELOPT_PURPOSE)
    n, external = calibration.count, _external(fp32_path)
    batch = min(CALIBRATION_BATCH, n)
    shapes = ",".join(f"{k}:{'x'.join(map(str, (batch, *v.shape[1:])))}" for k, v in calibration.feeds.items())
    with tempfile.TemporaryDirectory(prefix=".modelopt-", dir=out.parent) as work:
        copy = Path(work) / fp32_path.name
        shutil.copyfile(fp32_path, copy)
        if fp32_path.with_name(fp32_path.name + ".data").is_file():
            shutil.copyfile(fp32_path.with_name(fp32_path.name + ".data"), copy.with_name(copy.name + ".data"))
        settings = dict(quantize_mode=mode, calibration_data=_by_file(calibration.feeds), calibration_shapes=shapes,
                        calibration_method=method, calibration_eps=["cpu"],
                        nodes_to_exclude=[re.escape(name) + "$" for name in keep],
                        op_types_to_quantize=list(MODELOPT_OPS[mode]),
                        high_precision_dtype="fp32", disable_mha_qdq=not attention,
                        use_external_data_format=external, output_path=str(out),
                        log_level="INFO" if chatty() else "CRITICAL")  # e.g. its NVML error on a CPU machine
        try:
            _modelopt_pool().submit(_run_modelopt, str(copy), settings).result()
        except Exception as exc:  # ModelOpt raises assorted types; say which step failed
            if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
                _modelopt_pool.cache_clear()
            raise ExportError(f"ModelOpt could not quantize {fp32_path.name} to {mode} ({describe(exc)})") from exc
    if not out.is_file():
        raise ExportError(f"ModelOpt wrote no {mode} graph for {fp32_path.name} (its log above says why)")
    scaled = _calibrate_softmax(fp32_path, out, calibration.feeds, QMAX[mode]) if attention else 0
    return {"tool": "modelopt", "version": _version("nvidia-modelopt"), "method": method, "high_precision": "fp32",
            "softmax_scale": f"calibrated ({scaled} Softmax outputs)" if attention else None,
            "excluded": len(keep)}


@functools.cache
def _modelopt_pool() -> concurrent.futures.ProcessPoolExecutor:
    """The one worker process ModelOpt runs in. ModelOpt patches ONNX Runtime's quantizer process-wide when it is
    imported (its op registries), so it never runs here: the ONNX Runtime quantizers in this process stay as
    shipped. The worker is kept for later graphs (importing ModelOpt takes seconds) and ends with this process,
    however this process ends (SIGKILL included: `core.signals.die_with_parent`)."""
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=die_with_parent, initargs=(os.getpid(),))
    atexit.register(pool.shutdown)
    return pool


def _by_file(feeds: dict) -> dict:
    """Feeds for the worker: a memory-mapped array (the streamed calibration photos) as (file, rows), mapped
    again there, so it is not copied through the pipe and held whole in both processes."""
    return {k: ("npy", v.filename, len(v)) if isinstance(v, np.memmap) and v.filename else v for k, v in feeds.items()}


def _run_modelopt(onnx_path: str, settings: dict) -> None:
    """In a child process: ModelOpt's ONNX quantization of the model at `onnx_path` (a private copy)."""
    import modelopt.onnx.quantization as mq

    settings["calibration_data"] = {k: np.load(v[1], mmap_mode="r")[:v[2]] if isinstance(v, tuple) else v
                                    for k, v in settings["calibration_data"].items()}
    mq.quantize(onnx_path, **settings)


def _calibrate_softmax(fp32_path: Path, out: Path, feeds: dict, qmax: float) -> int:
    """Set the scale of every Q/DQ pair on a Softmax output to (largest value seen on the calibration photos) /
    qmax, in the graph at `out`. Returns how many Softmax outputs were rescaled."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(out))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    targets = {}  # softmax output name -> Q nodes quantizing it (directly or through a Cast)
    for node in model.graph.node:
        src = producers.get(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if src is not None and src.op_type == "Cast":
            src = producers.get(src.input[0])
        if src is not None and src.op_type == "Softmax":
            targets.setdefault(src.output[0], []).append(node)
    if not targets:
        return 0
    amax = _maxima(fp32_path, list(targets), feeds)
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for tensor, qs in targets.items():
        for q in qs:
            for node in [q] + [d for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]:
                scale = inits.get(node.input[1])
                if scale is not None:
                    old = numpy_helper.to_array(scale)
                    scale.CopyFrom(numpy_helper.from_array(np.full_like(old, max(amax[tensor], 1e-8) / qmax),
                                                           scale.name))
    onnx.save(model, str(out))
    return len(targets)


def _maxima(fp32_path: Path, tensors: list[str], feeds: dict) -> dict[str, float]:
    """Largest value of each named tensor of the fp32 graph over the calibration feeds (ONNX Runtime, CPU)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32_path))
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    found = dict.fromkeys(tensors, 0.0)
    for batch in _Reader(feeds).batches:
        for name, value in zip(tensors, session.run(tensors, batch)):
            found[name] = max(found[name], float(np.max(value)))
    return found


def qdq(tool: str, mode: str, fp32_path: Path, out: Path, calibration, method: str, keep: list[str],
        attention: bool) -> dict:
    """A Q/DQ graph of precision `mode` (int8/fp8) from `tool` (modelopt/onnxruntime) at `out`."""
    if out.exists():
        out.unlink()
    with quiet_logger():  # ONNX Runtime's quantizer logs advice on the root logger
        if tool == "modelopt":
            return _modelopt(mode, fp32_path, out, calibration, method, keep, attention)
        return _ort_static(fp32_path, out, calibration, method, keep, attention)
