"""`run_batch`: one export over many inputs, one row per input, on the local engine or Ray Data.

    from beit_deploy.batch import BatchOptions, run_batch
    summary = run_batch(BatchOptions("export/beit-base-patch16-224/224x224", ("photos/",), "out/"))
    print(summary.line())          # 1234 rows, 3 errors, 4.4 images/s, in out/ (parquet)

The job: expand the inputs (inputs.py), make or resume the output folder (output.py), run the engine on the
inputs without a row yet, write its rows in parts as they come, and sum up.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core import tasks
from ..core.engine_manifest import ENGINE_MANIFEST
from ..core.errors import UsageError
from ..core.files import file_sha256
from ..core.manifest import FILENAME, read_manifest
from ..runtime.preprocess import DEFAULT_MAX_PIXELS
from . import output
from .inputs import expand, is_uri

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchOptions:
    """A batch job. export: a resolution folder, export/<model> with one resolution, an ONNX file, an engine
    folder or engine file. inputs: files, folders, globs, lists, URIs (inputs.py). out: a local folder (the
    driver writes it).

    engine "local" runs in this process; "ray" on Ray Data (`address`: a cluster, default RAY_ADDRESS or a new
    local one) with `workers` actors of `cpus_per_worker` CPUs (default: a share that leaves room for Ray's own
    tasks) and `gpus_per_worker` GPUs, each running ONNX Runtime on `threads` threads (default: its whole CPUs,
    at least one). resume: run only inputs without a row in `out`; retry_errors: also those with an error row.
    masks_dir: segmentation masks as PNG files there instead of in the table, written where rows are made (on
    Ray: by the workers, so a folder every node shares at the same path). rows_per_file: rows per part.
    quiet: no progress; verbose: Ray workers' own output shown too (their warnings and tracebacks).
    """

    export: str
    inputs: tuple[str, ...]
    out: str
    engine: str = "local"
    address: str | None = None
    resume: bool = False
    retry_errors: bool = False
    batch_size: int = 8
    workers: int = 1
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0
    threads: int | None = None
    format: str = "parquet"
    top_k: int = 5
    masks_dir: str | None = None
    precision: str | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    check_hashes: bool = True
    rows_per_file: int = 1000
    quiet: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class BatchSummary:
    """What a job did: rows written now, how many of them are errors, inputs skipped (already had a row), the
    seconds it took in all and until its first row (the engine's fixed start cost), and where the rows are."""

    rows: int
    errors: int
    skipped: int
    seconds: float
    start_seconds: float | None
    out: str
    format: str
    engine: str

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        skipped = f", {self.skipped} skipped (already had a row)" if self.skipped else ""
        return (f"{self.rows} rows, {self.errors} errors{skipped}, {self.images_per_s:.2f} images/s "
                f"({self.seconds:.1f} s), in {self.out} ({self.format})")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "images_per_s": self.images_per_s}


def run_batch(options: BatchOptions, progress: Callable[[int, int], None] | None = None) -> BatchSummary:
    """Run the job; `progress(done, total)` is called as rows arrive (the CLI's bar; tests stop a worker there)."""
    started = time.perf_counter()
    _check(options)
    export = resolve_export(options.export)
    manifest = read_manifest(export if export.is_dir() else export.parent)
    answer = tasks.task(manifest.task).answer
    out = Path(options.out).absolute()
    masks = os.path.abspath(options.masks_dir) if options.masks_dir else None
    inputs = (options.inputs,) if isinstance(options.inputs, (str, os.PathLike)) else options.inputs  # one input
    paths = expand([str(i) for i in inputs], exclude=[str(out)] + ([masks] if masks else []))
    spec = _spec(options, export, manifest, masks)
    with output.claimed(out):  # one job per folder, from its first look at OUT to its last part
        done, next_part, ran = output.prepare_folder(out, spec, options.resume, options.retry_errors)
        pending = [p for p in paths if p not in done]
        if masks:
            Path(masks).mkdir(parents=True, exist_ok=True)
        writer = output.PartWriter(out, options.format, answer, spec, next_part, options.rows_per_file, ran)
        counts = _run(options, str(export), pending, masks, writer, progress, started)
    return BatchSummary(counts["rows"], counts["errors"], len(paths) - len(pending),
                        time.perf_counter() - started, counts["first"], str(out), options.format, options.engine)


