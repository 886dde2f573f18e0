"""The TensorRT stage: an export's ONNX graph -> a serialized engine per resolution, with its engine manifest.

Precision comes from the graph itself: the network is strongly typed (TensorRT 11 types every network that
way; on 10.x the STRONGLY_TYPED creation flag asks for it), so `model.fp16.onnx` gives an fp16 engine with the
fp32 islands the export chose, and `model.onnx` an fp32 one. No precision builder flag is ever set (TensorRT 11
removed them). One optimisation profile covers the batch range MIN:OPT:MAX on axis 0 of every input.

Output: `<out>/<model>/<H>x<W>/` with `model.engine`, `engine.json` (what built it, for which GPU, from which
ONNX) and a copy of the export's `manifest.json`, written to a hidden temporary folder and renamed into place.
Everything but `engine_from_onnx` is plain Python, so it is tested without TensorRT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError, BeitDeployError, UsageError, require
from .manifest import FILENAME as MANIFEST_FILE
from .manifest import Manifest, TensorSpec, read_manifest, read_versioned, replace_folder
from .progress import say, step

ENGINE_FILE, ENGINE_MANIFEST = "model.engine", "engine.json"
ENGINE_FORMAT_VERSION = 1
TRT_PURPOSE = "building or running TensorRT engines (on a machine with an NVIDIA GPU)"


class TensorRTError(BeitDeployError):
    """TensorRT could not parse, build or run something, or there is no GPU to do it on."""


@dataclass(frozen=True)
class BuildOptions:
    """How to build. `batch` is (MIN, OPT, MAX) of the one profile; None leaves TensorRT's default in place."""

    precision: str = "fp16"  # which export artifact: "fp16" (model.fp16.onnx) or "fp32" (model.onnx)
    batch: tuple[int, int, int] = (1, 8, 32)
    workspace_gb: float | None = None
    timing_cache: Path | None = None  # None: <out_dir>/timing.cache, shared by every build there
    opt_level: int | None = None  # builder optimisation level 0..5 (TensorRT's default is 3)
    out_dir: Path = Path("engines")

    def __post_init__(self):
        if self.precision not in ("fp16", "fp32"):
            raise UsageError(f"precision '{self.precision}' is not fp16 or fp32")
        parse_batch(":".join(str(b) for b in self.batch))
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise UsageError(f"builder optimisation level {self.opt_level} is not in 0..5")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise UsageError(f"workspace {self.workspace_gb} GB is not a positive size")

    def cache_path(self) -> Path:
        return Path(self.timing_cache) if self.timing_cache else Path(self.out_dir) / "timing.cache"


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EngineManifest":
        return cls(**{**d, "gpu": GpuInfo(**d["gpu"])})


def parse_batch(text: str) -> tuple[int, int, int]:
    """'1:8:32' -> (1, 8, 32); 'N' -> (N, N, N). MIN <= OPT <= MAX, all >= 1."""
    try:
        parts = tuple(int(p) for p in str(text).split(":"))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise UsageError(f"batch '{text}' is not MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX (e.g. 1:8:32) or N")
    return parts


def profile_shapes(inputs: tuple[TensorSpec, ...], batch: tuple[int, int, int]) -> dict[str, dict[str, tuple]]:
    """The optimisation profile: for every input, its shape with the "batch" axis at MIN, OPT and MAX.

    E.g. pixel_values ("batch", 3, 224, 224) and (1, 8, 32) -> {"min": (1, 3, 224, 224), "opt": (8, ...), ...};
    bool_masked_pos ("batch", 196) gets the same batch range. Any other symbolic axis is an error.
    """
    profile = {}
    for spec in inputs:
        if not spec.shape or spec.shape[0] != "batch" or any(isinstance(d, str) for d in spec.shape[1:]):
            raise ArtifactError(f"input {spec.name} has shape {list(spec.shape)}: expected a dynamic batch axis "
                                "first and fixed sizes after it; export the model again")
        profile[spec.name] = {key: (size, *spec.shape[1:]) for key, size in zip(("min", "opt", "max"), batch)}
    return profile


def strongly_typed_flag_needed(trt_version: str) -> bool:
    """TensorRT 10.x needs NetworkDefinitionCreationFlag.STRONGLY_TYPED; from 11 every network is strongly typed."""
    return int(trt_version.split(".")[0]) < 11


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


def write_engine_manifest(folder: Path, manifest: EngineManifest) -> Path:
    path = Path(folder) / ENGINE_MANIFEST
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def read_engine_manifest(folder: Path) -> EngineManifest:
    """engine.json of an engine folder, with a clear error when it is missing or unreadable."""
    return read_versioned(Path(folder) / ENGINE_MANIFEST, ENGINE_FORMAT_VERSION, EngineManifest.from_dict,
                          made_by="`beit-deploy build` (e.g. engines/<model>/224x224)",
                          redo="build the engine again", what="engine manifest")


def onnx_sha256(onnx_path: Path) -> str:
    """sha256 of an ONNX file followed by its external data file (`<file>.data`), if it has one."""
    digest = hashlib.sha256()
    for path in (Path(onnx_path), Path(f"{onnx_path}.data")):
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()


