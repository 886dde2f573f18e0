"""`beit-deploy bench`: eager and SDPA transformers against our exported graphs, interleaved, per batch size.

Every backend runs in its own worker process (`worker.py`), so its peak memory is its own; the parent drives
all workers round-robin, one timed iteration at a time, so that load from anything else on the machine falls
on every backend alike. Artifacts are exported once into a cache folder and reused. Backends that cannot run
here are reported as skipped, with the reason. Settings, results and their presentation are in `report`, the
worker processes in `worker`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..core import backends as table, machine as core_machine, precisions, tasks
from ..core.errors import BeitDeployError, UsageError, describe
from ..core.progress import say, step
from . import report as bench_report
from .cache import cached_engine, cached_export, engine_cache_dir, plain_export  # noqa: F401 - bench.run's API
from .report import BACKENDS, BASELINE, E2E_OURS, E2E_TRANSFORMERS, ORT_ARTIFACTS, ORT_BIAS, ORT_FUSED, ORT_PLAIN, \
    TORCH_BACKENDS, BenchReport, BenchSettings, Skipped
from .worker import E2E_RUNNER, E2E_TRANSFORMERS as E2E_TRANSFORMERS_KIND

DEVICES = ("cpu", "cuda")  # where the torch (and TensorRT) backends run: --device


def run_bench(settings: BenchSettings) -> BenchReport:
    """Measure every backend at every batch size (ascending), plus the end-to-end row. With `settings.export`
    (a resolution folder) its graphs are measured, hash-checked, and eager is the model it was exported from."""
    from ..exporter.loading import native_resolution, resolve, task_of
    from ..exporter.pipeline import check_resolution

    settings = for_export(settings) if settings.export else settings
    _check(settings)
    load_before = _load_average()
    resolved = resolve(settings.spec)
    resolution = settings.resolution or native_resolution(resolved.config)
    check_resolution(resolution, resolved.config.patch_size)
    task = task_of(resolved.config)
    inputs = [(s.name, list(s.shape), s.dtype) for s in tasks.input_specs(task, resolved.config, resolution)]
    backends = (BASELINE,) + tuple(b for b in settings.backends if b != BASELINE)
    jobs, skipped, folder = _jobs(settings, backends, resolution, task, inputs, resolved)
    e2e_jobs, e2e_skipped, photos = _end_to_end_jobs(settings, folder, inputs) if settings.end_to_end else ({}, [], 0)
    results, e2e, more = _measure(jobs, e2e_jobs, photos, settings)
    info = {"resolution": list(resolution), "task": task, "backends": list(backends),
            "export": str(folder) if folder else None, "load_average_1min": [load_before, _load_average()]}
    return BenchReport(bench_report.machine(settings.device), bench_report.settings_dict(settings, info),
                       tuple(bench_report.compare(results)), tuple(e2e), tuple(skipped + more + e2e_skipped))


def for_export(settings: BenchSettings) -> BenchSettings:
    """The settings of a bench on an export folder: the model it was exported from (its recorded source, seed
    and revision), its resolution, and by default eager plus every ONNX Runtime backend the folder has a graph
    for (a `backends` of None)."""
    from ..core.manifest import read_manifest
    from ..exporter.loading import ModelSpec

    manifest = read_manifest(settings.export)
    random = manifest.weights.get("kind") == "random"
    revision = manifest.source.get("commit") or manifest.source.get("revision")
    spec = ModelSpec(manifest.source["model"], random, manifest.weights.get("seed") or 0,
                     None if random and manifest.source.get("kind") != "hub" else revision)
    backends = settings.backends
    if backends is None:
        backends = (BASELINE, *(b for b, p in ORT_ARTIFACTS.items() if p in manifest.artifacts))
        backends += (table.TENSORRT.name,) if settings.device == "cuda" else ()
    if settings.resolution and tuple(settings.resolution) != tuple(manifest.resolution):
        raise UsageError(f"{settings.export} is a {manifest.resolution[0]}x{manifest.resolution[1]} export: drop "
                         "--resolution, or pass the folder of the resolution you want")
    return dataclasses.replace(settings, spec=spec, resolution=tuple(manifest.resolution), backends=backends)



def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): other work on the machine, said beside the figures."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


def _check(settings: BenchSettings) -> None:
    unknown = [b for b in settings.backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend(s) {', '.join(unknown)}: choose from {', '.join(BACKENDS)}")
    if not settings.batch_sizes or min(settings.batch_sizes) < 1:
        raise UsageError("batch sizes must be positive integers, e.g. --batch-size 1,4,16")
    if settings.iters < 1 or settings.warmup < 0:
        raise UsageError("--iters must be at least 1 and --warmup at least 0")
    floats = precisions.names(making=precisions.FLOAT)
    if settings.device not in DEVICES or settings.dtype not in floats:
        raise UsageError(f"--device is {' or '.join(DEVICES)}, --precision {' or '.join(floats)}")
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda needs a CUDA GPU, and torch sees none: use --device cpu")


def _jobs(settings, backends, resolution, task, inputs, resolved):
    """Worker jobs for the backends that can run here; (backend, reason) for the others; the export folder."""
    base = {"device": settings.device, "dtype": settings.dtype, "inputs": inputs}
    skipped, folder = [], None
    on_export = (set(ORT_ARTIFACTS) | {table.TENSORRT.name}) & set(backends)
    wanted = {ORT_ARTIFACTS[b] for b in backends if b in ORT_ARTIFACTS}
    if table.TENSORRT.name in backends:
        wanted.add(settings.dtype)
    if settings.export:
        folder = Path(settings.export)
    elif on_export or settings.end_to_end:
        try:
            folder = cached_export(settings, resolution, resolved, wanted)
        except BeitDeployError as exc:
            skipped += [Skipped(b, f"export failed: {exc}") for b in sorted(on_export)]
    jobs = {}
    for name in backends:
        if name in on_export and folder is None:
            continue
        made = _JOBS[name](_Bench(settings, base, resolution, resolved, task, folder), name)
        if isinstance(made, Skipped):
            skipped.append(made)
        else:
            jobs[name] = made
    return jobs, skipped, folder


@dataclass(frozen=True)
class _Bench:
    """What a job maker needs: the settings, the jobs' common keys, the model and the export folder."""

    settings: BenchSettings
    base: dict
    resolution: tuple[int, int]
    resolved: object  # exporter.loading.Resolved
    task: str
    folder: Path | None