def _run(options: BatchOptions, export: str, pending: list[str], masks: str | None, writer: output.PartWriter,
         progress: Callable[[int, int], None] | None, started: float) -> dict:
    """The engine over the inputs without a row, its rows into parts: {rows, errors, first (seconds)}."""
    counts = {"rows": 0, "errors": 0, "first": None}

    def on_rows(rows: list[dict], precision: str | None) -> None:
        writer.add(rows, precision)
        counts["rows"] += len(rows)
        counts["errors"] += sum(r["error"] is not None for r in rows)
        counts["first"] = counts["first"] or time.perf_counter() - started
        if progress:
            progress(counts["rows"], len(pending))

    try:
        if pending:
            _engine(options.engine)(options, export, pending, masks, on_rows)
    finally:
        writer.close()
    return counts


def _engine(name: str):
    if name == "ray":
        from .ray_engine import run_ray

        return run_ray
    from .local import run_local

    return run_local


def _check(o: BatchOptions) -> None:
    if o.engine not in ENGINES:
        raise UsageError(f"engine '{o.engine}' is not one of {', '.join(ENGINES)}")
    if o.format not in output.FORMATS:
        raise UsageError(f"format '{o.format}' is not one of {', '.join(output.FORMATS)}")
    if not o.inputs:
        raise UsageError("give at least one input: a file, folder, glob, list of paths, or URI")
    if is_uri(o.out) or (o.masks_dir and is_uri(o.masks_dir)):
        raise UsageError(f"--out and --masks are folders, not URIs (the driver writes --out; the workers write "
                         "--masks, so on a Ray cluster it must be a folder every node shares), got "
                         f"'{o.out if is_uri(o.out) else o.masks_dir}'")
    for name, value, low in (("batch size", o.batch_size, 1), ("workers", o.workers, 1), ("top-k", o.top_k, 1),
                             ("rows per file", o.rows_per_file, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{name} must be a whole number of at least {low}, got {value!r}")
    if o.gpus_per_worker < 0 or (o.cpus_per_worker is not None and o.cpus_per_worker <= 0):
        raise UsageError("CPUs per worker must be above 0 and GPUs per worker at least 0")
    if o.engine == "local" and (o.address or o.gpus_per_worker or o.cpus_per_worker or o.workers != 1):
        raise UsageError("--address, --workers, --cpus-per-worker and --gpus-per-worker are for --engine ray")


def resolve_export(path: str) -> Path:
    """The absolute export to open: a resolution or engine folder, an ONNX or engine file, or export/<model>
    with a single resolution (its folder)."""
    from ..runtime.runner import pick_resolution

    export = Path(path).absolute()
    if not export.exists():
        raise UsageError(f"'{path}' does not exist: pass an export folder (export/<model>/<H>x<W>), its ONNX file, "
                         "or an engine folder")
    if export.is_dir() and not (export / FILENAME).is_file() and not (export / ENGINE_MANIFEST).is_file():
        return pick_resolution(export, None)
    return export


def _spec(o: BatchOptions, export: Path, manifest, masks: str | None) -> dict:
    """The export's id and the options that shape rows: `_batch.json` and every Parquet file's metadata (the
    precision, known once the runner is open, is added to each)."""
    folder = export if export.is_dir() else export.parent
    return {"format_version": 1, "model": manifest.model, "task": manifest.task,
            "resolution": list(manifest.resolution), "grid": list(manifest.grid), "export": str(export),
            "manifest_sha256": file_sha256(folder / FILENAME), "format": o.format, "top_k": o.top_k,
            "masks": masks or "table", "max_pixels": o.max_pixels or None}
