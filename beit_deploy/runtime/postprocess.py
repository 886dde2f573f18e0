"""From raw BEiT outputs to answers: top-k classes, label maps, visual tokens, embeddings. numpy only.

Every result is a frozen dataclass with `to_dict()` giving JSON-ready Python values. Segmentation follows
transformers' `post_process_semantic_segmentation` with target sizes: the logits of one image are upsampled
bilinearly (align_corners=False, as `torch.nn.functional.interpolate`) to the image's own size, then argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from ..core import tasks

_ROWS_PER_CHUNK = 256  # label maps are computed in tiles of 256 rows ...
_TILE_FLOATS = 1 << 20  # ... and as many columns as keep one tile's floats near this (4 MB)


def _task_of(kind: str) -> str:
    """The first task of the table answering with `kind`: what a result says it is when not told."""
    return next(t.name for t in tasks.TASKS.values() if t.answer == kind)


@dataclass(frozen=True)
class ClassScore:
    id: int
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "score": self.score}


@dataclass(frozen=True)
class Classification:
    """Top-k classes of one image, best first; scores are softmax probabilities over all logits."""

    top_k: tuple[ClassScore, ...]
    task: str = _task_of(tasks.TOP_K)

    def to_dict(self) -> dict:
        return {"task": self.task, "top_k": [c.to_dict() for c in self.top_k]}

    def summary(self) -> str:
        """Readable lines: rank, score, label and id."""
        return "\n".join(f"  {k}. {c.score:7.2%}  {c.label} ({c.id})" for k, c in enumerate(self.top_k, 1))


@dataclass(frozen=True)
class ClassFraction:
    id: int
    label: str
    fraction: float

    def to_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "fraction": self.fraction}


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A label map (H, W) of class ids at the image's own size, and the classes present, largest first."""

    label_map: np.ndarray = field(repr=False)
    classes: tuple[ClassFraction, ...]
    task: str = _task_of(tasks.LABEL_MAP)

    def to_dict(self) -> dict:
        """JSON-ready summary: size and per-class pixel fractions (the map itself: `label_map`, or --masks)."""
        return {"task": self.task, "size": list(self.label_map.shape),
                "classes": [c.to_dict() for c in self.classes]}

    def summary(self, most: int = 8) -> str:
        """Readable lines: the largest classes by pixel fraction."""
        lines = [f"  {c.fraction:7.2%}  {c.label} ({c.id})" for c in self.classes[:most]]
        rest = len(self.classes) - most
        return "\n".join(lines + ([f"  ... and {rest} more classes"] if rest > 0 else []))


@dataclass(frozen=True, eq=False)
class VisualTokens:
    """Masked image modeling: the predicted visual token id of every patch, (H/patch, W/patch)."""

    tokens: np.ndarray = field(repr=False)
    task: str = _task_of(tasks.VISUAL_TOKENS)

    def to_dict(self) -> dict:
        return {"task": self.task, "grid": list(self.tokens.shape), "tokens": self.tokens.tolist()}

    def summary(self) -> str:
        ids, counts = np.unique(self.tokens, return_counts=True)
        common = ", ".join(f"{i} x{c}" for i, c in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: -t[1])[:5])
        return f"  {self.tokens.shape[0]}x{self.tokens.shape[1]} visual tokens, most frequent: {common}"


@dataclass(frozen=True, eq=False)
class Embedding:
    """Features: the pooled embedding (hidden_size,) of one image."""

    vector: np.ndarray = field(repr=False)
    task: str = _task_of(tasks.EMBEDDING)

    def to_dict(self) -> dict:
        return {"task": self.task, "dim": int(self.vector.shape[0]), "embedding": self.vector.astype(float).tolist()}

    def summary(self) -> str:
        head = ", ".join(f"{v:.4f}" for v in self.vector[:4])
        return f"  embedding of {self.vector.shape[0]} values, L2 norm {np.linalg.norm(self.vector):.4f}: [{head}, ...]"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64 (stable: max subtracted)."""
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classify(logits: np.ndarray, labels: dict[int, str], top_k: int = 5, task: str = Classification.task
             ) -> Classification:
    """(num_labels,) logits -> the top_k classes by softmax score (ties: lower id first)."""
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")[:max(1, min(top_k, len(probs)))]
    return Classification(tuple(ClassScore(int(i), labels.get(int(i), str(int(i))), float(probs[i])) for i in order),
                          task)


def _source_index(out_size: int, in_size: int, start: int = 0, stop: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of 1-D linear interpolation as torch computes them (align_corners=False, float32),
    for output positions [start, stop)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(start, out_size if stop is None else min(stop, out_size), dtype=np.float32) + np.float32(0.5)
           ) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) float32, numerically `F.interpolate(x[None], size, mode="bilinear",
    align_corners=False)[0]` (weights computed in float32 like torch's CPU kernel; width first, then height)."""
    x = x.astype(np.float32, copy=False)
    return _rows(_along_width(x, size[1]), size[0], 0, size[0])


