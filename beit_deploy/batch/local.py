"""The local engine: one runner in this process, the inputs a batch at a time (the runner's own batching)."""

from __future__ import annotations

from .answer import answer_rows


def open_runner(export: str, options, threads: int | None = None):
    """The runner both engines hold: the export's backend chosen here (per machine, per Ray worker)."""
    from ..runtime.runner import BeitRunner

    return BeitRunner(export, precision=options.precision, batch_size=options.batch_size,
                         check_hashes=options.check_hashes, max_pixels=options.max_pixels, threads=threads)


def run_local(options, export: str, paths: list[str], masks_dir: str | None, on_rows) -> None:
    """Rows of `paths`, in order, to `on_rows(rows, precision)` a batch at a time."""
    filesystems: dict = {}
    with open_runner(export, options, options.threads) as runner:
        for start in range(0, len(paths), options.batch_size):
            chunk = paths[start:start + options.batch_size]
            on_rows(answer_rows(runner, chunk, options.top_k, masks_dir, filesystems), runner.precision)
