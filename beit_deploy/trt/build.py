"""The TensorRT stage: an export's ONNX graph -> a serialized engine per resolution, with its engine manifest.

Precision comes from the graph itself: the network is strongly typed (TensorRT 11 types every network that
way; on 10.x the STRONGLY_TYPED creation flag asks for it), so `model.fp16.onnx` gives an fp16 engine with the
fp32 islands the export chose, `model.onnx` an fp32 one, and the Q/DQ graphs `model.int8.onnx` / `model.fp8.onnx`
int8 / fp8 layers where their Q/DQ nodes are. No precision builder flag is ever set (TensorRT 11 removed them),
and TF32 is cleared (TensorRT enables it by default): fp32 layers stay fp32, as the parity thresholds (fp32: rel
1e-4) assume; `tf32=True` allows it, and engine.json records which. One optimisation profile covers the batch
range MIN:OPT:MAX on axis 0 of every input. The timing cache: see timing_cache.py.

Fused attention (an export with `--attention fused`): TensorRT's ONNX parser turns each ONNX `Attention` node
into an IAttention layer that must run as one fused kernel unless the node says `TRT_decomposable=1`; where
TensorRT has no fused kernel for a case (fp32, very long sequences, small heads) the build then fails. ONNX
Runtime refuses that attribute, so the exported graph cannot carry it: the parser gets a copy of the graph
(`tensorrt_graph`, in memory, external weights still read from the export folder) with TRT_decomposable=1 on
every Attention node, so TensorRT fuses where it can and decomposes where it cannot. engine.json records it
(`attention`). TensorRT before 10.14 has no Attention importer: such a build is refused before parsing.

Output: `<out>/<model>/<H>x<W>/` with `model.engine`, `engine.json` (what built it, for which GPU, from which
ONNX) and a copy of the export's `manifest.json`, written to a hidden temporary folder and renamed into place.
Everything but `engine_from_onnx` is plain Python, so it is tested without TensorRT; the TensorRT calls are
type-checked against TensorRT's stubs (tests/trt/test_static_check.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.engine_manifest import ENGINE_FILE, ENGINES_DIR, TRT_PURPOSE, EngineManifest, TensorRTError, \
    current_gpu, engine_folder, gpu_key, write_engine_manifest
from ..core import precisions
from ..core.errors import ArtifactError, UsageError, require
from ..core.files import artifact_sha256, atomic_folder
from ..core.manifest import ATTENTION_MIN_TENSORRT, DECOMPOSED, FUSED, Manifest, TensorSpec, read_manifest, \
    resolution_folders
from ..core.progress import say, step
from ..runtime.tensorrt_backend import trt_logger, trt_object
from . import timing_cache

if TYPE_CHECKING:
    import tensorrt as trt


# Export artifacts TensorRT builds (the precision table's `tensorrt`), with the export flag that writes each. The
# Q/DQ graphs (int8, fp8) build strongly typed like the others: the Q/DQ nodes say what runs in int8/fp8, no
# precision flag is set. int8cpu (MatMulInteger) is an ONNX Runtime CPU form.
BUILDABLE = {p: precisions.PRECISIONS[p].flag or "" for p in precisions.buildable()}


@dataclass(frozen=True)
class BuildOptions:
    """How to build. `batch` is (MIN, OPT, MAX) of the one profile; None leaves TensorRT's default in place."""

    precision: str = precisions.ENGINE_DEFAULT  # which export artifact: fp16, fp32, int8 / fp8 (Q/DQ); BUILDABLE
    batch: tuple[int, int, int] = (1, 8, 32)
    workspace_gb: float | None = None
    timing_cache: Path | None = None  # None: <out_dir>/timing-<trt>-<gpu>.cache, shared by every build there
    opt_level: int | None = None  # builder optimisation level 0..5 (TensorRT's default is 3)
    out_dir: Path = ENGINES_DIR
    tf32: bool = False  # allow TF32 for fp32 layers (TensorRT's default is on; off keeps fp32 parity)

    def __post_init__(self):
        if self.precision not in BUILDABLE:
            raise UsageError(f"precision '{self.precision}' is not one of {', '.join(BUILDABLE)}"
                             + _instead(self.precision))
        parse_batch(":".join(str(b) for b in self.batch))
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise UsageError(f"builder optimisation level {self.opt_level} is not in 0..5")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise UsageError(f"workspace {self.workspace_gb} GiB is not a positive size")

    def cache_path(self, key: str) -> Path:
        """The timing cache file for a build on the GPU and TensorRT version named by `key` (gpu_key)."""
        return Path(self.timing_cache) if self.timing_cache else timing_cache.keyed_path(self.out_dir, key)


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


def _instead(name: str) -> str:
    """' (int8cpu is an ONNX Runtime CPU graph; TensorRT builds the int8 Q/DQ graph)' for a precision with a
    TensorRT form in its family; '' otherwise."""
    row = precisions.PRECISIONS.get(name)
    if row is None or not row.family:
        return ""
    other = [p for p in precisions.forms(row.family, gpu=True) if p in BUILDABLE]
    if not other:
        return ""
    qdq = "Q/DQ " if precisions.PRECISIONS[other[0]].making == precisions.QDQ else ""
    return f" ({name} is an ONNX Runtime {row.device.upper()} graph; TensorRT builds the {other[0]} {qdq}graph)"


