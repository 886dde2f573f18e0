"""Quantized graphs, made at export time and proved like the fp16 one.

- `model.int8.onnx` / `model.fp8.onnx`: explicit Q/DQ graphs for TensorRT (10.12+ and 11 take int8/fp8 only that
  way). Made by NVIDIA ModelOpt (`pip install 'beit-deploy[quantize]'`) where it is installed, else (int8 only)
  by ONNX Runtime's static Q/DQ quantizer with the same TensorRT-style settings: per-tensor symmetric
  activations, per-channel symmetric weights on every linear layer and the patch Conv, no Q/DQ on outputs.
- `model.int8cpu.onnx`: ONNX Runtime's dynamic quantization (MatMulInteger on the linear layers, activation
  scales computed per call), the fastest CPU form; no calibration, not a TensorRT form.

Precision policy, as the fp16 graph: LayerNormalization, the attention bias Add and Softmax, and the head
(fp16.fp32_nodes) are never quantized; everything not quantized stays fp32 ("high precision" fp32), so both
tools give the same form and ONNX Runtime on CPU can prove it.

Attention Q/DQ (both attention MatMuls, and so the Softmax output) is tried first, as TensorRT's fused int8
attention needs it; when that graph misses its parity threshold the graph is made again without it, and the
manifest says why. Calibration: the manifest's preprocessing on the user's photos (`calibration_set`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core import precisions, tasks
from ..core.errors import MissingDependencyError, ParityError, UsageError
from ..core.manifest import Preprocessing, TensorSpec
from ..core.progress import say, step, tracked
from . import parity, quantize_tools as tools

FILES = {p: precisions.PRECISIONS[p].file for p in precisions.names(making=precisions.QDQ)
         + precisions.names(making=precisions.DYNAMIC)}
QDQ_PRECISIONS = precisions.names(making=precisions.QDQ)
METHODS = ("max", "entropy", "percentile")
TOOLS = ("auto", tools.MODELOPT, tools.ORT)
_TOOL_NAMES = {tools.MODELOPT: "ModelOpt", tools.ORT: "ONNX Runtime"}
MIN_CALIBRATION = 64  # below this the scales come from too few images to trust; said, not refused
INSTALL_HINT = "pip install 'beit-deploy[quantize]'"

Judge = Callable[[str, Path], parity.Parity]  # (precision, graph file) -> figures against the eager model


@dataclass(frozen=True)
class QuantizeOptions:
    """Which quantized graphs to make and how. `calibration` None: the parity photos (a demo set, warned).
    `attention_qdq` None: on when parity holds, else off; True/False forces one placement."""

    int8: bool = False
    fp8: bool = False
    int8_cpu: bool = False
    method: str = "max"  # activation calibration: max (symmetric min/max), entropy, percentile
    calibration: Path | None = None
    tool: str = "auto"  # auto: ModelOpt when installed, else ONNX Runtime (int8 only)
    attention_qdq: bool | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"calibration method '{self.method}' is not one of {', '.join(METHODS)}")
        if self.tool not in TOOLS:
            raise UsageError(f"quantizer '{self.tool}' is not one of {', '.join(TOOLS)}")
        for name in self.precisions:
            made_by = precisions.PRECISIONS[name].quantizers
            if made_by and self.tool in TOOLS[1:] and self.tool not in made_by:
                raise UsageError(f"{name} Q/DQ graphs are made with {' or '.join(map(_TOOL_NAMES.get, made_by))} "
                                 f"only: drop --quantizer {self.tool}")
            if made_by and tools.ORT not in made_by and self.method == "percentile":
                raise UsageError(f"{name} calibrates with max or entropy (ModelOpt): choose --int8-method max or "
                                 "entropy")

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in FILES if getattr(self, precisions.PRECISIONS[p].option))


@dataclass(frozen=True)
class Calibration:
    """Calibration feeds by input name, each (N, ...), the manifest's preprocessing applied; where they came from."""

    feeds: dict[str, np.ndarray]
    source: str
    skipped: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.feeds["pixel_values"])

    def to_dict(self) -> dict:
        return {"images": self.count, "source": self.source, "skipped": list(self.skipped)}


@dataclass(frozen=True)
class Quantized:
    """One quantized graph: its precision and file, its parity against eager, and how it was made (manifest)."""

    precision: str
    file: str
    parity: parity.Parity
    info: dict


