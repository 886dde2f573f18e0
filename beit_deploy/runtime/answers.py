"""The per-answer-kind table: one object per kind of answer a BEiT head gives (top-k classes, a label map, visual
tokens, an embedding), holding everything that differs between them.

Each object knows its post-processing (one image's raw output -> the result `predict` gives), its wire form
(the tensors a served model answers with, and back: runtime/wire.py), the decision-level agreement that parity
reports beside the numeric figures, and transformers' own post-processing, the reference answer the benchmark's
end-to-end row runs. The task table (core/tasks.py) names each head's kind; `of(task)` gives its object, so no
stage compares kind names. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import tasks
from ..core.manifest import Manifest
from . import postprocess as post

# Answer tensors (per image; runtime/wire.py stacks and pads them per request)
CLASS_IDS, SCORES, LABELS, FRACTIONS = "CLASS_IDS", "SCORES", "LABELS", "FRACTIONS"
LABEL_MAP, TOKENS, EMBEDDING = "LABEL_MAP", "TOKENS", "EMBEDDING"
PROBABILITIES = "PROBABILITIES"  # classifiers: every class's probability, for Triton's classification extension


@dataclass(frozen=True)
class WireTensor:
    """One answer tensor per image: name, numpy dtype name ("bytes": UTF-8 strings), dims without the batch
    axis (-1: varies per image)."""

    name: str
    dtype: str
    dims: tuple[int, ...]


class AnswerKind:
    """One kind of answer. Subclasses fill in every method; `label_map` says whether results carry a label map
    (predict's --masks/--overlay)."""

    name: str = ""
    label_map: bool = False
    top_k: bool = False  # whether answers list the top k (a served ensemble then takes TOP_K)

    def answer(self, output: np.ndarray, context: post.Context, task: str) -> post.Result:
        """One image's row of the task's output (`task.answer_from`, batch axis removed) -> its result."""
        raise NotImplementedError

    def wire(self, manifest: Manifest) -> tuple[WireTensor, ...]:
        """The answer tensors of an export of this kind, per image."""
        raise NotImplementedError

    def encode(self, result, output: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One image's result (and its raw output, where the kind sends more of it) -> its answer tensors (no
        batch axis)."""
        raise NotImplementedError

    def decode(self, row: dict[str, np.ndarray], size: tuple[int, int], task: str) -> post.Result:
        """One image's answer tensors and its (H, W) -> the result `predict` gives in process."""
        raise NotImplementedError

    def agreement(self, ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
        """Decision-level agreement of two outputs of the same shape (batch first), as fractions; {}: none (the
        output is judged by the numeric figures alone)."""
        return {}

    def top1_flips(self, ref: np.ndarray, got: np.ndarray) -> tuple[float, int, int] | None:
        """(top-1 agreement, flips, flips on a tie below fp16 resolution) of flattened (B, C) outputs, for the
        parity verdict; None where the kind has no top-1."""
        return None

    def reference(self, out, processor, labels: dict[int, str], photos):
        """transformers' own post-processing of the model's output (the raw output where there is none)."""
        return out


class TopK(AnswerKind):
    """Classification: the top-k classes by softmax score, with labels."""

    name = tasks.TOP_K
    top_k = True

    def answer(self, output, context, task):
        return post.classify(output, context.labels, context.top_k, task)

    def wire(self, manifest):
        return WireTensor(CLASS_IDS, "int64", (-1,)), WireTensor(SCORES, "float32", (-1,)), \
            WireTensor(LABELS, "bytes", (-1,)), WireTensor(PROBABILITIES, "float32", (_classes(manifest),))

    def encode(self, result, output=None):
        out = {CLASS_IDS: np.array([c.id for c in result.top_k], np.int64),
               SCORES: np.array([c.score for c in result.top_k], np.float32), LABELS: _strings(result.top_k)}
        return out if output is None else {**out, PROBABILITIES: post.softmax(output).astype(np.float32)}

    def decode(self, row, size, task):
        return post.Classification(tuple(post.ClassScore(i, label, s) for i, s, label in _listed(row, SCORES)),
                                   task)

    def agreement(self, ref, got):
        """top1 (same argmax) and top5 (same top-5 set, order ignored) as fractions of samples; logits (B, C)."""
        k = min(5, ref.shape[1])
        top_ref = np.sort(np.argsort(-ref, axis=1)[:, :k], axis=1)
        top_got = np.sort(np.argsort(-got, axis=1)[:, :k], axis=1)
        return {"top1": float(np.mean(ref.argmax(1) == got.argmax(1))),
                "top5": float(np.mean(np.all(top_ref == top_got, axis=1)))}

    def top1_flips(self, ref, got):
        flipped = ref.argmax(1) != got.argmax(1)
        top2 = np.sort(ref, axis=1)[:, -2:]
        # fp16 cannot resolve a top-2 gap below about 2 ulps at the logits' scale (2^-10 relative).
        unresolvable = (top2[:, 1] - top2[:, 0]) <= 2.0**-10 * np.abs(ref).max(axis=1)
        return float(1 - flipped.mean()), int(flipped.sum()), int(np.sum(flipped & unresolvable))

    def reference(self, out, processor, labels, photos):
        top = out.logits.softmax(-1).topk(min(5, out.logits.shape[-1]))
        return [[(labels.get(int(i)), float(s)) for s, i in zip(*row)] for row in zip(*top)]


class LabelMapKind(AnswerKind):
    """Segmentation: a label map at the image's own size and the classes present, largest first."""

    name = tasks.LABEL_MAP
    label_map = True

    def answer(self, output, context, task):
        return post.segment(output, context.size, context.labels, task)

    def wire(self, manifest):
        return WireTensor(LABEL_MAP, post.label_dtype(_classes(manifest)).name, (-1, -1)), \
            WireTensor(CLASS_IDS, "int64", (-1,)), WireTensor(FRACTIONS, "float32", (-1,)), \
            WireTensor(LABELS, "bytes", (-1,))

    def encode(self, result, output=None):
        return {LABEL_MAP: result.label_map,  # already in label_dtype(classes): 1 byte a pixel up to 255 classes
                CLASS_IDS: np.array([c.id for c in result.classes], np.int64),
                FRACTIONS: np.array([c.fraction for c in result.classes], np.float32),
                LABELS: _strings(result.classes)}

    def decode(self, row, size, task):
        return post.Segmentation(np.ascontiguousarray(row[LABEL_MAP][:size[0], :size[1]]),
                                 tuple(post.ClassFraction(i, label, f) for i, f, label in _listed(row, FRACTIONS)),
                                 task)

    def agreement(self, ref, got):
        """pixels: the fraction of label-map pixels (argmax over classes of (B, C, h, w) logits) that agree."""
        return {"pixels": float(np.mean(ref.argmax(1) == got.argmax(1)))}

    def reference(self, out, processor, labels, photos):
        return processor.post_process_semantic_segmentation(out, target_sizes=[im.size[::-1] for im in photos])


class VisualTokensKind(AnswerKind):
    """Masked image modeling: the predicted visual token of every patch."""

    name = tasks.VISUAL_TOKENS

    def answer(self, output, context, task):
        return post.visual_tokens(output, context.grid, task)

    def wire(self, manifest):
        return (WireTensor(TOKENS, "int64", tuple(manifest.grid)),)

    def encode(self, result, output=None):
        return {TOKENS: result.tokens.astype(np.int64, copy=False)}

    def decode(self, row, size, task):
        return post.VisualTokens(row[TOKENS], task)


class EmbeddingKind(AnswerKind):
    """Features: the pooled embedding of one image."""

    name = tasks.EMBEDDING

    def answer(self, output, context, task):
        return post.embedding(output, task)

    def wire(self, manifest):
        source = next(s for s in manifest.outputs if s.name == tasks.task(manifest.task).answer_from)
        return (WireTensor(EMBEDDING, "float32", tuple(source.shape[1:])),)

    def encode(self, result, output=None):
        return {EMBEDDING: np.asarray(result.vector, np.float32)}

    def decode(self, row, size, task):
        return post.Embedding(np.asarray(row[EMBEDDING], np.float32), task)


ANSWER_KINDS: dict[str, AnswerKind] = {k.name: k for k in (TopK(), LabelMapKind(), VisualTokensKind(),
                                                             EmbeddingKind())}


def of(task: str | tasks.Task) -> AnswerKind:
    """The answer kind of a task (its name, as a manifest stores it, or its table entry)."""
    return ANSWER_KINDS[(task if isinstance(task, tasks.Task) else tasks.task(task)).answer]


def answer(task: tasks.Task, output: np.ndarray, context: post.Context) -> post.Result:
    """One image's answer from its row of the task's output (`task.answer_from`, batch axis removed)."""
    return of(task).answer(output, context, task.name)


def _classes(manifest: Manifest) -> int:
    """How many classes the task's output scores (its second axis)."""
    return int(next(s for s in manifest.outputs if s.name == tasks.task(manifest.task).answer_from).shape[1])


def _strings(items) -> np.ndarray:
    return np.array([c.label.encode("utf-8") for c in items], dtype=object).reshape(len(items))


def _listed(row: dict[str, np.ndarray], values: str) -> list[tuple[int, float, str]]:
    """(id, value, label) of every listed class, padding (id -1) dropped."""
    return [(int(i), float(v), _text(label)) for i, v, label in zip(row[CLASS_IDS], row[values], row[LABELS])
            if i >= 0]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
