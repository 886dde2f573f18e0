"""The per-backend table: what runs a model, under one name everywhere, and what each one needs.

A backend is what executes an artifact: ONNX Runtime (an ONNX graph, on the CPU or through its CUDA or TensorRT
provider), TensorRT (an engine), or transformers itself (the eager model, with its eager or SDPA attention).
Its `name` is the one the runner (`Backend.name`), `bench`, `triton --backend` and the CLI say; `compare` names
its runners as Polygraphy does (`polygraphy`: onnxrt-<precision>, trt, torch). Each row also says what it opens,
which module it imports and which extra installs that, and how Triton serves it. A new backend is a row here
plus its own code in one place (a runtime.backends.Backend subclass, a bench worker loader).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UsageError

# What a backend opens: an ONNX graph of the export, a TensorRT engine, or the transformers model itself.
ONNX, ENGINE, MODEL = "onnx", "engine", "model"


@dataclass(frozen=True)
class Backend:
    """One backend. `providers`: for ONNX Runtime, the execution providers each device choice asks for, best
    first (runner `backend=`). `triton`: its Triton model-stage config keys (None: not a Triton model stage).
    `attention`: transformers' attention implementation for a MODEL backend."""

    name: str
    opens: str  # ONNX | ENGINE | MODEL
    module: str  # imported to run it
    extra: str | None  # the beit-deploy extra that installs `module` (None: a core dependency)
    polygraphy: str | None = None  # its runner's name in `compare` (ONNX ones: <polygraphy>-<precision>)
    triton: dict | None = field(default=None, hash=False)
    providers: dict = field(default_factory=dict, hash=False)
    attention: str | None = None
    gpu_extra: str | None = None  # the extra for its GPU form, where that differs (onnxruntime-gpu)
    ours: bool = False  # as a Triton stage: beit-deploy's own code (model.py + manifest) in Triton's Python backend
    instances: str = "gpu"  # as a Triton stage: the default instance kind (gpu | cpu)
    autocast: str | None = None  # a MODEL backend run under torch's autocast to this torch dtype (bfloat16)
    device: str | None = None  # where it runs, when only one device ("cpu": autocast on CPUs with native bf16)


_ORT_PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
                  "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")}
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("onnxruntime", ONNX, "onnxruntime", None, polygraphy="onnxrt", triton={"platform": "onnxruntime_onnx"},
            providers=_ORT_PROVIDERS, gpu_extra="gpu"),
    Backend("tensorrt", ENGINE, "tensorrt", "gpu", polygraphy="trt", triton={"platform": "tensorrt_plan"}),
    Backend("eager", MODEL, "torch", "export", polygraphy="torch", attention="eager"),
    Backend("sdpa", MODEL, "torch", "export", attention="sdpa"),
    # the eager model under torch's CPU bf16 autocast, where the CPU has native bf16 (core.machine.cpu_bf16)
    Backend("eager-bf16", MODEL, "torch", "export", attention="eager", autocast="bfloat16", device="cpu"),
    # Triton's Python backend running beit-deploy's own runtime (ONNX Runtime) on the export's graph
    Backend("python", ONNX, "onnxruntime", "serve", triton={"backend": "python"}, ours=True, instances="cpu"),
)}
ONNXRUNTIME, TENSORRT, EAGER, PYTHON, EAGER_BF16 = (BACKENDS[n] for n in ("onnxruntime", "tensorrt", "eager", "python",
                                                                          "eager-bf16"))


def backend(name: str) -> Backend:
    """The row of a backend name; UsageError naming the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(f"backend '{name}' is not one of {', '.join(BACKENDS)}") from None


def names(opens: str | None = None, served: bool | None = None) -> tuple[str, ...]:
    """Backend names in table order; only those opening `opens`, or only Triton model stages (served=True)."""
    return tuple(b.name for b in BACKENDS.values()
                 if (opens is None or b.opens == opens) and (served is None or (b.triton is not None) == served))


def ort_devices() -> tuple[str, ...]:
    """The runner's ONNX Runtime device choices (backend="cpu" | "cuda" | "tensorrt")."""
    return tuple(ONNXRUNTIME.providers)


def provider_device(provider: str) -> str:
    """The device choice an ONNX Runtime execution provider belongs to: onnxruntime-<this> names the backend."""
    return next((d for d, chain in ONNXRUNTIME.providers.items() if chain[0] == provider), "cpu")


def compare_name(row: Backend, precision: str | None = None) -> str:
    """A runner's name in `compare`: Polygraphy's runner name, with the graph's precision for an ONNX one."""
    return f"{row.polygraphy}-{precision}" if precision is not None else str(row.polygraphy)


def compare_runners() -> dict[str, str | None]:
    """Every runner `compare` knows, by name -> the precision of the graph it runs (None: the eager model or an
    engine, whose precision comes from elsewhere): ONNX Runtime on each graph, the eager model, TensorRT."""
    from .precisions import PRECISIONS

    return {**{compare_name(ONNXRUNTIME, p): p for p in PRECISIONS}, compare_name(EAGER): None,
            compare_name(TENSORRT): None}


def bench_name(row: Backend, suffix: str = "") -> str:
    """A benchmark row's name: the backend's, with the graph it runs (onnxruntime-fp16) where there are several."""
    return f"{row.name}-{suffix}" if suffix else row.name
