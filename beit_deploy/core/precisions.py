"""The per-precision table: everything that differs between the graphs an export can hold, in one place.

Every stage asks this table instead of comparing precision names: which file an export writes, which `export`
flag (and option) asks for it, how close to the eager model it must stay (parity thresholds) and how `compare`
judges it against another runner, whether TensorRT builds an engine from it, and on which device it is the form
to run. A new precision is a row here plus the code that makes its graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UsageError

# Where a graph is the form to run: anywhere, with a GPU (TensorRT, CUDA), or on the CPU.
ANY, GPU, CPU = "any", "gpu", "cpu"
# How the export makes a graph: traced (fp32) or converted (fp16) float graph, calibrated Q/DQ, dynamic (ONNX
# Runtime computes activation scales per call).
FLOAT, QDQ, DYNAMIC = "float", "qdq", "dynamic"


@dataclass(frozen=True)
class Precision:
    """One graph an export can hold.

    option: the ExportOptions / QuantizeOptions field (and `export` flag, `--` + dashes) that asks for it; None
    for the graph every export writes. family: what a user asks for to get this form; a family of several forms
    (int8: the Q/DQ graph and the CPU graph) means "the form this machine runs best" (`forms`). bench: the
    suffix of the benchmark's ONNX Runtime row (onnxruntime-<bench>; "" for the plain name).
    """

    name: str
    file: str
    option: str | None
    making: str  # FLOAT | QDQ | DYNAMIC
    thresholds: dict = field(hash=False)  # parity against eager: rel (max|diff|/max|ref|), cosine, top1
    tolerance: dict = field(hash=False)  # compare: atol, rtol (elementwise, fails where both are exceeded), cosine
    tensorrt: bool  # TensorRT builds an engine from it (strongly typed)
    device: str = ANY  # ANY | GPU | CPU
    family: str = ""
    bench: str | None = None
    gpu_default: bool = False  # the runner's choice with a GPU provider when the export has it
    torch_dtype: str | None = None  # torch's dtype of that name, for a float graph (bench's --precision)
    quantizers: tuple[str, ...] = ()  # the tools that make a QDQ graph (exporter.quantize_tools), best first
    about: str = ""  # what the graph is, for the export flag's help ("Also write <about>.")
    qmax: float | None = None  # a Q/DQ graph's largest quantized magnitude: scale = amax / qmax

    @property
    def flag(self) -> str | None:
        """The `beit-deploy export` flag that writes this graph (None: always written)."""
        return None if self.option is None else "--" + self.option.replace("_", "-")


# fp32 is exact up to float rounding; fp16 keeps the decision; quantized graphs (int8/fp8 Q/DQ, int8cpu dynamic)
# are judged by cosine only (top-1/top-5 are reported: random weights give near-flat logits whose top-1 an int8
# step can flip). compare: quantized graphs mainly by cosine, elementwise only for gross errors.
_COARSE = {"atol": 0.5, "rtol": 0.5}
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "model.onnx", None, FLOAT, {"rel": 1e-4}, {"atol": 1e-4, "rtol": 1e-3, "cosine": 0.99999},
              tensorrt=True, bench="", torch_dtype="float32", about="the fp32 graph"),
    Precision("fp16", "model.fp16.onnx", "fp16", FLOAT, {"cosine": 0.999, "top1": 1.0},
              {"atol": 5e-2, "rtol": 5e-2, "cosine": 0.999}, tensorrt=True, device=GPU, bench="fp16",
              gpu_default=True, torch_dtype="float16", about="the mixed-precision fp16 graph"),
    Precision("int8", "model.int8.onnx", "int8", QDQ, {"cosine": 0.999}, _COARSE | {"cosine": 0.999},
              tensorrt=True, device=GPU, family="int8", bench="int8-qdq", quantizers=("modelopt", "onnxruntime"),
              about="the int8 Q/DQ graph for TensorRT (model.int8.onnx)", qmax=127.0),
    Precision("fp8", "model.fp8.onnx", "fp8", QDQ, {"cosine": 0.995}, _COARSE | {"cosine": 0.995},
              tensorrt=True, device=GPU, bench="fp8", quantizers=("modelopt",),
              about="the fp8 Q/DQ graph for TensorRT (model.fp8.onnx; ModelOpt)", qmax=448.0),
    Precision("int8cpu", "model.int8cpu.onnx", "int8_cpu", DYNAMIC, {"cosine": 0.999}, _COARSE | {"cosine": 0.999},
              tensorrt=False, device=CPU, family="int8", bench="int8",
              about="the dynamic int8 graph for ONNX Runtime on CPU"),
)}
REFERENCE = "fp32"  # every export writes it; what the others are proved against and fall back to
ENGINE_DEFAULT = "fp16"  # what `build` builds, and what an engine without engine.json is taken to be

# Bounds for an engine whose build loosened its graph's precision, by the name it is judged as: an fp32 engine
# built with TF32 allowed (`build --tf32`) keeps fp32 storage but multiplies with a 10-bit mantissa (fp16's), so
# fp32's rel 1e-4 cannot hold. Set from that; not yet measured on a GPU.
TF32 = "tf32"
LOOSENED: dict[str, dict] = {TF32: {"of": REFERENCE, "thresholds": {"rel": 1e-2, "cosine": 0.9999},
                                    "tolerance": {"atol": 1e-2, "rtol": 1e-2, "cosine": 0.9999}}}


def judged_as(built: str, tf32: bool | None) -> str:
    """The name whose bounds judge an engine built from the `built` graph: TF32 for an fp32 engine built with
    TF32 allowed, else the graph's own precision."""
    return TF32 if tf32 and built == LOOSENED[TF32]["of"] else built


