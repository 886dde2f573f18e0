"""A chunk of inputs -> its rows, on one runner: what both engines run (the local loop and every Ray worker).

An input that cannot be read, decoded or answered becomes an error row, never a lost chunk: the runner's
`predict_each` turns the errors it knows into error rows, and should anything else escape it (a decoder's
surprise on a crafted file), the chunk is answered again one input at a time, each caught on its own.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import environment_error
from ..runtime.predictor import Prediction
from . import rows as row_table
from .inputs import is_uri, read_uri


def answer_rows(runner, paths: list[str], top_k: int, masks_dir: str | None, filesystems: dict | None = None
                ) -> list[dict]:
    """One row per path, in order. Local paths are read by the runner itself (its checks on what a file is),
    URIs through pyarrow's filesystems (`filesystems` caches one per scheme and host)."""
    answer = _answer_kind(runner)
    rows: list[dict | None] = [None] * len(paths)
    sources, where = [], []
    for k, path in enumerate(paths):
        try:
            sources.append(read_uri(path, filesystems) if is_uri(path) else Path(path))
            where.append(k)
        except Exception as exc:  # noqa: BLE001 - an unreadable input is its own error row
            rows[k] = row_table.error_row(answer, path, exc)
    for k, prediction in zip(where, _predictions(runner, sources, top_k)):
        rows[k] = _row(answer, paths[k], prediction, masks_dir)
    return rows  # type: ignore[return-value]


def _answer_kind(runner) -> str:
    from ..core import tasks

    return tasks.task(runner.task).answer


def _predictions(runner, sources: list, top_k: int) -> list[Prediction]:
    """runner.predict_each over the chunk; if it raises, each input alone, so one bad input costs one row."""
    try:
        return list(runner.predict_each(sources, top_k))
    except Exception:  # noqa: BLE001 - whatever it was, find the input that caused it
        return [_alone(runner, source, top_k) for source in sources]


def _alone(runner, source, top_k: int) -> Prediction:
    try:
        return next(iter(runner.predict_each([source], top_k)))
    except Exception as exc:  # noqa: BLE001 - this input's error row
        return Prediction(str(source), error=exc)  # type: ignore[arg-type]


def _row(answer: str, path: str, prediction: Prediction, masks_dir: str | None) -> dict:
    try:
        return row_table.row_of(answer, path, prediction, masks_dir)
    except Exception as exc:  # that row's error, unless the machine is at fault (a full disk)
        problem = environment_error(exc, f"writing the mask of '{path}'")
        if problem is not None:
            raise problem from exc
        return row_table.error_row(answer, path, exc)