def _model_job(b: _Bench, name: str) -> dict:
    """transformers itself, with the backend's attention implementation."""
    return b.base | {"kind": table.MODEL, "attention": table.backend(name).attention, "spec": b.settings.spec.to_dict()}


def _graph_job(b: _Bench, name: str) -> dict | Skipped:
    """ONNX Runtime on the export's graph of the row's precision, checked against its manifest first (size and
    sha256: a truncated or swapped graph is an error, not a measurement); skipped when the export has none."""
    from ..core.manifest import check_artifact, read_manifest

    manifest, precision = read_manifest(b.folder), precisions.PRECISIONS[ORT_ARTIFACTS[name]]
    if precision.name not in manifest.artifacts:
        return Skipped(name, f"{b.folder} has no {precision.name} graph: export it again with {precision.flag} (it "
                             "adds to the folder)")
    path = check_artifact(b.folder, manifest, precision.name, hashes=True)
    return b.base | {"kind": table.ONNX, "path": str(path)}


def _variant_job(b: _Bench, name: str, what: str, **form) -> dict | Skipped:
    """ONNX Runtime on the fp32 graph of another export of the same model (`form`: cached_export's fused or
    bias_mode); skipped, saying so, when that export fails."""
    try:
        folder = cached_export(b.settings, b.resolution, b.resolved, **form)
    except BeitDeployError as exc:
        return Skipped(name, f"{what} export failed: {exc}")
    return b.base | {"kind": table.ONNX, "path": str(folder / precisions.PRECISIONS[precisions.REFERENCE].file)}


def _fused_job(b: _Bench, name: str) -> dict | Skipped:
    return _variant_job(b, name, "fused", fused=True)


def _bias_job(b: _Bench, name: str) -> dict | Skipped:
    """The fp32 graph exported with the row's bias storage (ORT_BIAS), whatever the size chose."""
    return _variant_job(b, name, ORT_BIAS[name], bias_mode=ORT_BIAS[name])


def _plain_job(b: _Bench, name: str) -> dict | Skipped:
    try:
        return b.base | {"kind": table.ONNX, "path": str(plain_export(b.settings, b.resolution, b.task))}
    except Exception as exc:  # noqa: BLE001 - the plain exporter fails in many ways on some heads
        return Skipped(name, f"plain torch.onnx.export failed: {describe(exc)}")