def calibration_set(folder: Path | None, inputs: list[TensorSpec], preprocessing: Preprocessing,
                    seed: int = 0, work: Path | None = None) -> Calibration:
    """The photos in `folder` (None: the parity photos) preprocessed per the manifest, (N, 3, H, W) float32.

    Streamed: each photo is decoded, resized and written into its row at once, and no photo or list of them is
    kept; with `work` (a private folder) the rows go to a memory-mapped file there, so memory stays flat however
    many photos there are (without it, one array of the rows). An image that cannot be read (any decoder
    failure) gets its own line and is skipped; none at all is a UsageError. Under MIN_CALIBRATION images a
    warning says the scales may not fit real data. Masked image modeling gets seeded random masks (about 40 %
    of the patches), so the mask token's path is calibrated too.
    """
    from ..runtime.preprocess import ImageError, prepare

    paths, where = calibration_photos(folder)
    shape = (len(paths), *inputs[0].shape[1:])
    stack = (np.lib.format.open_memmap(Path(work) / "pixel_values.npy", "w+", np.float32, shape) if work
             else np.empty(shape, np.float32))
    count, skipped = 0, []
    for path in tracked(paths, "calibration photos", unit="img"):
        try:
            stack[count] = prepare(path, preprocessing).pixels
            count += 1
        except ImageError as exc:
            say(f"  calibration: skipping {exc}")
            skipped.append(path.name)
    if not count:
        raise UsageError(f"no readable calibration photos in {where}: pass --calibration DIR with photos like the "
                         f"ones the model will see ({MIN_CALIBRATION} or more)")
    if count < MIN_CALIBRATION:
        demo = " (the sample photos are a demo, not a calibration set)" if folder is None else ""
        say(f"  warning: calibrating on {count} image(s) from {where}, fewer than {MIN_CALIBRATION}: the "
            f"scales may not fit real data{demo}; pass --calibration DIR with {MIN_CALIBRATION}+ photos of what "
            "the model will see")
    stack = stack[:count]
    rng = np.random.default_rng(seed)
    feeds = {"pixel_values": stack} | {s.name: rng.random((count, s.shape[1])) < 0.4 for s in inputs[1:]}
    return Calibration(feeds, where, tuple(skipped))


def calibration_photos(folder: Path | None) -> tuple[list[Path], str]:
    """(the photos of calibration folder `folder`, None: the parity photos; how to name it). UsageError when
    there are none, so an empty folder is found before any export work, not after the fp32 graph is made."""
    paths = parity.sample_images(folder)
    where = str(folder) if folder else "the parity photos"
    if not paths:
        from ..runtime.preprocess import IMAGE_SUFFIXES

        raise UsageError(f"no calibration photos in {where} (files named {', '.join(IMAGE_SUFFIXES)}): pass "
                         f"--calibration DIR with photos like the ones the model will see ({MIN_CALIBRATION} or "
                         "more)")
    return paths, where


def quantize_graphs(fp32_path: Path, task: str, inputs: list[TensorSpec], preprocessing: Preprocessing,
                    options: QuantizeOptions, judge: Judge, images: Path | None = None, seed: int = 0
                    ) -> list[Quantized]:
    """Every graph `options` asks for, written beside `fp32_path`, each judged against the eager model.

    ParityError when one misses its threshold in every placement tried (nothing of it is kept then: the
    caller's atomic folder is dropped). `images`: the parity photos, the calibration set by default.
    """
    chosen, calibration = choose_tools(options), None
    with tempfile.TemporaryDirectory(prefix=".calibration-", dir=fp32_path.parent) as work:
        if any(p in QDQ_PRECISIONS for p in options.precisions):
            with step("reading the calibration photos"):
                calibration = calibration_set(options.calibration or images, inputs, preprocessing, seed,
                                              Path(work))
        return _quantize_each(fp32_path, task, options, judge, chosen, calibration)


def _quantize_each(fp32_path: Path, task: str, options: QuantizeOptions, judge: Judge, chosen: dict,
                   calibration: Calibration | None) -> list[Quantized]:
    made = []
    keep = tools.float_nodes(fp32_path, task)
    for precision in options.precisions:
        out = fp32_path.parent / FILES[precision]
        if precisions.PRECISIONS[precision].making == precisions.DYNAMIC:
            with step("quantizing for ONNX Runtime on CPU (dynamic int8 MatMuls)"):
                info = tools.dynamic_int8(fp32_path, out, keep)
            result = _judged(judge, precision, out)
        else:
            tool, why = chosen[precision]
            decoder = tools.decoder_nodes(fp32_path)
            result, info = _placed(precision, task, out, judge, options.attention_qdq, lambda attention, dec: tools.qdq(
                tool, precision, fp32_path, out, calibration, options.method, keep + dec * decoder, attention))
            info = info | {"calibration": calibration.to_dict(), "tool_reason": why}
        made.append(Quantized(precision, out.name, result, info | {"qdq": tools.qdq_counts(out)}))
    return made


