"""The benchmark's caches: exports of the model (kept per source, weights and package versions), the plain
torch.onnx.export graph, and TensorRT engines. Nothing cached is measured unchecked: an export's graphs must
match its manifest's sizes and sha256, the plain graph its recorded sha256, an engine its engine.json (graph
sha256, TensorRT version, GPU); a stale, truncated or changed entry is rebuilt, saying so."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..core import precisions, tasks
from ..core.errors import BeitDeployError, UsageError
from ..core.progress import say, step
from .report import BenchSettings


def cached_engine(settings: BenchSettings, folder: Path) -> Path:
    """A TensorRT engine of the export (precision --precision, batch profile up to the largest batch), built once
    and reused while its engine.json names this ONNX graph, this TensorRT version and this GPU: the folder is
    keyed on all three (`engine_cache_dir`), and engine.json is checked again before reuse."""
    from ..core.engine_manifest import current_gpu, engine_folder, read_engine_manifest, unavailable_reason
    from ..core.files import artifact_sha256
    from ..core.manifest import read_manifest
    from ..trt.build import BuildOptions, engine_from_onnx

    reason = "TensorRT needs a GPU: run with --device cuda" if settings.device != "cuda" else unavailable_reason()
    if reason:
        raise UsageError(reason)
    import tensorrt

    manifest = read_manifest(folder)
    onnx = folder / manifest.artifacts[settings.dtype]
    sha, gpu, top = artifact_sha256(onnx), current_gpu(), max(settings.batch_sizes)
    out = engine_cache_dir(_cache_folder(settings), settings.dtype, top, sha, tensorrt.__version__, gpu)
    engine = engine_folder(out, manifest) / "model.engine"
    if engine.is_file():
        info = read_engine_manifest(engine.parent)
        if (info.source.get("sha256"), info.tensorrt, info.gpu) == (sha, tensorrt.__version__, gpu):
            return engine
    options = BuildOptions(precision=settings.dtype, batch=(1, min(8, top), top), out_dir=out)
    return engine_from_onnx(onnx, manifest, options)


def engine_cache_dir(cache: Path, dtype: str, top_batch: int, onnx_sha256: str, trt_version: str, gpu) -> Path:
    """<cache>/engines-<dtype>-b<top>-<onnx sha256[:16]>-<gpu_key>: one folder per graph, TensorRT and GPU."""
    from ..core.engine_manifest import gpu_key

    return Path(cache) / f"engines-{dtype}-b{top_batch}-{onnx_sha256[:16]}-{gpu_key(trt_version, gpu)}"


def _cache_folder(settings: BenchSettings) -> Path:
    """One cache folder per model source and weights, so a re-run reuses its exports."""
    from ..core.machine import versions

    key = {"spec": settings.spec.to_dict(), "versions": versions()}
    path = Path(settings.spec.model).expanduser()
    if path.is_dir():
        key["files"] = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(settings.cache_dir) / f"{Path(settings.spec.model).name}-{digest}"


def cached_export(settings: BenchSettings, resolution: tuple[int, int], resolved, wanted: set[str] = frozenset(),
                  fused: bool = False, bias_mode: str | None = None) -> Path:
    """The export folder of the model at `resolution` with the graphs of the `wanted` precisions besides fp32
    (fp16, int8, int8cpu), with one ONNX Attention op per layer if `fused`, the bias stored as `bias_mode` if
    given (else as the export chooses by size), exported if not cached. The Q/DQ graph is calibrated on the bench's
    photos. `resolved`: the model's exporter.loading.Resolved, worked out once by run_bench."""
    from ..exporter.bake import DECOMPOSED, FUSED
    from ..exporter.pipeline import export, export_options

    out = _cache_folder(settings) / ("fused" if fused else "") / (f"bias-{bias_mode}" if bias_mode else "")
    name = f"{resolution[0]}x{resolution[1]}"
    for manifest in sorted(out.glob(f"*/{name}/manifest.json")):
        if _cache_usable(manifest.parent, {precisions.REFERENCE, *wanted}):
            say(f"using the cached export {manifest.parent} (sha256 checked)")
            return manifest.parent
    options = export_options(wanted, resolutions=(resolution,), out_dir=out, images=settings.images,
                             attention=FUSED if fused else DECOMPOSED, calibration=settings.images, replace=True,
                             bias_mode=bias_mode)
    return export(settings.spec, options, resolved)[0].folder


def _cache_usable(folder: Path, wanted: set[str]) -> bool:
    """True when a cached export has every `wanted` graph and each matches its manifest (size and sha256);
    otherwise says why it is rebuilt (a stale, truncated or changed cache is never measured)."""
    from ..core.manifest import check_artifact, read_manifest

    try:
        manifest = read_manifest(folder)
        if not wanted <= set(manifest.artifacts):
            return False
        for precision in sorted(wanted):
            check_artifact(folder, manifest, precision, hashes=True)
        return True
    except BeitDeployError as exc:
        say(f"the cached export {folder} cannot be used ({exc}); exporting it again")
        return False


def plain_export(settings: BenchSettings, resolution: tuple[int, int], task: str) -> Path:
    """The unmodified transformers model through torch.onnx.export (TorchScript), dynamic batch: the
    generic export our baked graph is compared with. Cached beside our export."""
    import tempfile
    import warnings

    import torch

    from ..exporter.loading import load_model
    from ..exporter.onnx_graph import OPSET

    from ..core.files import file_sha256

    path = _cache_folder(settings) / f"plain-{resolution[0]}x{resolution[1]}.onnx"
    recorded = path.with_name(path.name + ".sha256")
    if path.is_file() and recorded.is_file() and recorded.read_text().strip() == file_sha256(path):
        return path
    if path.is_file():
        say(f"the cached plain export {path} does not match its recorded sha256; exporting it again")
    path.parent.mkdir(parents=True, exist_ok=True)
    model, names = load_model(settings.spec).model, tasks.task(task).outputs
    wrapped = _Outputs(model, names).eval()
    example = torch.randn(2, model.config.num_channels, *resolution)
    axes = {"pixel_values": {0: "batch"}} | {n: {0: "batch"} for n in names}
    with step("plain torch.onnx.export of the unmodified model"), warnings.catch_warnings(), \
            tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        warnings.simplefilter("ignore")
        partial = Path(tmp) / path.name
        torch.onnx.export(wrapped, (example,), str(partial), dynamo=False, input_names=["pixel_values"],
                          output_names=list(names), dynamic_axes=axes, opset_version=OPSET)
        (Path(tmp) / recorded.name).write_text(file_sha256(partial) + "\n")
        os.replace(partial, path)
        os.replace(Path(tmp) / recorded.name, recorded)
    return path


def _Outputs(model, names):
    """Wrap a transformers model so it returns a tuple of the named outputs (what the exporter needs)."""
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pixel_values):
            out = self.m(pixel_values)
            return tuple(out[n] for n in names)
    return Outputs()
