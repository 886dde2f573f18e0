"""verify and compare on an engine whose profile is 1..4, fed the 5 sample photos as one batch: both go through
the runner's splitting and padding (runtime.backends.run_in_batches), so the engine never sees a batch outside its
profile; and an engine of another TensorRT is skipped by both with the same reason, before anything loads it.

The engine is a stand-in (no TensorRT, no GPU here): it runs the export's fp32 graph on ONNX Runtime and refuses
batches outside 1..4 exactly as TensorRTBackend does."""

from __future__ import annotations

from pathlib import Path

import pytest
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

from beit_deploy.core import engine_manifest as em
from beit_deploy.core.errors import UsageError
from beit_deploy.proof import compare as compare_module
from beit_deploy.proof.compare import CompareOptions, compare
from beit_deploy.proof.verify import parity_report, photo_paths
from beit_deploy.runtime import tensorrt_backend
from beit_deploy.runtime.backends import CPU, OnnxRuntimeBackend
from test_build import H100
from test_engine_folders import write_engine

LOW, HIGH = 1, 4


def refuse_outside_profile(batch: int) -> None:
    if not LOW <= batch <= HIGH:
        raise UsageError(f"batch sizes [{batch}] are not one size within the engine's profile {LOW}..{HIGH}")


class ProfileBackend(OnnxRuntimeBackend):
    """TensorRTBackend's stand-in: profile 1..4, the engine's source graph run on ONNX Runtime."""

    def __init__(self, engine: Path, manifest):
        super().__init__(Path(em.read_engine_manifest(engine.parent).source["folder"]) / "model.onnx",
                         providers=CPU)
        self.name, self.batches = "tensorrt", []

    @property
    def min_batch(self) -> int:
        return LOW

    @property
    def max_batch(self) -> int:
        return HIGH

    def run(self, feeds):
        batch = len(feeds["pixel_values"])
        refuse_outside_profile(batch)
        self.batches.append(batch)
        return super().run(feeds)


class ProfileRunner(OnnxrtRunner):
    """Polygraphy's TrtRunner's stand-in: profile 1..4, on the engine's source graph."""

    batches: list[int] = []

    def infer_impl(self, feed_dict):
        refuse_outside_profile(len(feed_dict["pixel_values"]))
        ProfileRunner.batches.append(len(feed_dict["pixel_values"]))
        return super().infer_impl(feed_dict)


@pytest.fixture
def engine_here(tiny_export, tmp_path, monkeypatch):
    """A classification export with an 'engine' of it under engines/ (fp32, profile 1..4 in engine.json), on a
    machine that looks like it has TensorRT 10.13.0.35 and an H100 (the stand-in module and GPU)."""
    from fake_tensorrt import install

    export = tiny_export("classification")
    monkeypatch.chdir(tmp_path)
    folder = write_engine(export, Path("engines"))
    data = em.read_engine_manifest(folder).to_dict()
    data["profile"] = {"pixel_values": {k: [b, 3, 64, 64] for k, b in (("min", LOW), ("opt", 2), ("max", HIGH))}}
    em.write_engine_manifest(folder, em.EngineManifest.from_dict(data))
    install(monkeypatch, version="10.13.0.35")
    monkeypatch.setattr(em, "unavailable_reason", lambda: None)
    monkeypatch.setattr(em, "current_gpu", lambda device=0: H100)
    return export, folder


def test_verify_feeds_five_photos_to_an_engine_of_profile_1_to_4(engine_here, monkeypatch):
    export, _ = engine_here
    made = []
    monkeypatch.setattr(tensorrt_backend, "TensorRTBackend", lambda path, manifest: made.append(
        ProfileBackend(path, manifest)) or made[-1])
    assert len(photo_paths(None)) == 5
    report = parity_report(export, random=1)
    engine = next(a for a in report.artifacts if a.name == "engine")
    assert engine.skipped is None and report.passed, report.table()
    assert made[0].batches == [4, 1, 1, 1]  # the 5 photos as 4 + 1, the first photo alone, 1 random image
    assert engine.outputs[0].rel <= 1e-4


def test_compare_feeds_five_photos_to_an_engine_of_profile_1_to_4(engine_here, monkeypatch):
    export, _ = engine_here
    ProfileRunner.batches = []
    monkeypatch.setattr(compare_module, "_engine_runner", lambda found, name: ProfileRunner(
        SessionFromOnnx(str(export / "model.onnx"), providers=["cpu"]), name="trt"))
    outcome = compare(export, CompareOptions(runners=("onnxrt-fp32", "torch", "trt"), random=1))
    assert outcome.passed and ("trt", "torch", True) in outcome.pairs and not outcome.skipped
    assert ProfileRunner.batches == [4, 1, 1, 1]


def test_an_engine_of_another_tensorrt_is_skipped_by_both_with_one_reason(engine_here, monkeypatch):
    from fake_tensorrt import install

    export, folder = engine_here
    install(monkeypatch, version="11.4.0.106")
    loaded = []
    monkeypatch.setattr(tensorrt_backend, "TensorRTBackend", lambda *a: loaded.append(a))
    monkeypatch.setattr(compare_module, "_engine_runner", lambda found, name: loaded.append(found))
    engine = next(a for a in parity_report(export, random=1).artifacts if a.name == "engine")
    outcome = compare(export, CompareOptions(runners=("onnxrt-fp32", "trt"), random=1))
    assert engine.skipped == outcome.skipped["trt"] and not loaded
    assert engine.skipped.startswith(f"{folder / 'model.engine'} cannot run here (this engine was built with "
                                     "TensorRT 10.13.0.35 and this machine has TensorRT 11.4.0.106")
