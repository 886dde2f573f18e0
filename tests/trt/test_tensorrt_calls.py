"""What the TensorRT calls are given, against the stand-in `tensorrt` module (tests/trt/fake_tensorrt.py): the
fused-attention graph the parser gets, one logger, a refused profile, the engine bytes written without a copy,
execution contexts sharing one workspace, the CUDA error cleared after a failed capture, and a --tf32 engine
judged by its own bounds."""

from __future__ import annotations

import contextlib

import pytest

from beit_deploy.core import engine_manifest as em
from beit_deploy.core.errors import UsageError
from beit_deploy.core.manifest import read_manifest
from beit_deploy.exporter import parity
from beit_deploy.runtime import tensorrt_backend
from beit_deploy.runtime.tensorrt_backend import GraphCache, TensorRTBackend
from beit_deploy.trt import build as engine
from beit_deploy.trt.build import BuildOptions
from test_build import H100


@pytest.fixture
def fused_export(tiny_dir, tmp_path_factory):
    from beit_deploy.exporter.loading import ModelSpec
    from beit_deploy.exporter.pipeline import ExportOptions, export

    options = ExportOptions(resolutions=((64, 64),), out_dir=tmp_path_factory.mktemp("fused"), attention="fused")
    return export(ModelSpec(str(tiny_dir("classification"))), options)[0].folder


@pytest.fixture
def stand_in(monkeypatch):
    from fake_tensorrt import install

    def make(version: str = "11.4.0.106"):
        module = install(monkeypatch, version=version)
        monkeypatch.setattr(engine, "current_gpu", lambda device=0: H100)
        return module
    return make


def attention_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type == "Attention"]


def test_the_parser_gets_a_decomposable_copy_of_a_fused_graph(fused_export, stand_in, tmp_path):
    import onnx
    import onnxruntime as ort
    from fake_tensorrt import OnnxParser

    stand_in()
    [path] = engine.build(fused_export, BuildOptions(precision="fp32", out_dir=tmp_path))
    [(model, parsed_from)] = OnnxParser.parsed
    nodes = attention_nodes(model)
    original = onnx.load(str(fused_export / "model.onnx"), load_external_data=False)
    assert len(nodes) == len(attention_nodes(original)) == 4  # one per layer of the tiny model
    assert parsed_from == str(fused_export / "model.onnx")  # external weights are found from there
    assert all(onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "TRT_decomposable")) == 1
               for n in nodes)
    assert not any(a.name == "TRT_decomposable" for n in attention_nodes(original) for a in n.attribute)
    ort.InferenceSession(str(fused_export / "model.onnx"), providers=["CPUExecutionProvider"])  # still valid
    assert em.read_engine_manifest(path.parent).attention == {"form": "fused", "attention_nodes": 4,
                                                              "trt_decomposable": True}


def test_a_decomposed_graph_is_parsed_from_its_file(tiny_export, stand_in, tmp_path):
    from fake_tensorrt import OnnxParser

    stand_in()
    folder = tiny_export("classification")
    [path] = engine.build(folder, BuildOptions(precision="fp32", out_dir=tmp_path))
    assert OnnxParser.parsed[0][1] == str(folder / "model.onnx")
    assert em.read_engine_manifest(path.parent).attention == {"form": "decomposed"}


def test_fused_attention_is_refused_before_tensorrt_10_14(fused_export, stand_in, tmp_path):
    from fake_tensorrt import Builder

    stand_in("10.13.0.35")
    with pytest.raises(UsageError, match=r"cannot parse \(it needs 10.14 or newer\): export again with --attention "
                                         "decomposed"):
        engine.build(fused_export, BuildOptions(precision="fp32", out_dir=tmp_path))
    assert not Builder.built and not any(tmp_path.iterdir())


def test_one_logger_for_every_builder_parser_and_runtime(tiny_export, stand_in, tmp_path):
    from fake_tensorrt import Builder

    stand_in()
    folder = tiny_export("classification")
    engine.build(folder, BuildOptions(precision="fp32", out_dir=tmp_path / "a"))
    engine.build(folder, BuildOptions(precision="fp32", out_dir=tmp_path / "b"))
    assert len(Builder.loggers) == 4 and len({id(logger) for logger in Builder.loggers}) == 1