def resolution_folders(export_path: Path) -> list[Path]:
    """[export_path] for a resolution folder; its resolution subfolders for a model folder."""
    path = Path(export_path)
    if (path / MANIFEST_FILE).is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / MANIFEST_FILE).is_file()) if path.is_dir() else []
    if not found:
        raise UsageError(f"'{path}' is neither a resolution folder nor a model folder of an export (no "
                         f"{MANIFEST_FILE} in it or its subfolders): pass e.g. export/<model>/224x224")
    return found


def unavailable_reason() -> str | None:
    """Why engines cannot be built here (None: TensorRT and a CUDA GPU are both present). Imports nothing big."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"


def current_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device `device`, via torch; TensorRTError without a GPU."""
    torch = require("torch", "export", "finding the GPU for TensorRT")
    if not torch.cuda.is_available():
        raise TensorRTError("TensorRT needs an NVIDIA GPU and torch sees none (torch.cuda.is_available() is "
                            "False): run this on a machine with a CUDA GPU and a CUDA build of torch")
    major, minor = torch.cuda.get_device_capability(device)
    return GpuInfo(torch.cuda.get_device_name(device), f"{major}.{minor}")


def build(export_path: Path, options: BuildOptions) -> list[Path]:
    """Build an engine for every resolution folder under `export_path`; returns the engine files."""
    folders = resolution_folders(export_path)
    manifests = [(folder, read_manifest(folder)) for folder in folders]
    for folder, manifest in manifests:
        if options.precision not in manifest.artifacts:
            raise UsageError(f"{folder} has no {options.precision} graph (it has: {', '.join(manifest.artifacts)})"
                             f": export with --fp16, or build with --precision fp32")
    require("tensorrt", "gpu", TRT_PURPOSE)
    return [engine_from_onnx(folder / manifest.artifacts[options.precision], manifest, options)
            for folder, manifest in manifests]


def engine_from_onnx(onnx_path: Path, manifest: Manifest, options: BuildOptions) -> Path:
    """Build `onnx_path` (an artifact of `manifest`'s export) into <out>/<model>/<H>x<W>/model.engine."""
    trt = require("tensorrt", "gpu", TRT_PURPOSE)
    gpu = current_gpu()
    onnx_path = Path(onnx_path)
    folder = Path(options.out_dir) / manifest.model / f"{manifest.resolution[0]}x{manifest.resolution[1]}"
    profile = profile_shapes(manifest.inputs, options.batch)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        start = time.perf_counter()
        with step(f"building TensorRT {trt.__version__} {options.precision} engine for {gpu.name} -> {folder}"):
            data = _serialize(trt, onnx_path, profile, options)
        (tmp / ENGINE_FILE).write_bytes(data)
        write_engine_manifest(tmp, EngineManifest(
            tensorrt=trt.__version__, gpu=gpu, precision=options.precision,
            source={"folder": str(onnx_path.parent), "onnx": onnx_path.name, "sha256": onnx_sha256(onnx_path)},
            profile={k: {b: list(s) for b, s in v.items()} for k, v in profile.items()},
            build_seconds=round(time.perf_counter() - start, 2), engine_bytes=len(data),
            options={"workspace_gb": options.workspace_gb, "opt_level": options.opt_level,
                     "timing_cache": str(options.cache_path())},
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        manifest.write_to(tmp)
        tmp.chmod(0o755)
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"  {folder / ENGINE_FILE}: {len(data) / 2**20:.1f} MiB")
    return folder / ENGINE_FILE


def _serialize(trt, onnx_path: Path, profile: dict, options: BuildOptions) -> bytes:
    """Parse the ONNX into a strongly typed network, configure, build; the serialized engine's bytes."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed_flag_needed(
        trt.__version__) else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {onnx_path}: {errors[:500]}")
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(profile):
        raise ArtifactError(f"{onnx_path} has inputs {sorted(names)}, its manifest says {sorted(profile)}: "
                            "export the model again")
    config = _config(trt, builder, profile, options)
    cache_path = options.cache_path()
    _load_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path} (its messages above say why)")
    _save_timing_cache(config, cache_path)
    return bytes(memoryview(serialized))


def _config(trt, builder, profile: dict, options: BuildOptions):
    """Builder config: the one batch profile, workspace, optimisation level, detailed layer info for `inspect`."""
    config = builder.create_builder_config()
    trt_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        trt_profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(trt_profile)
    if options.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    if options.opt_level is not None:
        config.builder_optimization_level = int(options.opt_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    return config


def _load_timing_cache(config, path: Path) -> None:
    """Start from the timing cache at `path` if there is one that fits this GPU and TensorRT, else a new one."""
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # noqa: BLE001 - a truncated or foreign file: start afresh
        cache, data = None, b""
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        say(f"  timing cache {path} was made on another GPU or TensorRT version: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    elif data:
        say(f"  reusing timing cache {path}")


def _save_timing_cache(config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    os.replace(tmp, path)
