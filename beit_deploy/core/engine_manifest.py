"""engine.json: what built a TensorRT engine, for which GPU, from which ONNX graph, with which profile.

The contract between `beit-deploy build` (trt/build.py) and everything that opens an engine (the runtime's
TensorRT backend, verify, compare, inspect, bench), and where engines live: `engines/<model>/<H>x<W>/`
(`engine_folder`), found again for an export by the sha256 of its ONNX (`find_engine`). Plain Python: torch is
imported lazily to name the GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError, BeitDeployError, UsageError, require
from .files import artifact_sha256, bare_name
from .manifest import Manifest, read_versioned
from . import precisions

ENGINE_SUFFIXES = (".engine", ".plan")
ENGINE_FILE, ENGINE_MANIFEST = "model.engine", "engine.json"
ENGINE_FORMAT_VERSION = 1
ENGINES_DIR = Path("engines")  # `beit-deploy build`'s default output folder: engines/<model>/<H>x<W>/
TRT_PURPOSE = "building or running TensorRT engines (on a machine with an NVIDIA GPU)"


class TensorRTError(BeitDeployError):
    """TensorRT could not parse, build or run something, or there is no GPU to do it on."""


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for: its name and compute capability ("9.0")."""

    name: str
    compute_capability: str


@dataclass(frozen=True)
class EngineManifest:
    """engine.json: what built an engine, for which GPU, from which ONNX, with which profile."""

    tensorrt: str
    gpu: GpuInfo
    precision: str
    source: dict  # {"folder": export folder, "onnx": file name, "sha256": of the ONNX (+ its external data)}
    profile: dict  # input name -> {"min": shape, "opt": shape, "max": shape}
    build_seconds: float
    engine_bytes: int
    options: dict  # workspace_gb, opt_level, timing_cache
    created: str
    format_version: int = ENGINE_FORMAT_VERSION
    tf32: bool | None = None  # TF32 allowed for fp32 layers; None: not recorded (engine.json before it was)
    # {"form": "decomposed"} or {"form": "fused", "attention_nodes": N, "trt_decomposable": True}; None: not recorded
    attention: dict | None = None

    @property
    def judged_as(self) -> str:
        """The name whose parity bounds apply (core.precisions.judged_as): tf32 for an fp32 engine built with
        TF32 allowed, else its precision."""
        return precisions.judged_as(self.precision, self.tf32)

    def __post_init__(self):
        """ValueError for an engine.json that names its source graph by anything but a plain file name (the
        engine itself is always ENGINE_FILE in the same folder; `source.folder` is only ever shown)."""
        if not isinstance(self.source, dict) or not isinstance(self.profile, dict):
            raise ValueError("source and profile must be objects")
        if "onnx" in self.source:
            bare_name(self.source["onnx"], "source ONNX")
        if not isinstance(self.engine_bytes, int) or self.engine_bytes < 0:
            raise ValueError(f"engine_bytes {self.engine_bytes!r} is not a byte count")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EngineManifest":
        return cls(**{**d, "gpu": GpuInfo(**d["gpu"])})


def check_engine_compatible(engine_manifest: EngineManifest, trt_version: str, gpu: GpuInfo) -> None:
    """Raise ArtifactError if the engine was built by another TensorRT version or for another GPU.

    A serialized engine only loads in the TensorRT version that built it, and its tactics were chosen for
    one GPU model; both need a rebuild on this machine, which the message says how to do.
    """
    m = engine_manifest
    rebuild = f"rebuild it here: beit-deploy build {m.source.get('folder', '<export folder>')}"
    if m.tensorrt != trt_version:
        raise ArtifactError(f"this engine was built with TensorRT {m.tensorrt} and this machine has TensorRT "
                            f"{trt_version}; engines only load in the version that built them: {rebuild}")
    if (m.gpu.name, m.gpu.compute_capability) != (gpu.name, gpu.compute_capability):
        raise ArtifactError(f"this engine was built for {m.gpu.name} (compute capability "
                            f"{m.gpu.compute_capability}) and this machine has {gpu.name} (compute capability "
                            f"{gpu.compute_capability}); engines are specific to the GPU: {rebuild}")


def gpu_key(trt_version: str, gpu: GpuInfo) -> str:
    """A file-name-safe key of what an engine or a timing cache is specific to: TensorRT version and GPU.

    E.g. "trt10.13.0.35-nvidia-h100-80gb-hbm3-sm90".
    """
    name = re.sub(r"[^a-z0-9.]+", "-", gpu.name.lower()).strip("-.") or "gpu"
    return f"trt{re.sub(r'[^A-Za-z0-9.]+', '-', trt_version)}-{name}-sm{gpu.compute_capability.replace('.', '')}"


