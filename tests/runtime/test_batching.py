"""The runner's batch splitting against a backend's batch range, and the TensorRT backend's CUDA graph cache,
both with stand-ins (no TensorRT, no GPU): the logic that decides what the engine is asked to run."""

from __future__ import annotations

import numpy as np
import pytest

from beit_deploy.core.errors import UsageError
from beit_deploy.runtime.backends import Backend
from beit_deploy.runtime.runner import BeitTRTRunner
from beit_deploy.runtime.tensorrt_backend import GraphCache


class RangeBackend(Backend):
    """Accepts batches of low..high images only (like a TensorRT profile); logits = per-image pixel sums."""

    name = "range"
    _inputs, _outputs = ["pixel_values"], ["logits"]

    def __init__(self, low: int, high: int):
        self.low, self.high, self.calls = low, high, []

    @property
    def min_batch(self) -> int:
        return self.low

    @property
    def max_batch(self) -> int:
        return self.high

    def run(self, feeds):
        n = len(feeds["pixel_values"])
        assert self.low <= n <= self.high, n
        self.calls.append(n)
        sums = feeds["pixel_values"].reshape(n, -1).sum(1, keepdims=True)
        return {"logits": np.repeat(sums, 5, axis=1).astype(np.float32)}


@pytest.mark.parametrize("images, batch_size, low, high, calls", [
    (7, 2, 3, 5, [3, 3, 3]),  # chunks of MIN (batch size below it), the last (1 image) padded to 3
    (7, 8, 1, 4, [4, 3]),  # split at MAX
    (1, 8, 4, 8, [4]),  # one image, padded to MIN
    (9, 4, 2, 32, [4, 4, 2]),  # the last single image padded to 2
    (6, 3, 3, 3, [3, 3]),  # a fixed-size engine
])
def test_chunks_stay_within_the_profile_and_padding_is_dropped(tiny_export, images, batch_size, low, high, calls):
    backend = RangeBackend(low, high)
    runner = BeitTRTRunner(tiny_export("classification"), backend=backend, batch_size=batch_size)
    pixels = np.random.default_rng(0).standard_normal((images, 3, 64, 64)).astype(np.float32)
    logits = runner.run(pixels)["logits"]
    assert backend.calls == calls
    np.testing.assert_allclose(logits[:, 0], pixels.reshape(images, -1).sum(1), rtol=1e-5)
    assert logits.shape == (images, 5)


class Entry:
    def __init__(self, batch):
        self.batch, self.released = batch, False


def test_graphs_are_captured_once_per_batch_size():
    captured = []

    def capture(batch):
        captured.append(batch)
        return Entry(batch)

    cache = GraphCache(capture, lambda entry: setattr(entry, "released", True), limit=2)
    first = cache.get(2)
    assert cache.get(3).batch == 3 and cache.get(2) is first  # back to 2: replayed, not recaptured
    assert captured == [2, 3]
    cache.get(4)  # a third size: the least recently used (3) goes
    assert list(cache.entries) == [2, 4] and captured == [2, 3, 4]
    cache.get(3)
    assert captured == [2, 3, 4, 3] and list(cache.entries) == [4, 3] and first.released
    cache.clear()
    assert not cache.entries


def test_a_failed_capture_falls_back_to_plain_runs_and_is_not_retried(capsys):
    attempts = []

    def capture(batch):
        attempts.append(batch)
        if batch == 5:
            raise RuntimeError("operation not permitted when stream is capturing")
        return Entry(batch)

    cache = GraphCache(capture, lambda entry: None)
    assert cache.get(5) is None and cache.get(5) is None
    assert cache.get(2).batch == 2 and attempts == [5, 2]
    assert "CUDA graph capture failed at batch 5" in capsys.readouterr().err
    assert "not permitted" in cache.failed[5]


def test_graph_cache_needs_room_for_one():
    with pytest.raises(UsageError):
        GraphCache(lambda b: b, lambda e: None, limit=0)
