"""`batch`: an export over a data set, one row per input, in process or on Ray Data (beit_deploy.batch)."""

from __future__ import annotations

import sys
import time

import click

from ..runtime.preprocess import DEFAULT_MAX_PIXELS
from .common import friendly, precision_choice


@click.command()
@click.argument("export", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder of results: part-NNNNN.parquet files (one table) and _batch.json.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: in this process. ray: Ray Data actors (pip install 'beit-deploy[batch]').")
@click.option("--address", default=None, help="With --engine ray: the cluster (ray://host:10001, host:6379); "
              "default RAY_ADDRESS, else a new local cluster.")
@click.option("--resume", is_flag=True, help="Go on with OUT: run only inputs without a row there.")
@click.option("--retry-errors", is_flag=True, help="With --resume: run inputs with an error row again too.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per model call.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --engine ray: actors, each holding one model.")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --engine ray: CPUs per actor (fractions are fine). Default: at most 1, leaving room for "
                   "Ray's own tasks.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="With --engine ray: GPUs per actor; refused at once when the cluster has too few.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime threads per model. Default: ONNX Runtime's own (local), the actor's CPUs (ray).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv"]), default="parquet",
              show_default=True, help="Rows as Parquet (needs pyarrow: the batch extra), JSON lines or CSV.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes per image.")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False), default=None,
              help="Segmentation: write masks as PNG files here (column mask_file) instead of in the table.")
@click.option("--precision", type=precision_choice(), default=None,
              help="ONNX graph to run (default as `predict`: fp16 on a GPU provider if exported, else fp32).")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Images with more pixels are error rows (checked from the header); 0: no limit of ours.")
@click.option("--no-hash-check", is_flag=True, help="Check the graph's size but not its sha256 when opening.")
@click.option("--rows-per-file", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows per part file; a stopped job loses at most this many rows of work.")
@friendly  # -q: no progress, only the closing line; -v: also the start cost and what Ray workers print
def batch(export, inputs, out, engine, address, resume, retry_errors, batch_size, workers, cpus_per_worker,
          gpus_per_worker, threads, fmt, top_k, masks_dir, precision, max_pixels, no_hash_check, rows_per_file,
          quiet, verbose):
    """Run EXPORT (a resolution or engine folder) on every INPUT (files, folders recursively, globs, .txt or
    .parquet lists of paths or URIs, s3://... URIs): one row per input in OUT, errors as rows."""
    from ..batch import BatchOptions, run_batch

    options = BatchOptions(export, tuple(inputs), out, engine=engine, address=address, resume=resume,
                           retry_errors=retry_errors, batch_size=batch_size, workers=workers,
                           cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, threads=threads,
                           format=fmt, top_k=top_k, masks_dir=masks_dir, precision=precision, max_pixels=max_pixels,
                           check_hashes=not no_hash_check, rows_per_file=rows_per_file, quiet=quiet,
                           verbose=verbose)
    bar = None if quiet or engine == "ray" else Progress()  # Ray Data shows its own
    try:
        summary = run_batch(options, bar)
    finally:
        if bar:
            bar.end()
    click.echo(summary.line())
    if verbose and summary.start_seconds is not None:
        click.echo(f"first row after {summary.start_seconds:.1f} s (start cost: opening the model"
                   + (", Ray and its workers)" if engine == "ray" else ")"), err=True)


class Progress:
    """A bar redrawn in place on a terminal; elsewhere (logs, CI) a line every 10 s."""

    def __init__(self, every: float = 10.0):
        self.tty, self.every = sys.stderr.isatty(), every
        self.start = self.last = time.perf_counter()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if not self.tty and now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / (now - self.start) if now > self.start else 0.0
        filled = int(30 * done / total) if total else 30
        text = f"[{'#' * filled}{' ' * (30 - filled)}] {done}/{total} images, {rate:.1f}/s"
        click.echo(f"\r{text}" if self.tty else text, err=True, nl=not self.tty)
        self.drawn = self.tty

    def end(self) -> None:
        if self.drawn:
            click.echo("", err=True)
