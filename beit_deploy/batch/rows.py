"""One row per input: the fixed columns of each task, and a Prediction turned into a row.

Every task has one schema (`schema(answer)`), so a batch where every image failed still writes (all its task
columns null) and both engines give the same columns in the same order. Rows are plain Python values (lists,
floats, bytes), so they go to Parquet, JSON lines or CSV alike; pyarrow is imported only by `schema`.

Columns: `path` (the input as given, absolute for local files), `error` (null when answered), then per answer kind
- top-k classes: `top_ids`, `top_scores` (softmax, float64), `top_labels`, best first;
- label map: `height`, `width`, `mask_png` (class ids as an 8-bit PNG, 16-bit when an id is above 255; null when
  masks go to files), `mask_file` (the PNG written for it, with a masks folder), `class_ids`, `fractions` (pixel
  fraction of each class present, largest first);
- visual tokens: `tokens` (one id per patch, row by row; the grid is in the metadata);
- embedding: `embedding` (float32).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..core import tasks
from ..core.errors import describe
from ..core.files import write_atomic
from ..runtime.predictor import Prediction

# answer kind -> [(column, pyarrow type name)]; "list<x>" is a list of x
COLUMNS: dict[str, list[tuple[str, str]]] = {
    tasks.TOP_K: [("top_ids", "list<int32>"), ("top_scores", "list<float64>"), ("top_labels", "list<string>")],
    tasks.LABEL_MAP: [("height", "int32"), ("width", "int32"), ("mask_png", "binary"), ("mask_file", "string"),
                      ("class_ids", "list<int32>"), ("fractions", "list<float64>")],
    tasks.VISUAL_TOKENS: [("tokens", "list<int32>")],
    tasks.EMBEDDING: [("embedding", "list<float32>")],
}
COMMON = [("path", "string"), ("error", "string")]


def columns(answer: str) -> list[tuple[str, str]]:
    """(name, type) of every column of an answer kind's table, in order."""
    return COMMON + COLUMNS[answer]


def schema(answer: str, metadata: dict[str, str] | None = None):
    """The pyarrow schema of an answer kind's table, with `metadata` (the export's id) attached."""
    import pyarrow as pa

    def arrow(kind: str):
        if kind.startswith("list<"):
            return pa.list_(arrow(kind[5:-1]))
        return {"string": pa.string(), "binary": pa.binary(), "int32": pa.int32(), "float64": pa.float64(),
                "float32": pa.float32()}[kind]

    fields = [pa.field(name, arrow(kind), nullable=name != "path") for name, kind in columns(answer)]
    return pa.schema(fields, metadata=metadata)


def error_row(answer: str, path: str, error: BaseException | str) -> dict:
    """The row of an input that could not be answered: its path, the error, every task column null."""
    text = error if isinstance(error, str) else describe_error(error)
    return {"path": path, "error": text, **{name: None for name, _ in COLUMNS[answer]}}


def describe_error(error: BaseException) -> str:
    """Our own errors say what to do already; anything else (a decoder's surprise) is named by its type."""
    from ..core.errors import BeitDeployError

    return str(error) if isinstance(error, BeitDeployError) else f"{type(error).__name__}: {describe(error, 500)}"


def row_of(answer: str, path: str, prediction: Prediction, masks_dir: str | None = None) -> dict:
    """A Prediction of the input `path` as its row; masks go to `masks_dir` (absolute) when given, written here,
    where the row is made (on Ray: a worker)."""
    if prediction.error is not None:
        return error_row(answer, path, prediction.error)
    return {"path": path, "error": None, **VALUES[answer](path, prediction.result, masks_dir)}


def _top_k(path: str, result, masks_dir: str | None) -> dict:
    return {"top_ids": [c.id for c in result.top_k], "top_scores": [c.score for c in result.top_k],
            "top_labels": [c.label for c in result.top_k]}


def _segmentation(path: str, result, masks_dir: str | None) -> dict:
    png = mask_png(result.label_map)
    mask_file = None
    if masks_dir:
        mask_file = str(Path(masks_dir) / mask_name(path))
        write_atomic(Path(mask_file), lambda f: f.write(png))  # complete or absent, never through a planted link
        png = None
    height, width = result.label_map.shape
    return {"height": int(height), "width": int(width), "mask_png": png, "mask_file": mask_file,
            "class_ids": [c.id for c in result.classes], "fractions": [c.fraction for c in result.classes]}


def _tokens(path: str, result, masks_dir: str | None) -> dict:
    return {"tokens": result.tokens.astype(np.int32).ravel().tolist()}


def _embedding(path: str, result, masks_dir: str | None) -> dict:
    return {"embedding": result.vector.astype(np.float32).tolist()}


# answer kind -> (input path, result, masks folder) -> the kind's columns
VALUES = {tasks.TOP_K: _top_k, tasks.LABEL_MAP: _segmentation, tasks.VISUAL_TOKENS: _tokens,
          tasks.EMBEDDING: _embedding}


def mask_png(label_map: np.ndarray) -> bytes:
    """Class ids as PNG pixels: 8-bit greyscale when every id fits, else 16-bit (as `predict --masks`)."""
    ids = label_map.astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ids).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_name(path: str) -> str:
    """'<stem>-<8 hex of the path's sha256>.png': the same name for the same input on every engine and run, and
    different names for photos of the same name in different folders."""
    stem = Path(path.rstrip("/")).stem or "image"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)[:100]
    return f"{safe}-{hashlib.sha256(path.encode()).hexdigest()[:8]}.png"

