"""Answers as named tensors and back: what a served model returns, so a client rebuilds the same results.

The Triton `postprocess` stage turns each image's result (runtime/postprocess.py) into tensors with `encode`,
`stack` joins the images of one request (padding where sizes differ), and `BeitTritonClient` turns each row back
into the same dataclass with `decode`. Floats that `predict` reports as Python floats (scores, fractions) travel
as float64, so a served answer equals the in-process one bit for bit when the logits do. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import tasks
from ..core.manifest import Manifest
from .postprocess import (ClassFraction, Classification, ClassScore, Embedding, Result, Segmentation, VisualTokens,
                          label_dtype, softmax)

IMAGE, TOP_K, IMAGE_SIZE = "IMAGE", "TOP_K", "IMAGE_SIZE"  # ensemble input, optional input, size of each image
CLASS_IDS, SCORES, LABELS, FRACTIONS = "CLASS_IDS", "SCORES", "LABELS", "FRACTIONS"
LABEL_MAP, TOKENS, EMBEDDING = "LABEL_MAP", "TOKENS", "EMBEDDING"
PROBABILITIES = "PROBABILITIES"  # classifiers: every class's probability, for the classification extension
_PAD = {"int64": -1, "int32": -1, "uint16": 65535, "uint8": 255, "float64": 0.0, "float32": 0.0, "bytes": b""}


@dataclass(frozen=True)
class WireTensor:
    """One answer tensor per image: name, numpy dtype name ("bytes": UTF-8 strings), dims without the batch
    axis (-1: varies per image)."""

    name: str
    dtype: str
    dims: tuple[int, ...]


def wire_outputs(manifest: Manifest) -> tuple[WireTensor, ...]:
    """The answer tensors of an export's task, per image."""
    answer = tasks.task(manifest.task).answer
    source = next(s for s in manifest.outputs if s.name == tasks.task(manifest.task).answer_from)
    if answer == tasks.TOP_K:
        return WireTensor(CLASS_IDS, "int64", (-1,)), WireTensor(SCORES, "float32", (-1,)), \
            WireTensor(LABELS, "bytes", (-1,)), WireTensor(PROBABILITIES, "float32", (int(source.shape[1]),))
    if answer == tasks.LABEL_MAP:
        return WireTensor(LABEL_MAP, label_dtype(int(source.shape[1])).name, (-1, -1)), \
            WireTensor(CLASS_IDS, "int64", (-1,)), WireTensor(FRACTIONS, "float32", (-1,)), \
            WireTensor(LABELS, "bytes", (-1,))
    if answer == tasks.VISUAL_TOKENS:
        return (WireTensor(TOKENS, "int64", tuple(manifest.grid)),)
    return (WireTensor(EMBEDDING, "float32", tuple(source.shape[1:])),)


def encode(result: Result, logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One image's result -> its answer tensors (no batch axis); a classification's `logits` (the graph's
    output for that image) add PROBABILITIES."""
    if isinstance(result, Classification):
        out = {CLASS_IDS: np.array([c.id for c in result.top_k], np.int64),
               SCORES: np.array([c.score for c in result.top_k], np.float32), LABELS: _strings(result.top_k)}
        return out if logits is None else {**out, PROBABILITIES: softmax(logits).astype(np.float32)}
    if isinstance(result, Segmentation):
        return {LABEL_MAP: result.label_map,  # already in label_dtype(classes)
                CLASS_IDS: np.array([c.id for c in result.classes], np.int64),
                FRACTIONS: np.array([c.fraction for c in result.classes], np.float32),
                LABELS: _strings(result.classes)}
    if isinstance(result, VisualTokens):
        return {TOKENS: result.tokens.astype(np.int64, copy=False)}
    return {EMBEDDING: np.asarray(result.vector, np.float32)}


def _strings(items) -> np.ndarray:
    return np.array([c.label.encode("utf-8") for c in items], dtype=object).reshape(len(items))


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
    answer = tasks.task(task_name).answer
    if answer == tasks.TOP_K:
        return Classification(tuple(ClassScore(i, label, s) for i, s, label in _listed(row, SCORES)))
    if answer == tasks.LABEL_MAP:
        return Segmentation(np.ascontiguousarray(row[LABEL_MAP][:size[0], :size[1]]),
                            tuple(ClassFraction(i, label, f) for i, f, label in _listed(row, FRACTIONS)))
    if answer == tasks.VISUAL_TOKENS:
        return VisualTokens(row[TOKENS])
    return Embedding(np.asarray(row[EMBEDDING], np.float32))


def _listed(row: dict[str, np.ndarray], values: str) -> list[tuple[int, float, str]]:
    """(id, value, label) of every listed class, padding (id -1) dropped."""
    return [(int(i), float(v), _text(label)) for i, v, label in zip(row[CLASS_IDS], row[values], row[LABELS])
            if i >= 0]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
