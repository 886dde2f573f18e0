"""The TensorRT stage: an export's ONNX graph -> a serialized engine per resolution, with its engine manifest.

Precision comes from the graph itself: the network is strongly typed (TensorRT 11 types every network that
way; on 10.x the STRONGLY_TYPED creation flag asks for it), so `model.fp16.onnx` gives an fp16 engine with the
fp32 islands the export chose, `model.onnx` an fp32 one, and the Q/DQ graphs `model.int8.onnx` / `model.fp8.onnx`
int8 / fp8 layers where their Q/DQ nodes are. No precision builder flag is ever set (TensorRT 11 removed them).
One optimisation profile covers the batch range MIN:OPT:MAX on axis 0 of every input.

Output: `<out>/<model>/<H>x<W>/` with `model.engine`, `engine.json` (what built it, for which GPU, from which
ONNX) and a copy of the export's `manifest.json`, written to a hidden temporary folder and renamed into place.
Everything but `engine_from_onnx` is plain Python, so it is tested without TensorRT.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.engine_manifest import ENGINE_FILE, TRT_PURPOSE, EngineManifest, TensorRTError, current_gpu, \
    write_engine_manifest
from ..core.errors import ArtifactError, UsageError, require
from ..core.files import artifact_sha256, atomic_folder
from ..core.manifest import Manifest, TensorSpec, read_manifest, resolution_folders
from ..core.progress import say, step


# Export artifacts TensorRT builds. The Q/DQ graphs (int8, fp8) build strongly typed like the others: the Q/DQ
# nodes say what runs in int8/fp8, no precision flag is set. int8cpu (MatMulInteger) is an ONNX Runtime CPU form.
BUILDABLE = {"fp16": "--fp16", "fp32": "", "int8": "--int8", "fp8": "--fp8"}


@dataclass(frozen=True)
class BuildOptions:
    """How to build. `batch` is (MIN, OPT, MAX) of the one profile; None leaves TensorRT's default in place."""

    precision: str = "fp16"  # which export artifact: fp16, fp32, int8 / fp8 (the Q/DQ graphs); see BUILDABLE
    batch: tuple[int, int, int] = (1, 8, 32)
    workspace_gb: float | None = None
    timing_cache: Path | None = None  # None: <out_dir>/timing.cache, shared by every build there
    opt_level: int | None = None  # builder optimisation level 0..5 (TensorRT's default is 3)
    out_dir: Path = Path("engines")

    def __post_init__(self):
        if self.precision not in BUILDABLE:
            raise UsageError(f"precision '{self.precision}' is not one of {', '.join(BUILDABLE)} (int8cpu is an ONNX "
                             "Runtime CPU graph; TensorRT builds the int8 Q/DQ graph)")
        parse_batch(":".join(str(b) for b in self.batch))
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise UsageError(f"builder optimisation level {self.opt_level} is not in 0..5")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise UsageError(f"workspace {self.workspace_gb} GB is not a positive size")

    def cache_path(self) -> Path:
        return Path(self.timing_cache) if self.timing_cache else Path(self.out_dir) / "timing.cache"


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


def build(export_path: Path, options: BuildOptions) -> list[Path]:
    """Build an engine for every resolution folder under `export_path`; returns the engine files."""
    manifests = [(folder, read_manifest(folder)) for folder in resolution_folders(export_path).values()]
    for folder, manifest in manifests:
        if options.precision not in manifest.artifacts:
            raise UsageError(f"{folder} has no {options.precision} graph (it has: {', '.join(manifest.artifacts)})"
                             f": export with {BUILDABLE[options.precision]}, or build with --precision fp32")
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
    with atomic_folder(folder) as tmp:
        start = time.perf_counter()
        with step(f"building TensorRT {trt.__version__} {options.precision} engine for {gpu.name} -> {folder}"):
            data = _serialize(trt, onnx_path, profile, options)
        (tmp / ENGINE_FILE).write_bytes(data)
        write_engine_manifest(tmp, EngineManifest(
            tensorrt=trt.__version__, gpu=gpu, precision=options.precision,
            source={"folder": str(onnx_path.parent), "onnx": onnx_path.name, "sha256": artifact_sha256(onnx_path)},
            profile={k: {b: list(s) for b, s in v.items()} for k, v in profile.items()},
            build_seconds=round(time.perf_counter() - start, 2), engine_bytes=len(data),
            options={"workspace_gb": options.workspace_gb, "opt_level": options.opt_level,
                     "timing_cache": str(options.cache_path())},
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        manifest.write_to(tmp)
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
