"""BeitTRTRunner on ONNX Runtime (CPU) against the transformers path: processor + eager model + post-processing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from beit_deploy import BeitTRTRunner
from beit_deploy.runtime.backends import Backend
from beit_deploy.core.errors import ArtifactError, MissingDependencyError, UsageError
from beit_deploy.exporter.parity import sample_images
from beit_deploy.runtime.postprocess import label_map, resize_bilinear
from beit_deploy.runtime.preprocess import ImageError

PHOTOS = sample_images()


def eager(task: str, folder):
    """(processor, eager model) of a tiny save_pretrained folder, as transformers would load them."""
    import transformers

    from beit_deploy.core.tasks import task as task_entry

    model = getattr(transformers, task_entry(task).model_class).from_pretrained(folder).eval()
    return transformers.BeitImageProcessorPil.from_pretrained(folder), model


def eager_logits(processor, model, images):
    import torch

    inputs = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs)


def test_light_import():
    code = ("import sys; from beit_deploy import BeitTRTRunner; "
            "print(sorted(m for m in ('torch', 'transformers', 'tensorrt', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_classification_matches_transformers(tiny_export, tiny_dir):
    import torch

    processor, model = eager("classification", tiny_dir("classification"))
    probs = torch.softmax(eager_logits(processor, model, PHOTOS).logits, -1)
    top = torch.topk(probs, 5)
    with BeitTRTRunner(tiny_export("classification", fp16=True)) as runner:
        assert runner.precision == "fp32"  # no GPU provider here: fp32 even though fp16 exists
        results = runner.predict(PHOTOS, top_k=5)
    for result, ids, scores in zip(results, top.indices.tolist(), top.values.tolist()):
        assert [c.id for c in result.top_k] == ids
        np.testing.assert_allclose([c.score for c in result.top_k], scores, atol=1e-4)
        assert result.top_k[0].label == model.config.id2label[ids[0]]
    json.dumps(results[0].to_dict())


def test_fp16_graph_runs_and_agrees(tiny_export):
    folder = tiny_export("classification", fp16=True)
    with BeitTRTRunner(folder, precision="fp16") as fp16, BeitTRTRunner(folder / "model.onnx") as fp32:
        assert fp32.precision == "fp32"
        a, b = fp16.predict(PHOTOS[0]), fp32.predict(PHOTOS[0])
    assert a.top_k[0].id == b.top_k[0].id and abs(a.top_k[0].score - b.top_k[0].score) < 1e-2


def test_segmentation_label_maps_match_transformers(tiny_export, tiny_dir):
    processor, model = eager("segmentation", tiny_dir("segmentation", 3))
    sizes = [Image.open(p).size[::-1] for p in PHOTOS]
    refs = processor.post_process_semantic_segmentation(eager_logits(processor, model, PHOTOS), target_sizes=sizes)
    with BeitTRTRunner(tiny_export("segmentation", resample=3)) as runner:
        assert runner.manifest.preprocessing.resample == 3
        results = runner.predict(PHOTOS)
    for result, ref, size in zip(results, refs, sizes):
        assert result.label_map.shape == size
        assert (result.label_map == ref.numpy()).mean() >= 0.999
        assert abs(sum(c.fraction for c in result.classes) - 1) < 1e-9
        assert result.classes[0].fraction == max(c.fraction for c in result.classes)


@pytest.mark.parametrize("src,dst", [((5, 16, 16), (300, 451)), ((3, 7, 9), (4, 5)), ((2, 16, 16), (1, 1)),
                                     ((4, 10, 6), (10, 6)), ((3, 5, 5), (2000, 3))])
def test_bilinear_resize_matches_torch(src, dst):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).standard_normal(src).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(resize_bilinear(x, dst), ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(label_map(x, dst), resize_bilinear(x, dst).argmax(0))


def test_masked_image_modeling(tiny_export, tiny_dir):
    import torch

    processor, model = eager("masked-image-modeling", tiny_dir("masked-image-modeling"))
    with BeitTRTRunner(tiny_export("masked-image-modeling")) as runner:
        result = runner.predict(PHOTOS[0])
        pixels = runner.preprocess(PHOTOS[:2])
        mask = np.zeros((2, 16), bool)
        mask[:, ::3] = True
        masked = runner.run(pixels, bool_masked_pos=mask)["logits"]
        unmasked = runner.run(pixels)["logits"]
    assert result.tokens.shape == (4, 4) and result.to_dict()["grid"] == [4, 4]
    with torch.no_grad():
        ref = model(torch.from_numpy(pixels), bool_masked_pos=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(masked, ref, atol=1e-4)
    assert not np.allclose(masked, unmasked)
    np.testing.assert_array_equal(result.tokens.ravel(), unmasked[0].argmax(-1))


def test_features_embedding_matches_eager(tiny_export, tiny_dir):
    processor, model = eager("features", tiny_dir("features"))
    ref = eager_logits(processor, model, PHOTOS[:2]).pooler_output.numpy()
    with BeitTRTRunner(tiny_export("features")) as runner:
        results = runner.predict(PHOTOS[:2])
    np.testing.assert_allclose(np.stack([r.vector for r in results]), ref, atol=1e-4)
    assert results[0].to_dict()["dim"] == 32


class CountingBackend(Backend):
    """Wraps a backend, recording batch sizes; max_batch 2."""

    name = "counting"

    def __init__(self, inner):
        self.inner, self.calls, self.closed = inner, [], False

    input_names = property(lambda self: self.inner.input_names)
    output_names = property(lambda self: self.inner.output_names)
    max_batch = property(lambda self: 2)

    def run(self, feeds):
        self.calls.append(len(feeds["pixel_values"]))
        return self.inner.run(feeds)

    def close(self):
        self.closed = True
        self.inner.close()


def test_batches_are_split_and_joined(tiny_export):
    folder = tiny_export("classification", fp16=True)
    with BeitTRTRunner(folder, precision="fp32") as whole:
        pixels = whole.preprocess(PHOTOS)
        ref = whole.run(pixels)["logits"]
        assert len(ref) == len(PHOTOS)
    counting = CountingBackend(BeitTRTRunner(folder, precision="fp32").backend)
    with BeitTRTRunner(folder, precision="fp32", backend=counting, batch_size=3) as runner:
        np.testing.assert_allclose(runner.run(pixels)["logits"], ref, atol=1e-5)
        assert counting.calls == [2, 2, 1]
        assert runner.run(pixels[:0])["logits"].shape == (0, 5)
        counting.calls.clear()
        results = runner.predict(PHOTOS)  # chunks of 3 images, each split to backend batches of 2
        assert counting.calls == [2, 1, 2] and len(results) == len(PHOTOS)
    assert counting.closed


def test_bad_images_in_a_batch(tiny_export, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with BeitTRTRunner(tiny_export("classification", fp16=True)) as runner:
        out = list(runner.predict_each([PHOTOS[0], bad, PHOTOS[1]]))
        assert [p.error is None for p in out] == [True, False, True]
        assert isinstance(out[1].error, ImageError) and "bad.png" in str(out[1].error)
        with pytest.raises(ImageError):
            runner.predict([PHOTOS[0], bad])
        with pytest.raises(UsageError, match="pixel_values must be"):
            runner.run(np.zeros((1, 3, 32, 32), np.float32))
        with pytest.raises(UsageError, match="unknown input"):
            runner.run(np.zeros((1, 3, 64, 64), np.float32), bool_masked_pos=np.zeros((1, 16), bool))


def copy_export(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_artifact_errors(tiny_export, tmp_path):
    folder = tiny_export("classification", fp16=True)
    with pytest.raises(UsageError, match="does not exist"):
        BeitTRTRunner(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        BeitTRTRunner(tmp_path)
    with pytest.raises(UsageError, match="precision"):
        BeitTRTRunner(folder, precision="int8")
    with pytest.raises(UsageError, match="not fp16"):
        BeitTRTRunner(folder / "model.onnx", precision="fp16")
    copy = copy_export(folder, tmp_path)
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        BeitTRTRunner(copy, precision="fp32")


def test_mismatched_graph(tiny_export, tmp_path):
    copy = copy_export(tiny_export("classification", fp16=True), tmp_path)
    other = tiny_export("masked-image-modeling") / "model.onnx"
    shutil.copy(other, copy / "model.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graph"]["fp32"]["bytes"] = other.stat().st_size  # sizes agree: only the graph itself tells
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="sha256 differs"):  # the recorded hash tells first
        BeitTRTRunner(copy, precision="fp32")
    with pytest.raises(ArtifactError, match="another export"):  # without it, the graph's own inputs tell
        BeitTRTRunner(copy, precision="fp32", check_hashes=False)
    (copy / "model.onnx").write_bytes(b"\0" * other.stat().st_size)  # right size, garbage inside
    with pytest.raises(ArtifactError, match="cannot load"):
        BeitTRTRunner(copy, precision="fp32", check_hashes=False)


def test_engine_without_tensorrt(tiny_export, tmp_path):
    copy = copy_export(tiny_export("classification", fp16=True), tmp_path)
    (copy / "model.engine").write_bytes(b"engine")
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(MissingDependencyError, match=r"beit-deploy\[gpu\]"):
        BeitTRTRunner(copy / "model.engine")


def test_from_dir_picks_a_resolution(tiny_export, tmp_path):
    folder = tiny_export("classification", fp16=True)
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "64x64").symlink_to(folder)
    with BeitTRTRunner.from_dir(model_dir) as runner:  # only one: no need to say which
        assert runner.resolution == (64, 64)
    (model_dir / "96x96").symlink_to(folder)
    with pytest.raises(UsageError, match="64x64, 96x96"):
        BeitTRTRunner.from_dir(model_dir)
    with pytest.raises(UsageError, match=r"no 128x128 export \(it has: 64x64, 96x96\)"):
        BeitTRTRunner.from_dir(model_dir, resolution=128)
    with BeitTRTRunner.from_dir(model_dir, resolution="64x64") as runner:
        assert runner.task == "classification"
    with pytest.raises(ArtifactError, match="no exported resolution"):
        BeitTRTRunner.from_dir(tmp_path / "tiny" / "..")


def test_runner_parity_reports_against_eager(tiny_export):
    folder = tiny_export("classification", fp16=True)
    with BeitTRTRunner(folder / "model.onnx") as runner:
        report = runner.parity()
    assert report.passed and report.task == "classification"
    assert {a.name for a in report.artifacts} >= {"fp32", "fp16"}


def test_segmentation_holds_one_full_size_map_at_a_time(tiny_export, monkeypatch):
    """predict_each makes each answer (a label map at the photo's full size) only when the previous one has been
    handed over, and the progress wrapper lets go of it: a folder of large photos holds one map at a time."""
    import weakref

    from beit_deploy.core.progress import tracked
    from beit_deploy.runtime import answers

    made, real = [], answers.answer
    monkeypatch.setattr(answers, "answer", lambda *a, **k: made.append(1) or real(*a, **k))
    photos = [Image.new("RGB", (300, 200), colour) for colour in ("red", "green", "blue", "white")]
    maps = []
    with BeitTRTRunner(tiny_export("segmentation"), batch_size=4) as runner:
        for n, p in enumerate(tracked(runner.predict_each(photos), "predicting"), 1):
            assert len(made) == n  # made as asked for, not the whole batch at once
            maps.append(weakref.ref(p.result.label_map))
            assert p.result.label_map.shape == (200, 300)
            del p
            assert all(m() is None for m in maps[:-1])  # the maps handed over before are gone