def _judged(judge: Judge, precision: str, path: Path) -> parity.Parity:
    result = judge(precision, path)
    if not result.passed:
        raise ParityError(f"the {precision} graph misses its parity threshold ({', '.join(result.failures)}); "
                          f"nothing was written. Export without it, or see `beit-deploy verify` after a "
                          "float-only export")
    return result


def _rungs(task: str, forced: bool | None) -> list[tuple[bool, bool]]:
    """Placements to try in order, as (attention Q/DQ, decoder float): attention on, then off (only `forced` if
    given); for a task with a decoder (UperNet) last the same with the decoder left float."""
    rungs = [(attention, False) for attention in ([True, False] if forced is None else [forced])]
    return rungs + [(rungs[-1][0], True)] if tasks.task(task).decoder else rungs


def _label(attention: bool, decoder_float: bool) -> str:
    return f"attention Q/DQ {'on' if attention else 'off'}" + (", decoder float" if decoder_float else "")


def _placed(precision: str, task: str, out: Path, judge: Judge, forced: bool | None, make
            ) -> tuple[parity.Parity, dict]:
    """Make and judge the Q/DQ graph in each placement of `_rungs` until one holds parity.
    `make(attention, decoder_float)` writes the graph. -> (parity, info with "placement")."""
    tried = []
    for attention, decoder_float in _rungs(task, forced):
        with step(f"quantizing to {precision} Q/DQ ({_label(attention, decoder_float)})"):
            info = make(attention, decoder_float)
        result = judge(precision, out)
        if result.passed:
            reason = (f"missed parity with {'; '.join(tried)}" if tried else
                      "forced by the caller" if forced is not None else "parity held with it")
            decoder = ("float" if decoder_float else "quantized") if tasks.task(task).decoder else None
            return result, info | {"placement": {"attention_qdq": attention, "decoder": decoder, "reason": reason}}
        tried.append(f"{_label(attention, decoder_float)} ({', '.join(result.failures)})")
    raise ParityError(f"the {precision} graph misses its parity threshold with {'; '.join(tried)}; nothing was "
                      "written. Calibrate on more photos like the model's (--calibration DIR), try --int8-method "
                      f"entropy, or export without --{precision}")


def choose_tools(options: QuantizeOptions) -> dict[str, tuple[str, str]]:
    """{Q/DQ precision: (tool, why)} for the graphs `options` asks for; raises at once when one cannot be made
    here (the export calls it before loading the model)."""
    return {p: _choose_tool(p, options) for p in options.precisions if p in QDQ_PRECISIONS}


def _choose_tool(precision: str, options: QuantizeOptions) -> tuple[str, str]:
    """(tool, why) for a Q/DQ graph: ModelOpt when installed (or asked for), else ONNX Runtime for int8."""
    has_modelopt = tools.modelopt_available()
    only_modelopt = tools.ORT not in precisions.PRECISIONS[precision].quantizers
    if options.tool == tools.ORT:
        return tools.ORT, "asked for (--quantizer onnxruntime)"
    if options.tool == tools.MODELOPT or only_modelopt:
        if not has_modelopt:
            raise MissingDependencyError("nvidia-modelopt", "quantize", f"making {precision} Q/DQ graphs with "
                                         "ModelOpt" + (f" (the only {precision} quantizer here)" if only_modelopt
                                                       else ""))
        if options.method == "percentile":
            raise UsageError("ModelOpt calibrates with max or entropy only: use --int8-method max|entropy, or "
                             "--quantizer onnxruntime for percentile")
        return tools.MODELOPT, "asked for (--quantizer modelopt)" if options.tool == tools.MODELOPT else "installed"
    if options.method == "percentile":
        return tools.ORT, "percentile calibration (ModelOpt calibrates with max or entropy only)"
    if has_modelopt:
        return tools.MODELOPT, "installed"
    return tools.ORT, f"nvidia-modelopt is not installed ({INSTALL_HINT} for it)"