def _engine_job(b: _Bench, name: str) -> dict | Skipped:
    try:
        engine = cached_engine(b.settings, b.folder)
    except BeitDeployError as exc:
        return Skipped(name, str(exc))
    return b.base | {"kind": table.ENGINE, "path": str(engine), "folder": str(b.folder)}


def _autocast_job(b: _Bench, name: str) -> dict | Skipped:
    """transformers itself under torch's CPU autocast to the backend's dtype (bf16), where the CPU has it natively."""
    reason = autocast_refusal(name, b.settings.device)
    return Skipped(name, reason) if reason else _model_job(b, name) | {"autocast": table.backend(name).autocast}


def autocast_refusal(name: str, device: str) -> str | None:
    """Why an autocast backend (eager-bf16) cannot run here (None: it can): a GPU run, or a CPU without native
    bf16 (AMX or AVX-512 BF16), where torch would emulate it, slower than fp32."""
    if device != table.backend(name).device:
        return f"{name} is a CPU backend (on a GPU, export with --fp16 and build a TensorRT engine)"
    if core_machine.cpu_bf16() is None:
        return (f"this CPU ({core_machine.cpu_model()}) has neither AMX nor AVX-512 BF16 (/proc/cpuinfo flags "
                f"{' or '.join(core_machine.BF16_FLAGS)}): torch would emulate bf16, slower than fp32")
    return None


_JOBS = {**{n: _model_job if table.backend(n).autocast is None else _autocast_job for n in TORCH_BACKENDS},
         **{n: _graph_job for n in ORT_ARTIFACTS}, ORT_FUSED: _fused_job,
         **{n: _bias_job for n in ORT_BIAS}, ORT_PLAIN: _plain_job, table.TENSORRT.name: _engine_job}


def _measure(jobs: dict, e2e_jobs: dict, photos: int, settings: BenchSettings):
    """Interleaved timings of every job at every batch size (ascending), then the end-to-end jobs on the
    photos -> (measurements, end-to-end measurements, skipped). All workers start (load) at once."""
    from .report import summarise
    from .worker import Workers

    rounds = [(batch, [n for n in jobs]) for batch in sorted(set(settings.batch_sizes))]
    rounds += [(photos, list(e2e_jobs))] if e2e_jobs else []
    results, e2e = [], []
    say(f"starting {len(jobs) + len(e2e_jobs)} worker processes ({', '.join(jobs | e2e_jobs)})")
    with Workers(jobs | e2e_jobs) as workers:
        for batch, names in rounds:
            what = f"{batch} photos end to end" if names[0] in e2e_jobs else f"batch {batch}"
            calls = len(names) * (settings.iters + (1 if settings.warmup else 0))
            with step(f"{what}: {settings.warmup} warm-up + {settings.iters} timed iteration(s) each, interleaved",
                      total=calls, unit="run") as running:
                measured = workers.measure(batch, settings.iters, settings.warmup, names, running.advance)
                for name, (times, peak) in measured.items():
                    row = summarise(name, batch, times, peak)
                    (e2e if name in e2e_jobs else results).append(row)
                    say(f"  {name:18} {row.seconds_per_iter:9.4f} s/iter {row.images_per_second:9.1f} img/s")
        skipped = [Skipped(name, reason, batch) for name, batch, reason in workers.failed]
    return results, e2e, skipped


def _end_to_end_jobs(settings: BenchSettings, folder: Path | None, inputs) -> tuple[dict, list, int]:
    """predict() on the sample photos: our runner on the exported graph vs transformers' processor + model."""
    from ..exporter.parity import NO_PHOTOS, sample_images

    photos = [str(p) for p in sample_images(settings.images)]
    if not photos:
        return {}, [Skipped("end-to-end", NO_PHOTOS)], 0
    base = {"device": settings.device, "dtype": precisions.REFERENCE, "inputs": inputs, "images": photos}
    jobs, skipped = {E2E_TRANSFORMERS: base | {"kind": E2E_TRANSFORMERS_KIND, "spec": settings.spec.to_dict()}}, []
    if folder is None:
        skipped.append(Skipped(E2E_OURS, "no export to run (the export failed)"))
    else:
        jobs = {E2E_OURS: base | {"kind": E2E_RUNNER, "folder": str(folder)}} | jobs
    return jobs, skipped, len(photos)