def _along_width(x: np.ndarray, width: int) -> np.ndarray:
    j0, j1, a0, a1 = _source_index(width, x.shape[2])
    return x[:, :, j0] * a0 + x[:, :, j1] * a1  # (C, h, W)


def _rows(xw: np.ndarray, height: int, start: int, stop: int) -> np.ndarray:
    """Output rows [start, stop) of the height interpolation of width-resized (C, h, W) -> (C, stop-start, W)."""
    i0, i1, b0, b1 = (a[start:stop] for a in _source_index(height, xw.shape[1]))
    return xw[:, i0, :] * b0[None, :, None] + xw[:, i1, :] * b1[None, :, None]


def label_dtype(classes: int) -> np.dtype:
    """The smallest integer type that holds class ids 0..classes-1 and one more value (padding): uint8 for up to
    255 classes (ADE20K's 150), uint16 up to 65535, int32 beyond."""
    return np.dtype(np.uint8 if classes <= 255 else np.uint16 if classes <= 65535 else np.int32)


def label_map(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) class ids in `label_dtype(C)`: bilinear upsampling to `size`, then argmax over
    classes. Works in tiles of rows and columns, so memory stays near a few times `_TILE_FLOATS` floats whatever
    the photo's size or shape (a 62 MP photo with 150 classes needs no 7 GB), and the map itself is 1 byte a pixel
    for up to 255 classes (62 MB for 62 MP, not int64's 500 MB). Same numbers as `resize_bilinear` then argmax."""
    x = logits.astype(np.float32, copy=False)
    out = np.empty(size, dtype=label_dtype(x.shape[0]))
    rows = min(_ROWS_PER_CHUNK, size[0])
    cols = max(1, _TILE_FLOATS // (x.shape[0] * max(x.shape[1], rows)))
    for c in range(0, size[1], cols):
        j0, j1, a0, a1 = _source_index(size[1], x.shape[2], c, c + cols)
        xw = x[:, :, j0] * a0 + x[:, :, j1] * a1  # (C, h, columns of this tile)
        for r in range(0, size[0], rows):
            i0, i1, b0, b1 = _source_index(size[0], x.shape[1], r, r + rows)
            band = xw[:, i0, :] * b0[:, None] + xw[:, i1, :] * b1[:, None]
            out[r:r + rows, c:c + cols] = band.argmax(axis=0)
    return out


def segment(logits: np.ndarray, size: tuple[int, int], labels: dict[int, str], task: str = Segmentation.task
            ) -> Segmentation:
    """(C, h, w) logits of one image and its (H, W) -> label map at that size and per-class pixel fractions."""
    labels_map = label_map(logits, size)
    flat, counts = labels_map.ravel(), np.zeros(logits.shape[0], np.int64)
    for start in range(0, flat.size, _TILE_FLOATS):  # bincount makes an int64 copy: in chunks, not 8 bytes a pixel
        counts += np.bincount(flat[start:start + _TILE_FLOATS], minlength=logits.shape[0])
    total = max(int(labels_map.size), 1)
    present = sorted((i for i in np.flatnonzero(counts)), key=lambda i: (-counts[i], i))
    classes = tuple(ClassFraction(int(i), labels.get(int(i), str(int(i))), float(counts[i] / total)) for i in present)
    return Segmentation(labels_map, classes, task)


def visual_tokens(logits: np.ndarray, grid: tuple[int, int], task: str = VisualTokens.task) -> VisualTokens:
    """(num_patches, vocab) logits -> (grid_h, grid_w) argmax token ids."""
    return VisualTokens(logits.argmax(axis=-1).reshape(grid), task)


def embedding(pooled: np.ndarray, task: str = Embedding.task) -> Embedding:
    """(hidden_size,) pooled output -> Embedding."""
    return Embedding(np.asarray(pooled, dtype=np.float32), task)


Result = Union[Classification, Segmentation, VisualTokens, Embedding]


@dataclass(frozen=True)
class Context:
    """What an answer needs besides one image's output: its (H, W), the export's patch grid, the class names and
    how many classes to list."""

    size: tuple[int, int]
    grid: tuple[int, int]
    labels: dict[int, str]
    top_k: int = 5