def engine_folder(out_dir: Path, manifest: Manifest) -> Path:
    """<out_dir>/<model>/<H>x<W>: where `build` writes the engine of one export resolution."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", manifest.model):
        raise ArtifactError(f"the manifest's model name {manifest.model!r} is not a plain folder name: "
                            "export the model again")
    return Path(out_dir) / manifest.model / f"{manifest.resolution[0]}x{manifest.resolution[1]}"


@dataclass(frozen=True)
class FoundEngine:
    """An engine built from one of an export's ONNX graphs: its file, its engine.json, and the ONNX it came from."""

    path: Path
    info: EngineManifest
    onnx: str

    def describe(self) -> str:
        return (f"{self.path} ({self.info.precision}, TensorRT {self.info.tensorrt}, {self.info.gpu.name}, built "
                f"from {self.onnx})")


def find_engine(export: Path, manifest: Manifest, engine: Path | None = None, engines_dir: Path = ENGINES_DIR
                ) -> tuple[FoundEngine | None, list[str]]:
    """The engine `build` made from this export's ONNX, and why other candidates were passed over.

    `engine` (an engine file or folder) when given, else engines_dir/<model>/<H>x<W>/ (build's default) and
    model.engine in the export folder itself. A candidate counts only when its engine.json names one of the
    export's artifacts and that file's sha256 matches; only those files are read. UsageError when `engine`
    is given and is not an engine of this export.
    """
    folder = Path(export)
    candidates = [Path(engine)] if engine is not None else [engine_folder(engines_dir, manifest), folder]
    passed_over: list[str] = []
    for candidate in candidates:
        path = candidate / ENGINE_FILE if candidate.is_dir() else candidate
        if not (path.parent / ENGINE_MANIFEST).is_file() or not path.is_file():
            if engine is not None:
                raise UsageError(f"'{engine}' is not an engine written by `beit-deploy build` (no {ENGINE_FILE} "
                                 f"with {ENGINE_MANIFEST} beside it)")
            continue
        found, reason = _match(path, folder, manifest)
        if found is not None:
            return found, passed_over
        if engine is not None:
            raise UsageError(f"'{engine}' is not an engine of {folder}: {reason}")
        passed_over.append(f"{path}: {reason}")
    return None, passed_over


def _match(path: Path, folder: Path, manifest: Manifest) -> tuple[FoundEngine | None, str]:
    """(the engine, "") when its engine.json's source is an artifact of `manifest` with the same sha256."""
    info = read_engine_manifest(path.parent)
    onnx = info.source.get("onnx")
    if onnx not in manifest.artifacts.values():
        return None, f"built from {onnx!r}, which is not one of this export's graphs"
    if not (folder / onnx).is_file() or artifact_sha256(folder / onnx) != info.source.get("sha256"):
        return None, f"built from another {onnx} (sha256 differs): build it again from this export"
    return FoundEngine(path, info, onnx), ""


def write_engine_manifest(folder: Path, manifest: EngineManifest) -> Path:
    path = Path(folder) / ENGINE_MANIFEST
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def read_engine_manifest(folder: Path) -> EngineManifest:
    """engine.json of an engine folder, with a clear error when it is missing or unreadable."""
    return read_versioned(Path(folder) / ENGINE_MANIFEST, ENGINE_FORMAT_VERSION, EngineManifest.from_dict,
                          made_by="`beit-deploy build` (e.g. engines/<model>/224x224)",
                          redo="build the engine again", what="engine manifest")


def unavailable_reason() -> str | None:
    """Why engines cannot be built here (None: TensorRT and a CUDA GPU are both present). Imports nothing big."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"


def engine_cannot_run(found: FoundEngine, plan: str) -> str | None:
    """Why `found` cannot run on this machine (None: it can), checked before anything loads it: TensorRT or a
    GPU missing ("<plan>, but ..."), or an engine of another TensorRT version or GPU (check_engine_compatible's
    reason). verify and compare skip the engine with this same sentence."""
    unavailable = unavailable_reason()
    if unavailable:
        return f"{plan}, but {unavailable}"
    import tensorrt

    try:
        check_engine_compatible(found.info, tensorrt.__version__, current_gpu())
    except BeitDeployError as exc:
        return f"{found.path} cannot run here ({exc})"
    return None


def current_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device `device`, via torch; TensorRTError without a GPU."""
    torch = require("torch", "export", "finding the GPU for TensorRT")
    if not torch.cuda.is_available():
        raise TensorRTError("TensorRT needs an NVIDIA GPU and torch sees none (torch.cuda.is_available() is "
                            "False): run this on a machine with a CUDA GPU and a CUDA build of torch")
    major, minor = torch.cuda.get_device_capability(device)
    return GpuInfo(torch.cuda.get_device_name(device), f"{major}.{minor}")


