"""The answer-kind table: one object per kind does post-processing, the wire form and the parity agreement, and
results name the task they answer (no task names written into the result types)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from beit_deploy.core import tasks
from beit_deploy.runtime import answers, postprocess as post, wire


def test_every_task_has_an_answer_kind():
    assert {t.answer for t in tasks.TASKS.values()} == set(answers.ANSWER_KINDS)
    assert [answers.of(t).label_map for t in tasks.TASKS] == [False, True, False, False]


def test_results_name_their_task(monkeypatch):
    """A second head answering with top-k classes says its own name, in process and over the wire."""
    other = replace(tasks.TASKS["classification"], name="aesthetic-rating")
    monkeypatch.setitem(tasks.TASKS, other.name, other)
    result = answers.answer(other, np.array([0.0, 2.0, 1.0]), post.Context((4, 4), (1, 1), {1: "good"}, 2))
    assert result.to_dict()["task"] == "aesthetic-rating" and result.top_k[0].label == "good"
    row = {k: v[0] for k, v in wire.stack([wire.encode(result)]).items()}
    back = wire.decode("aesthetic-rating", row, (4, 4))  # scores travel as FP32
    assert back.to_dict()["task"] == "aesthetic-rating"
    assert [(c.id, c.label) for c in back.top_k] == [(c.id, c.label) for c in result.top_k]
    np.testing.assert_allclose([c.score for c in back.top_k], [c.score for c in result.top_k], rtol=1e-6)
    assert post.classify(np.zeros(3), {}).to_dict()["task"] == "classification"


def test_agreement_per_kind():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    got = np.array([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    assert answers.ANSWER_KINDS[tasks.TOP_K].agreement(ref, got) == {"top1": 0.5, "top5": 1.0}
    assert answers.ANSWER_KINDS[tasks.TOP_K].top1_flips(ref, got) == (0.5, 1, 0)
    maps = np.zeros((1, 2, 2, 2))
    assert answers.ANSWER_KINDS[tasks.LABEL_MAP].agreement(maps, maps) == {"pixels": 1.0}
    assert answers.ANSWER_KINDS[tasks.EMBEDDING].agreement(ref, got) == {}
    assert answers.ANSWER_KINDS[tasks.EMBEDDING].top1_flips(ref, got) is None
