"""A chunk of inputs -> its rows, on one runner: what both engines run (the local loop and every Ray worker).

An input that cannot be read, decoded or answered becomes an error row, never a lost chunk: the runner's
`predict_each` turns the errors it knows into error rows, and should anything else escape it (a decoder's
surprise on a crafted file), the chunk is answered again one input at a time, each caught on its own. What is
the machine's fault and not an input's (out of memory, a full disk, a failing ONNX Runtime session) ends the job
instead: as rows it would turn every input after it into an error row and the job would still exit 0.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import EnvironmentProblem, describe, environment_error
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
    for k, prediction in zip(where, _predictions(runner, sources, [paths[k] for k in where], top_k)):
        rows[k] = _row(answer, paths[k], prediction, masks_dir)
    return rows  # type: ignore[return-value]


def _answer_kind(runner) -> str:
    from ..core import tasks

    return tasks.task(runner.task).answer


def _predictions(runner, sources: list, paths: list[str], top_k: int) -> list[Prediction]:
    """runner.predict_each over the chunk; if it raises, each input alone, so one bad input costs one row."""
    try:
        return list(runner.predict_each(sources, top_k))
    except Exception as exc:  # noqa: BLE001 - unless the machine failed, find the input that caused it
        _raise_if_machine(exc)
        return [_alone(runner, source, path, top_k) for source, path in zip(sources, paths)]


def _alone(runner, source, path: str, top_k: int) -> Prediction:
    try:
        return next(iter(runner.predict_each([source], top_k)))
    except Exception as exc:  # noqa: BLE001 - this input's error row
        _raise_if_machine(exc)
        return Prediction(path, error=exc)  # type: ignore[arg-type]


def _raise_if_machine(exc: Exception) -> None:
    """Raise what no input causes, so the job stops with it: out of memory, our EnvironmentProblem, an OSError of
    the environment (a full disk, a permission), a failure of the ONNX Runtime session itself."""
    if isinstance(exc, (MemoryError, EnvironmentProblem)):
        raise exc
    problem = environment_error(exc, "answering a batch")
    if problem is not None:
        raise problem from exc
    # ORT's own types (Fail, RuntimeException...) come from a run on a well-formed batch: the session's fault
    if type(exc).__module__.startswith("onnxruntime"):
        raise EnvironmentProblem(f"ONNX Runtime failed running the model ({type(exc).__name__}: {describe(exc)}): "
                                 "check the device and its memory (or lower --batch-size), then --resume") from exc


def _row(answer: str, path: str, prediction: Prediction, masks_dir: str | None) -> dict:
    try:
        return row_table.row_of(answer, path, prediction, masks_dir)
    except Exception as exc:  # that row's error, unless the machine is at fault (a full disk)
        problem = environment_error(exc, f"writing the mask of '{path}'")
        if problem is not None:
            raise problem from exc
        return row_table.error_row(answer, path, exc)
