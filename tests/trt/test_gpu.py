"""GPU checks: fp16 baked model vs eager on CUDA, TensorRT engines vs ONNX Runtime, ONNX Runtime's CUDA EP.

Run with `pytest -m "gpu or tensorrt"` (or `make gpu-check`) on a machine with an NVIDIA GPU. Each test skips
with the precise missing piece; none of them passes without running on the GPU.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NEEDS_CUDA = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU: torch.cuda.is_available() is False")
NEEDS_TRT = pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed: pip install 'beit-deploy[gpu]'")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Lowest per-sample cosine similarity of two (B, ...) arrays."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def feeds_for(folder, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    from beit_deploy.core.manifest import read_manifest

    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in read_manifest(folder).inputs:
        shape = [batch if d == "batch" else d for d in spec.shape]
        feeds[spec.name] = rng.random(shape) > 0.5 if spec.dtype == "bool" else rng.standard_normal(shape,
                                                                                                   np.float32)
    return feeds


def ort_reference(folder, feeds) -> dict[str, np.ndarray]:
    """Outputs of the fp32 graph on ONNX Runtime's CPU provider (checked against eager at export)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.gpu
@NEEDS_CUDA
@pytest.mark.parametrize("task", ["classification", "masked-image-modeling"])
def test_fp16_baked_model_matches_eager_on_cuda(task, monkeypatch):
    from beit_deploy.exporter.bake import bake
    from conftest import tiny_model

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager = tiny_model(task).cuda()
    baked = bake(tiny_model(task), (64, 64))
    x = torch.randn(4, 3, 64, 64, device="cuda")
    kwargs = {"bool_masked_pos": torch.rand(4, 16, device="cuda") > 0.5} if task == "masked-image-modeling" else {}
    with torch.no_grad():
        ref = eager(x, **kwargs).logits.float().cpu().numpy()
        fp32 = baked.cuda()(x, **kwargs).logits.float().cpu().numpy()
        fp16 = baked.half()(x.half(), **kwargs).logits.float().cpu().numpy()
    assert rel(fp32, ref) < 1e-4
    assert cosine(fp16, ref) > 0.999 and rel(fp16, ref) < 2e-2


def trt_version() -> tuple[int, int]:
    import tensorrt as trt

    return tuple(int(p) for p in trt.__version__.split(".")[:2])


@pytest.fixture(scope="module")
def engines(tiny_export, tiny_dir, tmp_path_factory):
    """(export folder, engine file) for tiny classification fp16/fp32 (batch profile 1:2:4), MIM fp16 (profile
    2:2:4, so a single image must be padded), and, on TensorRT 10.14+, classification fp16 with fused attention."""
    from beit_deploy.exporter.loading import ModelSpec
    from beit_deploy.exporter.pipeline import ExportOptions, export
    from beit_deploy.trt.build import BuildOptions, build

    out = tmp_path_factory.mktemp("engines")
    wanted = [("classification", "fp16", (1, 2, 4)), ("classification", "fp32", (1, 2, 4)),
              ("masked-image-modeling", "fp16", (2, 2, 4))]
    built = {}
    for task, precision, batch in wanted:
        folder = tiny_export(task, fp16=True)
        options = BuildOptions(precision=precision, batch=batch, out_dir=out / precision)
        built[task, precision] = folder, build(folder, options)[0]
    if trt_version() >= (10, 14):
        options = ExportOptions(resolutions=((64, 64),), fp16=True, out_dir=out / "fused-export", attention="fused")
        folder = export(ModelSpec(str(tiny_dir("classification"))), options)[0].folder
        options = BuildOptions(batch=(1, 2, 4), out_dir=out / "fused")
        built["classification", "fused"] = folder, build(folder, options)[0]
    return built


@pytest.mark.tensorrt
@NEEDS_CUDA
@NEEDS_TRT
@pytest.mark.parametrize("task, precision", [("classification", "fp16"), ("classification", "fp32"),
                                             ("masked-image-modeling", "fp16"), ("classification", "fused")])
