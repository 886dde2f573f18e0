"""The benchmark's TensorRT engine cache (bench.run.cached_engine) with a stand-in build: an engine is reused
only for the same ONNX graph, TensorRT version and GPU; and the report says where each backend's inputs live."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from beit_deploy.bench import run as bench_run
from beit_deploy.bench.report import INPUTS_POLICY, BenchSettings, settings_dict
from beit_deploy.core import engine_manifest as em
from beit_deploy.exporter.loading import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trt"))
from fake_tensorrt import install
from test_build import H100, engine_manifest

A100 = em.GpuInfo("NVIDIA A100-SXM4-80GB", "8.0")


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A pretend GPU machine: TensorRT (stand-in) present, the GPU switchable, builds counted."""
    state = {"gpu": H100, "builds": []}
    monkeypatch.setattr(em, "unavailable_reason", lambda: None)
    monkeypatch.setattr(em, "current_gpu", lambda device=0: state["gpu"])

    def fake_build(onnx, manifest, options):
        folder = em.engine_folder(options.out_dir, manifest)
        folder.mkdir(parents=True, exist_ok=True)  # the real build replaces the folder atomically
        (folder / "model.engine").write_bytes(b"engine")
        import tensorrt

        em.write_engine_manifest(folder, engine_manifest(
            tensorrt=tensorrt.__version__, gpu=state["gpu"], precision=options.precision, engine_bytes=6,
            source={"onnx": Path(onnx).name, "sha256": em.artifact_sha256(onnx)}))
        state["builds"].append(folder)
        return folder / "model.engine"

    monkeypatch.setattr("beit_deploy.trt.build.engine_from_onnx", fake_build)
    return state


def test_engines_are_reused_only_for_the_same_graph_tensorrt_and_gpu(tiny_export, machine, monkeypatch, tmp_path):
    export = tiny_export("classification")
    settings = BenchSettings(spec=ModelSpec("tiny"), device="cuda", batch_sizes=(1, 4), cache_dir=tmp_path)
    install(monkeypatch, version="10.13.0.35")
    first = bench_run.cached_engine(settings, export)
    assert bench_run.cached_engine(settings, export) == first and len(machine["builds"]) == 1
    assert first.parent.parent.parent.name.endswith(em.gpu_key("10.13.0.35", H100))
    install(monkeypatch, version="10.14.1.48")  # another TensorRT: another engine, the first one kept
    second = bench_run.cached_engine(settings, export)
    machine["gpu"] = A100  # another GPU
    third = bench_run.cached_engine(settings, export)
    assert len({first, second, third}) == 3 and len(machine["builds"]) == 3 and first.is_file()
    em.write_engine_manifest(third.parent, engine_manifest(tensorrt="10.14.1.48", gpu=H100, engine_bytes=6))
    bench_run.cached_engine(settings, export)  # its engine.json no longer matches: rebuilt
    assert len(machine["builds"]) == 4


def test_engine_cache_folder_names_graph_tensorrt_and_gpu(tmp_path):
    folder = bench_run.engine_cache_dir(tmp_path, "fp16", 32, "ab" * 32, "10.13.0.35", H100)
    assert folder == tmp_path / f"engines-fp16-b32-{'ab' * 8}-{em.gpu_key('10.13.0.35', H100)}"


def test_tensorrt_needs_cuda_in_the_benchmark(tiny_export, tmp_path):
    settings = BenchSettings(spec=ModelSpec("tiny"), device="cpu", cache_dir=tmp_path)
    with pytest.raises(Exception, match="--device cuda"):
        bench_run.cached_engine(settings, tiny_export("classification"))


def test_the_report_says_where_inputs_live():
    settings = BenchSettings(spec=ModelSpec("tiny"))
    assert settings_dict(settings, {})["inputs"] == INPUTS_POLICY
    assert "already on the device" in INPUTS_POLICY and "TensorRT" in INPUTS_POLICY
