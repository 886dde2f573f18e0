"""Answers as named tensors and back: what a served model returns, so a client rebuilds the same results.

The Triton `postprocess` stage turns each image's result (runtime/postprocess.py) into tensors with `encode`,
`stack` joins the images of one request (padding where sizes differ), and `BeitTritonClient` turns each row back
into the same dataclass with `decode` (runtime/answers.py holds each answer kind's tensors). Scores and fractions
travel as FP32 (what any KServe client expects; within 1e-7 of the in-process float64), label maps in the smallest
integer type that holds the classes (uint8 for up to 255), and classifiers add every class's probability
(`PROBABILITIES`, FP32) for Triton's classification extension (`class_count`, with the ensemble's labels.txt).
numpy only.
"""

from __future__ import annotations

import numpy as np

from ..core import tasks
from ..core.manifest import Manifest
from . import answers
from .answers import (CLASS_IDS, EMBEDDING, FRACTIONS, LABEL_MAP, LABELS, PROBABILITIES,  # noqa: F401 - the
                      SCORES, TOKENS, WireTensor)  # answer tensors' names, importable from here as before
from .postprocess import Result

IMAGE, IMAGE_SIZE = "IMAGE", "IMAGE_SIZE"  # ensemble input, size of each image
TOP_K_INPUT = "TOP_K"  # optional input: classes per image (not the answer kind tasks.TOP_K)
TOP_K = TOP_K_INPUT  # the name it had first
_PAD = {"int64": -1, "int32": -1, "uint16": 65535, "uint8": 255, "float64": 0.0, "float32": 0.0, "bytes": b""}


def wire_outputs(manifest: Manifest) -> tuple[WireTensor, ...]:
    """The answer tensors of an export's task, per image."""
    return answers.of(manifest.task).wire(manifest)


def encode(result: Result, output: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One image's result -> its answer tensors (no batch axis); with the image's raw `output`, a classifier's
    PROBABILITIES too."""
    return answers.of(result.task).encode(result, output)


def stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The answer tensors of several images -> one (N, ...) array per name, padded at the end of each axis where
    the images differ (ids -1, numbers 0, strings empty); `decode` drops the padding again."""
    out = {}
    for name in rows[0]:
        arrays = [row[name] for row in rows]
        if len(arrays) == 1:  # one image per request (the usual case): no padded copy
            out[name] = arrays[0][None]
            continue
        shape = tuple(max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim))
        kind = "bytes" if arrays[0].dtype == object else arrays[0].dtype.name
        batch = np.full((len(arrays), *shape), _PAD[kind], dtype=arrays[0].dtype)
        for k, a in enumerate(arrays):
            batch[(k, *(slice(0, n) for n in a.shape))] = a
        out[name] = batch
    return out


def decode(task_name: str, row: dict[str, np.ndarray], size: tuple[int, int]) -> Result:
    """One image's answer tensors (batch axis removed) and its (H, W) -> the result `predict` gives in process."""
    return answers.of(tasks.task(task_name)).decode(row, size, task_name)