def precision(name: str) -> Precision:
    """The row of a precision name; UsageError naming the known ones otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise UsageError(f"precision '{name}' is not one of {', '.join(PRECISIONS)}") from None


def names(tensorrt: bool | None = None, making: str | None = None) -> tuple[str, ...]:
    """Precision names in table order; only those TensorRT builds (tensorrt=True), or made one way (`making`)."""
    return tuple(p.name for p in PRECISIONS.values()
                 if (tensorrt is None or p.tensorrt == tensorrt) and (making is None or p.making == making))


def buildable() -> tuple[str, ...]:
    """The precisions TensorRT builds an engine from, the one `build` builds by default first."""
    return tuple(sorted(names(tensorrt=True), key=lambda p: p != ENGINE_DEFAULT))


def forms(asked: str, gpu: bool) -> tuple[str, ...]:
    """The graphs that answer a request for `asked`, best first for this machine (`gpu`: a GPU provider is
    there): the forms of a family (int8: the Q/DQ graph with a GPU, the CPU graph without), else `asked` alone."""
    family = [p for p in PRECISIONS.values() if p.family == asked]
    if len(family) < 2:
        return (asked,)
    best = GPU if gpu else CPU
    return tuple(p.name for p in sorted(family, key=lambda p: p.device != best))


def same_family(asked: str, name: str) -> bool:
    """True when a request for `asked` may be answered by the graph `name` (itself, or a form of its family)."""
    return name in forms(asked, gpu=False)


def choose(asked: str | None, available, gpu: bool) -> str:
    """The precision to run from an export holding `available`: `asked` (the best form of its family that is
    there, else its first form), or by default the GPU default (fp16) when there is a GPU provider and that graph,
    else the reference (fp32). Quantized graphs are never chosen for you."""
    if asked is None:
        defaults = [p.name for p in PRECISIONS.values() if p.gpu_default and p.name in available]
        return defaults[0] if gpu and defaults else REFERENCE
    candidates = forms(asked, gpu)
    return next((p for p in candidates if p in available), candidates[0])


def export_hint(asked: str) -> str:
    """The export flag(s) that write a graph answering `asked`: '--int8 or --int8-cpu', '--fp16'."""
    flags = [PRECISIONS[p].flag for p in forms(asked, gpu=True) if p in PRECISIONS and PRECISIONS[p].flag]
    return " or ".join(flags) or "a plain export"