def test_engine_matches_onnx_runtime(engines, task, precision):
    if (task, precision) not in engines:
        pytest.skip("TensorRT < 10.14: its ONNX parser does not read the Attention op (export --attention fused)")
    from beit_deploy.core.manifest import read_manifest
    from beit_deploy.runtime.tensorrt_backend import TensorRTBackend

    folder, engine_file = engines[task, precision]
    feeds = feeds_for(folder, batch=3)
    ref = ort_reference(folder, feeds)
    with TensorRTBackend(engine_file, read_manifest(folder), device=0) as backend:
        assert backend.max_batch == 4 and backend.input_names == list(feeds)
        got = backend.run(feeds)
    for name, value in ref.items():
        assert got[name].dtype == np.float32 and got[name].shape == value.shape
        if precision == "fp32":  # TF32 is off in fp32 engines: the export's own fp32 bound holds
            assert rel(got[name], value) <= 1e-4, rel(got[name], value)
        else:
            assert cosine(got[name], value) > 0.999


@pytest.mark.tensorrt
@NEEDS_CUDA
@NEEDS_TRT
def test_engine_manifest_describes_the_build(engines):
    import tensorrt as trt

    from beit_deploy.core.engine_manifest import current_gpu, read_engine_manifest
    from beit_deploy.core.files import artifact_sha256

    folder, engine_file = engines["classification", "fp16"]
    from beit_deploy.core.engine_manifest import gpu_key

    info = read_engine_manifest(engine_file.parent)
    assert info.tensorrt == trt.__version__ and info.gpu == current_gpu() and info.tf32 is False
    assert info.attention == {"form": "decomposed"}
    if ("classification", "fused") in engines:  # built from a TRT_decomposable=1 copy of the fused graph
        fused = read_engine_manifest(engines["classification", "fused"][1].parent)
        assert fused.attention == {"form": "fused", "attention_nodes": 4, "trt_decomposable": True}
    assert info.source["sha256"] == artifact_sha256(folder / "model.fp16.onnx")
    assert info.profile["pixel_values"] == {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}
    assert info.engine_bytes == engine_file.stat().st_size > 0
    assert (engine_file.parent / "manifest.json").is_file()
    cache = engine_file.parent.parent.parent / f"timing-{gpu_key(trt.__version__, current_gpu())}.cache"
    assert info.options["timing_cache"] == str(cache) and cache.stat().st_size > 0


@pytest.mark.tensorrt
@NEEDS_CUDA
@NEEDS_TRT
def test_cuda_tensors_cuda_graph_and_batch_limits(engines):
    from beit_deploy.core.errors import UsageError
    from beit_deploy.core.manifest import read_manifest
    from beit_deploy.runtime.tensorrt_backend import TensorRTBackend

    folder, engine_file = engines["classification", "fp16"]
    feeds = feeds_for(folder, batch=2, seed=1)
    with TensorRTBackend(engine_file, read_manifest(folder)) as plain:
        ref = plain.run(feeds)["logits"]
        on_gpu = plain.run({"pixel_values": torch.from_numpy(feeds["pixel_values"]).cuda()})["logits"]
        with pytest.raises(UsageError, match="profile 1..4"):
            plain.run(feeds_for(folder, batch=5))
    np.testing.assert_allclose(on_gpu, ref, rtol=0, atol=1e-3 * np.abs(ref).max())
    three = feeds_for(folder, batch=3, seed=2)
    with TensorRTBackend(engine_file, read_manifest(folder)) as plain:
        ref3 = plain.run(three)["logits"]
    with TensorRTBackend(engine_file, read_manifest(folder), cuda_graph=True) as graphed:
        assert graphed.device_memory_bytes == graphed._engine.device_memory_size_v2  # one workspace, shared
        first, again = graphed.run(feeds)["logits"], graphed.run(feeds)["logits"]
        graph_of_2 = graphed._graphs.entries[2]
        other = graphed.run(three)["logits"]
        back = graphed.run(feeds)["logits"]  # back to batch 2: the same graph, replayed, not recaptured
        assert list(graphed._graphs.entries) == [3, 2] and graphed._graphs.entries[2] is graph_of_2
        assert not graphed._graphs.failed
    for out in (first, again, back):
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3 * np.abs(ref).max())
    np.testing.assert_allclose(other, ref3, rtol=0, atol=1e-3 * np.abs(ref3).max())