def check_attention(manifest: Manifest, tensorrt_version: str) -> None:
    """UsageError when the export's attention form (manifest.attention) needs a newer TensorRT than this one."""
    need = ATTENTION_MIN_TENSORRT.get(manifest.attention)
    have = tuple(int(p) for p in tensorrt_version.split(".")[:2] if p.isdigit())
    if need and have < need:
        raise UsageError(f"{manifest.model} at {manifest.resolution[0]}x{manifest.resolution[1]} was exported with "
                         f"{manifest.attention} attention (one ONNX Attention op per layer), which TensorRT "
                         f"{tensorrt_version} cannot parse (it needs {need[0]}.{need[1]} or newer): export again with "
                         f"--attention {DECOMPOSED}, or upgrade TensorRT")


def build(export_path: Path, options: BuildOptions) -> list[Path]:
    """Build an engine for every resolution folder under `export_path`; returns the engine files."""
    manifests = [(folder, read_manifest(folder)) for folder in resolution_folders(export_path).values()]
    for folder, manifest in manifests:
        if options.precision not in manifest.artifacts:
            raise UsageError(f"{folder} has no {options.precision} graph (it has: {', '.join(manifest.artifacts)})"
                             f": export with {BUILDABLE[options.precision]}, or build with --precision "
                             f"{precisions.REFERENCE}")
    require("tensorrt", "gpu", TRT_PURPOSE)
    return [engine_from_onnx(folder / manifest.artifacts[options.precision], manifest, options)
            for folder, manifest in manifests]


def engine_from_onnx(onnx_path: Path, manifest: Manifest, options: BuildOptions) -> Path:
    """Build `onnx_path` (an artifact of `manifest`'s export) into <out>/<model>/<H>x<W>/model.engine."""
    require("tensorrt", "gpu", TRT_PURPOSE)
    import tensorrt as trt

    check_attention(manifest, trt.__version__)
    fused = manifest.attention == FUSED  # ONNX Attention nodes: the parser gets a TRT_decomposable=1 copy
    gpu = current_gpu()
    onnx_path = Path(onnx_path)
    folder = engine_folder(options.out_dir, manifest)
    profile = profile_shapes(manifest.inputs, options.batch)
    with atomic_folder(folder) as tmp:
        start = time.perf_counter()
        with step(f"building TensorRT {trt.__version__} {options.precision} engine for {gpu.name} -> {folder}"):
            data, cache, attention = _serialize(onnx_path, profile, options, gpu_key(trt.__version__, gpu), fused)
        (tmp / ENGINE_FILE).write_bytes(data)  # straight from TensorRT's buffer, no copy
        write_engine_manifest(tmp, EngineManifest(
            tensorrt=trt.__version__, gpu=gpu, precision=options.precision,
            source={"folder": str(onnx_path.parent), "onnx": onnx_path.name, "sha256": artifact_sha256(onnx_path)},
            profile={k: {b: list(s) for b, s in v.items()} for k, v in profile.items()},
            build_seconds=round(time.perf_counter() - start, 2), engine_bytes=data.nbytes,
            options={"workspace_gb": options.workspace_gb, "opt_level": options.opt_level,
                     "timing_cache": str(cache) if cache else None},
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), tf32=options.tf32, attention=attention))
        manifest.write_to(tmp)
    say(f"  {folder / ENGINE_FILE}: {data.nbytes / 2**20:.1f} MiB")
    return folder / ENGINE_FILE


def tensorrt_graph(onnx_path: Path) -> tuple[bytes, int]:
    """(serialized copy of the graph with TRT_decomposable=1 on every ONNX Attention node, how many nodes).

    Only the graph is loaded: external weights stay where they are and the parser reads them from the export
    folder (it is given the original path). The file itself is not changed: ONNX Runtime rejects the attribute.
    """
    onnx = require("onnx", "export", "building fused-attention engines")
    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    for node in nodes:
        kept = [a for a in node.attribute if a.name != "TRT_decomposable"]
        del node.attribute[:]
        node.attribute.extend(kept + [onnx.helper.make_attribute("TRT_decomposable", 1)])
    return model.SerializeToString(), len(nodes)


def _serialize(onnx_path: Path, profile: dict, options: BuildOptions, key: str, fused: bool
               ) -> tuple[memoryview, Path | None, dict]:
    """Parse the ONNX into a strongly typed network, configure, build -> (engine bytes as a view of TensorRT's
    buffer, timing cache file, what was done with attention for engine.json)."""
    import tensorrt as trt

    builder = trt_object(trt.Builder, trt_logger(), "builder")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed_flag_needed(
        trt.__version__) else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger())
    attention: dict = {"form": DECOMPOSED}
    if fused:
        graph, count = tensorrt_graph(onnx_path)
        attention = {"form": FUSED, "attention_nodes": count, "trt_decomposable": True}
        parsed = parser.parse(graph, str(onnx_path))
        del graph
    else:
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {onnx_path}: {errors[:500]}")
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(profile):
        raise ArtifactError(f"{onnx_path} has inputs {sorted(names)}, its manifest says {sorted(profile)}: "
                            "export the model again")
    config = _config(builder, profile, options)
    cache = timing_cache.attach(config, options.cache_path(key), key)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path} (its messages above say why)")
    return memoryview(serialized), timing_cache.save(config, cache, key), attention


def _config(builder: trt.Builder, profile: dict, options: BuildOptions) -> trt.IBuilderConfig:
    """Builder config: the one batch profile, TF32 off unless asked, workspace, optimisation level, detailed
    layer info for `inspect`."""
    import tensorrt as trt

    config = builder.create_builder_config()
    trt_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        trt_profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    if config.add_optimization_profile(trt_profile) < 0:
        raise TensorRTError(f"TensorRT refused the batch profile {options.batch} ({profile}): its messages above "
                            "say why")
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    if options.opt_level is not None:
        config.builder_optimization_level = int(options.opt_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    return config
