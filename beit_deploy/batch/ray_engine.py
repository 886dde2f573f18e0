"""The Ray engine: the same rows as the local one, from a pool of Ray Data actors that each hold one runner.

    batches of paths (from_items, a block each) -> map_batches(BatchWorker, ActorPoolStrategy(size=workers))
        -> iter_batches on the driver -> the job's part writer

The driver cuts the inputs into the same batches as the local engine, and each worker answers one batch per
runner call, so both engines give the same rows to the last bit (a batch's composition can move ONNX Runtime's
results in the last float bits).

Why this shape (measured, docs/REFERENCE section 8): each worker reads its inputs itself, so an unreadable file
is one error row and not a failed read task, and the runner decodes the original bytes (EXIF honoured). Actors
take a fraction of a CPU by default and run ONNX Runtime on their whole CPUs (at least one thread): two actors
of one CPU each on a 2-core machine leave nothing for Ray's own tasks and wait forever. A worker that dies is
restarted by Ray and its batch run again (Ray Data restarts actors and retries their tasks by default); the
driver writes a batch's rows only once it arrives whole, so every input still gets exactly one row. The driver
keeps the rows in input order (preserve_order) so both engines write the same parts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket

from ..core import errors
from ..core.errors import BeitDeployError, EnvironmentProblem, MissingDependencyError, UsageError, describe, \
    require
from .answer import answer_rows

MAX_BLOCKS = 2000  # Ray's tasks per job stay few; a block then holds several batches
PRECISION_COLUMN = "_precision"  # which graph a worker ran (workers on different GPUs may differ); not written


class BatchWorker:
    """One Ray actor: a runner opened once, then a batch of paths -> a table of rows (the task's fixed schema,
    so an all-error batch is a table too)."""

    def __init__(self, export: str, options, masks_dir: str | None, threads: int):
        from .local import open_runner

        if not os.path.exists(export):
            raise UsageError(f"the export '{export}' is not on Ray node {socket.gethostname()}: every node must "
                             "read it at the same path (a shared file system, or copy it to each node)")
        if masks_dir and not os.path.isdir(masks_dir):  # workers write the mask files; the driver made the folder
            raise UsageError(f"the masks folder '{masks_dir}' is not on Ray node {socket.gethostname()}: workers "
                             "write the mask files, so --masks must be a folder every node sees at the same path "
                             "(a shared file system)")
        self.runner = open_runner(export, options, threads)
        self.options, self.masks_dir, self.filesystems = options, masks_dir, {}

    def __call__(self, batch: dict):
        import pyarrow as pa

        from ..core import tasks
        from .rows import schema

        rows = [row for chunk in batch["paths"] for row in answer_rows(
            self.runner, [str(p) for p in chunk], self.options.top_k, self.masks_dir, self.filesystems)]
        table = pa.Table.from_pylist(rows, schema=schema(tasks.task(self.runner.task).answer))
        return table.append_column(PRECISION_COLUMN, pa.array([self.runner.precision] * len(rows), pa.string()))


def run_ray(options, export: str, paths: list[str], masks_dir: str | None, on_rows) -> None:
    """Rows of `paths` from a Ray Data actor pool, in input order, to `on_rows(rows, precision)` per batch."""
    ray = require("ray", "batch", "the Ray engine (--engine ray)")
    with _connected(ray, options) as resources, _data_context(ray, options.quiet):  # a dataset keeps the context
        cpus, threads = worker_share(options, resources)                             # it was made in
        chunks = [{"paths": paths[i:i + options.batch_size]} for i in range(0, len(paths), options.batch_size)]
        dataset = ray.data.from_items(chunks, override_num_blocks=min(len(chunks), MAX_BLOCKS))
        dataset = dataset.map_batches(
            BatchWorker, fn_constructor_args=(export, options, masks_dir, threads), batch_format="numpy",
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=cpus, num_gpus=options.gpus_per_worker or None)
        try:
            for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                precision = table.column(PRECISION_COLUMN)[0].as_py() if table.num_rows else None
                on_rows(table.drop_columns([PRECISION_COLUMN]).to_pylist(), precision)
        except BeitDeployError:
            raise
        except Exception as exc:  # Ray wraps a worker's error in its own types
            raise _unwrapped(exc) from exc


def worker_share(options, resources: dict) -> tuple[float, int]:
    """(CPUs per actor, ONNX Runtime threads per actor). Default CPUs: at most one, and never so much that the
    actors take every CPU of the cluster (Ray's read and scheduling tasks need some); threads: the whole CPUs
    an actor has, at least one. UsageError when the cluster has fewer GPUs than the workers ask for together."""
    total_cpus = resources.get("CPU", 0)
    gpus = options.gpus_per_worker
    if gpus and resources.get("GPU", 0) < gpus * options.workers:
        raise UsageError(f"{options.workers} worker(s) x {gpus:g} GPU(s) asked, but the Ray cluster has "
                         f"{resources.get('GPU', 0):g} GPU(s): Ray would wait for them forever. Start GPU nodes "
                         "(or lower --workers / --gpus-per-worker), or drop --gpus-per-worker to run on CPUs")
    cpus = options.cpus_per_worker
    if cpus is None:
        cpus = max(0.01, math.floor(min(1.0, total_cpus / (options.workers + 1)) * 100) / 100)
    if cpus * options.workers > total_cpus:
        raise UsageError(f"{options.workers} worker(s) x {cpus:g} CPU(s) asked, but the Ray cluster has "
                         f"{total_cpus:g} CPU(s): lower --workers or --cpus-per-worker (fractions are fine)")
    return cpus, options.threads or max(1, int(cpus))


@contextlib.contextmanager
def _connected(ray, options):
    """Ray as the caller left it (already initialised: used as is), or connected now and shut down after:
    `address` or RAY_ADDRESS names a cluster, else a local one starts. Yields the cluster's resources."""
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    new_local = not options.address and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=options.address, log_to_driver=options.verbose,
                 logging_level=logging.ERROR if options.quiet else logging.WARNING,
                 **({"include_dashboard": False} if new_local else {}))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
        raise EnvironmentProblem(f"cannot start or reach Ray ({where}): {describe(exc)}. Check the address (ray "
                                 "status on the head node), and RAY_AUTH_TOKEN if the cluster uses token auth") from exc
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _data_context(ray, quiet: bool):
    """Ray Data's settings for this job (rows in input order; no bars with quiet), put back after."""
    context = ray.data.DataContext.get_current()
    before = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True
    context.enable_progress_bars = not quiet and before[1]
    # a worker's failure ends the job with our one-line error, not with Ray's stack trace as well
    loggers = [logging.getLogger("ray.data.exceptions")] + ([logging.getLogger("ray.data")] if quiet else [])
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = before
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _unwrapped(exc: BaseException) -> BeitDeployError:
    """Our own error raised in a worker, or Ray's failure in one line. A task's error comes back as its `cause`;
    an actor that failed to start (an export a worker cannot open) only as text ending in our error's line."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BeitDeployError):
            return seen
        found = _OUR_ERROR.findall(str(seen))
        if found:
            name, message = found[-1]
            kind = getattr(errors, name, None)
            if isinstance(kind, type) and issubclass(kind, BeitDeployError):
                kind = EnvironmentProblem if kind is MissingDependencyError else kind  # (package, extra, why)
                return kind(f"on a Ray worker: {message}")
        seen = getattr(seen, "cause", None) or seen.__cause__
    return EnvironmentProblem(f"the Ray job failed: {type(exc).__name__}: {describe(exc, 400)}")


_OUR_ERROR = re.compile(r"beit_deploy\.core\.errors\.(\w+): ([^\n]+)")