@pytest.mark.tensorrt
@NEEDS_CUDA
@NEEDS_TRT
def test_engine_from_another_tensorrt_is_refused_on_load(engines, tmp_path):
    import shutil

    from beit_deploy.core.errors import ArtifactError
    from beit_deploy.runtime.tensorrt_backend import TensorRTBackend

    folder, engine_file = engines["classification", "fp16"]
    copy = shutil.copytree(engine_file.parent, tmp_path / "copy")
    data = json.loads((copy / "engine.json").read_text())
    (copy / "engine.json").write_text(json.dumps({**data, "tensorrt": "9.0.0"}))
    with pytest.raises(ArtifactError, match="built with TensorRT 9.0.0"):
        TensorRTBackend(copy / "model.engine", None)


@pytest.mark.tensorrt
@NEEDS_CUDA
@NEEDS_TRT
def test_inspect_engine(engines):
    from beit_deploy.trt.inspect import format_report, inspect_path

    _, engine_file = engines["masked-image-modeling", "fp16"]
    report = inspect_path(engine_file)
    assert [t["name"] for t in report["inputs"]] == ["pixel_values", "bool_masked_pos"]
    assert report["inputs"][1]["profile"] == [[2, 16], [2, 16], [4, 16]]
    assert report["outputs"][0]["name"] == "logits" and report["layers"] > 0
    print(format_report(report))  # shows in the gpu-check log: layer types, fused attention


@pytest.mark.gpu
@NEEDS_CUDA
def test_onnxruntime_cuda_provider(tiny_export):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (a CPU build): "
                    "pip install onnxruntime-gpu")
    folder = tiny_export("classification", fp16=True)
    feeds = feeds_for(folder, batch=3)
    ref = ort_reference(folder, feeds)["logits"]
    for file, check in [("model.onnx", lambda got: rel(got, ref) < 1e-3), ("model.fp16.onnx",
                                                                             lambda got: cosine(got, ref) > 0.999)]:
        session = ort.InferenceSession(str(folder / file), providers=["CUDAExecutionProvider"])
        assert session.get_providers()[0] == "CUDAExecutionProvider"
        assert check(session.run(["logits"], feeds)[0])


@pytest.mark.tensorrt
@NEEDS_CUDA
@NEEDS_TRT
def test_engine_folder_opens_in_the_runner_and_pads_below_the_profile_minimum(engines):
    """engines/<m>/<HxW> opens as a folder; one image on a MIN=2 profile is padded to 2 and the pad dropped."""
    from beit_deploy.runtime.runner import BeitTRTRunner

    folder, engine_file = engines["masked-image-modeling", "fp16"]
    feeds = feeds_for(folder, batch=3, seed=3)
    ref = ort_reference(folder, feeds)["logits"]
    with BeitTRTRunner(engine_file.parent) as runner:
        assert runner.backend.name == "tensorrt" and runner.backend.min_batch == 2 and runner.precision == "fp16"
        one = runner.run(feeds["pixel_values"][:1], bool_masked_pos=feeds["bool_masked_pos"][:1])["logits"]
        three = runner.run(feeds["pixel_values"], bool_masked_pos=feeds["bool_masked_pos"])["logits"]
    assert one.shape == (1, 16, 50) and cosine(one, ref[:1]) > 0.999 and cosine(three, ref) > 0.999


@pytest.mark.tensorrt
@NEEDS_CUDA
@NEEDS_TRT
def test_verify_finds_and_runs_the_engine_build_wrote(engines, tmp_path, monkeypatch):
    """The 5 sample photos on an engine of profile 1:2:4: verify splits them as the runner does."""
    import shutil

    from beit_deploy.proof.verify import parity_report

    folder, engine_file = engines["classification", "fp32"]
    monkeypatch.chdir(tmp_path)  # build's default: engines/<model>/<H>x<W> under the working directory
    shutil.copytree(engine_file.parent, tmp_path / "engines" / engine_file.parent.parent.name / "64x64")
    report = parity_report(folder, random=1)
    engine = next(a for a in report.artifacts if a.name == "engine")
    assert engine.skipped is None and engine.precision == "fp32" and report.passed, report.table()
    assert engine.outputs[0].rel <= 1e-4
