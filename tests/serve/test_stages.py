"""The Python-backend stages defend themselves (they can be called directly, past the ensemble): each checks its
inputs and fails only the offending request; a label map's memory is bounded; base64 images from JSON clients
are read; messages carry no Python reprs and no advice the client cannot follow. On numpy, without a server."""

from __future__ import annotations

import base64
import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image
from serving import PHOTOS

from beit_deploy.runtime import wire
from beit_deploy.serve import stages
from beit_deploy.serve.configs import MODEL, POSTPROCESS, PREPROCESS
from beit_deploy.serve.repository import TritonOptions, write_repository


@pytest.fixture(scope="module")
def stage_folders(tiny_export, tmp_path_factory):
    """{task: {stage: version folder}} of a repository for a tiny classifier and a tiny segmenter."""
    repo = tmp_path_factory.mktemp("stages") / "repo"
    found = {}
    for task in ("classification", "segmentation"):
        served, = write_repository([tiny_export(task)], TritonOptions(out=repo, name=task[:3]))
        found[task] = {stage: repo / name / "1" for stage, name in served.stages.items()}
    return found


def image(blob: bytes) -> dict:
    return {wire.IMAGE: np.array([[blob]], dtype=object)}


def test_postprocess_refuses_bad_sizes_alone(stage_folders):
    post = stages.Postprocess(stage_folders["segmentation"][POSTPROCESS], {})
    logits = np.zeros((1, 5, 16, 16), np.float32)
    good = {"logits": logits, wire.IMAGE_SIZE: np.array([[40, 60]], np.int64)}
    bad = [np.array([[-1, 5]]), np.array([[10000, 10000]]), np.array([[1_000_000, 1_000_000]]), np.array([[0, 3]]),
           np.array([[64_000_001, 1]])]
    requests = [good, *({"logits": logits, wire.IMAGE_SIZE: b.astype(np.int64)} for b in bad),
                {"logits": logits, wire.IMAGE_SIZE: np.array([[4, 4]], np.int32)},  # wrong dtype
                {"logits": logits[:, :2], wire.IMAGE_SIZE: np.array([[4, 4]], np.int64)},  # wrong shape
                {"logits": logits, wire.IMAGE_SIZE: np.array([[4, 4], [4, 4]], np.int64)}, good]  # two sizes, one map
    answers = post.run(requests)
    assert answers[0][wire.LABEL_MAP].shape == (1, 40, 60) and answers[-1][wire.LABEL_MAP].shape == (1, 40, 60)
    for answer in answers[1:-1]:
        assert isinstance(answer, stages.RequestError), answer
        assert "\n" not in str(answer)
    assert "at most 64 megapixels" in str(answers[2])
    assert "must be int64 of shape" in str(answers[6]) and "logits must be float32" in str(answers[7])


def test_model_stage_fails_a_malformed_request_alone(stage_folders):
    model = stages.Model(stage_folders["classification"][MODEL], {"precision": "fp32"})
    good = {"pixel_values": np.zeros((2, 3, 64, 64), np.float32)}
    answers = model.run([good, {"pixel_values": np.zeros((1, 3, 32, 64), np.float32)},
                         {"pixel_values": np.zeros((1, 3, 64, 64), np.float64)}, {}, good])
    assert [type(a).__name__ for a in answers] == ["dict", "RequestError", "RequestError", "RequestError", "dict"]
    assert answers[0]["logits"].shape == (2, 5) and "pixel_values must be float32 of shape [1, 3, 64, 64]" in str(
        answers[1])
    model.close()


def test_any_decoder_failure_is_its_request_error(stage_folders, monkeypatch):
    """Pillow raises more than its decode errors (NotImplementedError for a mutated DDS, AttributeError for a
    SPIDER file): whatever one image's decoding raises fails that request only."""
    pre = stages.Preprocess(stage_folders["classification"][PREPROCESS], {})
    real = stages.prepare

    def flaky(data, *args, **kwargs):
        if data.startswith(b"DDS "):
            raise NotImplementedError("Unimplemented pixel format")
        if data.startswith(b"SPIDER"):
            raise AttributeError("'NoneType' object has no attribute 'read'")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(stages, "prepare", flaky)
    good = PHOTOS[0].read_bytes()
    answers = pre.run([image(good), image(b"DDS xxxx"), image(b"SPIDERxx"), image(good)])
    assert isinstance(answers[0], dict) and isinstance(answers[3], dict)
    assert isinstance(answers[1], stages.RequestError) and "Unimplemented pixel format" in str(answers[1])
    assert isinstance(answers[2], stages.RequestError)


def test_base64_images_and_clear_messages(stage_folders):
    pre = stages.Preprocess(stage_folders["classification"][PREPROCESS], {})
    raw = PHOTOS[1].read_bytes()
    text = base64.b64encode(raw)
    answers = pre.run([image(raw), image(text), image(b"data:image/jpeg;base64," + text), image(b"bm90IGFuIGltYWdl"),
                       image(b"not an image"), {wire.IMAGE: np.zeros((1, 1), np.float32)}])
    for answer in answers[1:3]:
        np.testing.assert_array_equal(answer["pixel_values"], answers[0]["pixel_values"])
    for answer in answers[3:]:
        assert isinstance(answer, stages.RequestError) and " object at 0x" not in str(answer), answer
    assert "IMAGE must be bytes" in str(answers[-1])
    big = io.BytesIO()
    Image.new("L", (9000, 8000)).save(big, format="PNG")
    too_big, = pre.run([image(big.getvalue())])
    assert "this server's limit of 64 megapixels" in str(too_big) and "--max-pixels" not in str(too_big)


def test_segmentation_memory_per_request_is_bounded(stage_folders):
    """A 12 MP label map: the answer is 1 byte a pixel (uint8: int64 was 96 MB) and the work beside it stays
    under ~50 MB whatever the photo's size or shape (tiles of rows and columns)."""
    post = stages.Postprocess(stage_folders["segmentation"][POSTPROCESS], {})
    logits = np.random.default_rng(0).normal(size=(1, 5, 16, 16)).astype(np.float32)
    for size in ((3000, 4000), (1, 12_000_000)):
        tracemalloc.start()
        answer, = post.run([{"logits": logits, wire.IMAGE_SIZE: np.array([size], np.int64)}])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert answer[wire.LABEL_MAP].dtype == np.uint8 and answer[wire.LABEL_MAP].shape == (1, *size)
        assert peak < 12e6 + 50e6, f"{size}: peak {peak / 1e6:.0f} MB"
        del answer