def test_a_refused_profile_is_an_error(tiny_export, stand_in, tmp_path):
    from fake_tensorrt import Config

    stand_in()
    Config.refuse_profiles = True
    with pytest.raises(em.TensorRTError, match=r"refused the batch profile \(1, 8, 32\)"):
        engine.build(tiny_export("classification"), BuildOptions(precision="fp32", out_dir=tmp_path))
    assert not any(tmp_path.glob("*/*/model.engine"))


def test_engine_bytes_are_written_from_tensorrts_buffer(tiny_export, stand_in):
    from fake_tensorrt import Builder

    stand_in()
    folder = tiny_export("classification")
    profile = engine.profile_shapes(read_manifest(folder).inputs, (1, 2, 4))
    data, _, _ = engine._serialize(folder / "model.onnx", profile, BuildOptions(out_dir=folder.parent), "k", False)
    assert isinstance(data, memoryview) and data.obj is Builder.serialized  # a view, not a copy


class Buffer:
    def __init__(self, size: int):
        self.size = size

    def data_ptr(self) -> int:
        return 0x7F0000000000


def test_contexts_share_one_user_managed_workspace(tmp_path, stand_in, monkeypatch):
    """The plain context and every CUDA-graph context: created USER_MANAGED, given the same one buffer of
    device_memory_size_v2 bytes, allocated once."""
    import torch
    from fake_tensorrt import Builder, Engine

    stand_in("10.13.0.35")
    (tmp_path / "model.engine").write_bytes(b"engine")
    from test_build import engine_manifest

    em.write_engine_manifest(tmp_path, engine_manifest(engine_bytes=6))
    monkeypatch.setattr(tensorrt_backend, "current_gpu", lambda device=0: H100)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: object())
    allocated: list[Buffer] = []
    monkeypatch.setattr(TensorRTBackend, "_allocate", lambda self, size: allocated.append(Buffer(size)) or
                        allocated[-1])
    backend = TensorRTBackend(tmp_path / "model.engine", None, cuda_graph=True)
    graph_contexts = [backend._new_context() for _ in range(4)]  # what _capture does for 4 batch sizes
    contexts = backend._engine.contexts
    assert contexts[0] is backend._context and contexts[1:] == graph_contexts
    assert [c.strategy for c in contexts] == ["USER_MANAGED"] * 5
    assert {c.memory for c in contexts} == {(0x7F0000000000, Engine.device_memory_size_v2)}
    assert [b.size for b in allocated] == [Engine.device_memory_size_v2]
    assert backend.device_memory_bytes == Engine.device_memory_size_v2 and (backend.min_batch, backend.max_batch) \
        == (1, 4)
    assert len({id(logger) for logger in Builder.loggers}) == 1
    backend.close()
    assert backend._workspace is None


def test_a_failed_capture_clears_the_pending_cuda_error():
    cleared = []

    def capture(batch):
        raise RuntimeError("operation not permitted when stream is capturing")

    cache = GraphCache(capture, lambda entry: None, after_failure=lambda: cleared.append(True))
    assert cache.get(2) is None and cache.get(2) is None  # the second time: known to fail, not captured again
    assert cleared == [True] and "not permitted" in cache.failed[2]
    assert tensorrt_backend.clear_cuda_error() is None  # no CUDA runtime in this process: nothing to clear


def test_a_tf32_engine_is_judged_by_tf32_bounds():
    from test_build import engine_manifest

    assert engine_manifest(precision="fp32", tf32=True).judged_as == "tf32"
    assert engine_manifest(precision="fp32", tf32=False).judged_as == "fp32"
    assert engine_manifest(precision="fp16", tf32=True).judged_as == "fp16"
    figures = parity.OutputParity("logits", max_abs=0.01, rel=3e-3, mean_abs=1e-3, cosine=0.99999)
    assert parity.threshold_failures("tf32", figures) == []
    assert [m for m, _ in parity.threshold_failures("fp32", figures)] == ["rel"]
