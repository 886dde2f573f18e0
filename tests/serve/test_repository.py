"""`beit-deploy triton` without a server: generated configs, checked with Triton's own model-config protobuf
against the manifest and engine.json; the stages' code on numpy against the runner; untrusted names refused."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from click.testing import CliRunner
from serving import PHOTOS, needs_tritonclient

from beit_deploy import BeitTRTRunner
from beit_deploy.cli import main
from beit_deploy.core.engine_manifest import ENGINE_FILE, EngineManifest, GpuInfo, write_engine_manifest
from beit_deploy.core.errors import ArtifactError, UsageError
from beit_deploy.core.manifest import read_manifest
from beit_deploy.runtime import wire
from beit_deploy.serve import stages
from beit_deploy.serve.configs import MODEL, POSTPROCESS, PREPROCESS, stage_names
from beit_deploy.serve.pbtxt import quote
from beit_deploy.serve.repository import MODEL_PY, TritonOptions, write_repository
from beit_deploy.trt.build import profile_shapes

TYPES = {"float32": "TYPE_FP32", "bool": "TYPE_BOOL"}


def parse(path):
    """A config.pbtxt as Triton reads it: inference.ModelConfig from the text format."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def fake_engine(export, tmp_path, batch=(1, 4, 16)):
    """An engine folder as `beit-deploy build` writes it, with a stand-in engine (no TensorRT here)."""
    manifest = read_manifest(export)
    folder = tmp_path / "engines" / manifest.model / "64x64"
    folder.mkdir(parents=True)
    manifest.write_to(folder)
    (folder / ENGINE_FILE).write_bytes(b"serialized engine stand-in")
    profile = {k: {b: list(s) for b, s in v.items()} for k, v in profile_shapes(manifest.inputs, batch).items()}
    write_engine_manifest(folder, EngineManifest(
        tensorrt="10.13.0", gpu=GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), precision="fp16",
        source={"folder": str(export), "onnx": "model.fp16.onnx", "sha256": "0" * 64}, profile=profile,
        build_seconds=1.0, engine_bytes=26, options={}, created=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
    return folder


def check_io(config, manifest):
    """Inputs and outputs of a model stage: the manifest's names, dims without the batch axis, dtypes."""
    def listed(tensors):
        return [(t.name, list(t.dims), t.data_type) for t in tensors]

    def specs(items):
        return [(s.name, list(s.shape[1:]), _type(s.dtype)) for s in items]

    assert listed(config.input) == specs(manifest.inputs) and listed(config.output) == specs(manifest.outputs)


def _type(dtype):
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Value(TYPES[dtype])


@needs_tritonclient
def test_tensorrt_config_matches_engine_json(tiny_export, tmp_path):
    """The issue's "done when": an engine folder's tensorrt_plan config has the batch limits of engine.json."""
    export = tiny_export("masked-image-modeling")  # two inputs: pixel_values and bool_masked_pos
    engine = fake_engine(export, tmp_path)
    served, = write_repository([engine], TritonOptions(out=tmp_path / "repo", name="mim", instances=2))
    assert served.backend == "tensorrt"
    stage = tmp_path / "repo" / stage_names("mim")[MODEL]
    config, manifest = parse(stage / "config.pbtxt"), read_manifest(engine)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert [(g.kind, g.count) for g in config.instance_group] == [(config.instance_group[0].KIND_GPU, 2)]
    check_io(config, manifest)
    assert (stage / "1" / "model.plan").read_bytes() == (engine / ENGINE_FILE).read_bytes()
    assert config.default_model_filename == "model.plan" and not (stage / "1" / "model.py").exists()
    pre = parse(tmp_path / "repo" / stage_names("mim")[PREPROCESS] / "config.pbtxt")
    assert [o.name for o in pre.output] == ["pixel_values", "bool_masked_pos", wire.IMAGE_SIZE]
    ensemble = parse(tmp_path / "repo" / "mim" / "config.pbtxt")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 16
    model_step = ensemble.ensemble_scheduling.step[1]
    assert model_step.model_name == stage_names("mim")[MODEL]
    assert dict(model_step.input_map) == {"pixel_values": "pixel_values", "bool_masked_pos": "bool_masked_pos"}
    assert [o.name for o in ensemble.output] == [wire.TOKENS, wire.IMAGE_SIZE]
    assert list(ensemble.output[0].dims) == list(manifest.grid)


def test_engine_batch_limits_are_enforced(tiny_export, tmp_path):
    engine = fake_engine(tiny_export("classification"), tmp_path, batch=(1, 8, 32))
    with pytest.raises(UsageError, match="above the engine's profile"):
        write_repository([engine], TritonOptions(out=tmp_path / "repo", max_batch=64))
    served, = write_repository([engine], TritonOptions(out=tmp_path / "repo", max_batch=16))
    assert "max_batch_size: 16" in (tmp_path / "repo" / served.stages[MODEL] / "config.pbtxt").read_text()
    shutil.rmtree(engine.parent.parent.parent)
    with pytest.raises(UsageError, match="from 2"):
        write_repository([fake_engine(tiny_export("classification"), tmp_path, (2, 8, 32))],
                         TritonOptions(out=tmp_path / "repo2"))
    with pytest.raises(UsageError, match="no ONNX graph"):
        write_repository([engine], TritonOptions(out=tmp_path / "repo3", backend="onnxruntime"))
    with pytest.raises(UsageError, match="needs an engine folder"):
        write_repository([tiny_export("classification")], TritonOptions(out=tmp_path / "repo4", backend="tensorrt"))


@needs_tritonclient
def test_onnxruntime_config(tiny_export, tmp_path):
    export = tiny_export("classification", fp16=True)
    served, = write_repository([export], TritonOptions(out=tmp_path / "repo", name="cls", backend="onnxruntime",
                                                       precision="fp16", ort_tensorrt=True, preferred_batch=(4,)))
    stage = tmp_path / "repo" / served.stages[MODEL]
    config = parse(stage / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert config.default_model_filename == "model.fp16.onnx" and (stage / "1" / "model.fp16.onnx").is_file()
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    accelerator, = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    check_io(config, read_manifest(export))


@needs_tritonclient
def test_python_stages_and_their_files(tiny_export, tmp_path):
    export = tiny_export("segmentation")
    served, = write_repository([export], TritonOptions(out=tmp_path / "repo", max_queue_delay_us=500, top_k=3))
    repo = tmp_path / "repo"
    for stage in served.stages.values():
        config = parse(repo / stage / "config.pbtxt")
        assert config.backend == "python" and config.dynamic_batching.max_queue_delay_microseconds == 500
        assert (repo / stage / "1" / "model.py").read_text() == MODEL_PY  # static: no manifest data in code
        assert json.loads((repo / stage / "1" / "manifest.json").read_text()) == json.loads(
            (export / "manifest.json").read_text())
    assert (repo / served.stages[MODEL] / "1" / "model.onnx").is_file()
    post = parse(repo / served.stages[POSTPROCESS] / "config.pbtxt")
    assert post.parameters["top_k"].string_value == "3" and post.input[2].optional
    ensemble = parse(repo / served.name / "config.pbtxt")
    assert json.loads(ensemble.parameters["labels"].string_value) == {
        str(k): v for k, v in read_manifest(export).labels.items()}
    assert "beit-deploy serve" in (repo / "README.md").read_text()


@needs_tritonclient
def test_strings_are_escaped(tmp_path):
    """Labels reach config.pbtxt only as escaped text: quotes, backslashes, newlines and non-ASCII survive."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = 'a "quoted" back\\slash\nnew line, caf\u00e9, \u732b } parameters { key: "x"'
    config = text_format.Parse(f"name: {quote(text)}", model_config_pb2.ModelConfig())
    assert config.name == text


def test_untrusted_names_are_refused(tiny_export, tmp_path):
    export = tiny_export("classification")
    for name in ("../up", "a/b", "..", "", "x" * 101, "bad name"):
        with pytest.raises(UsageError, match="cannot name a Triton model"):
            write_repository([export], TritonOptions(out=tmp_path / "repo", name=name))
    for field, value, error in (("model", "../../evil", ArtifactError), ("artifacts", {"fp32": "../model.onnx"},
                                                                        ArtifactError)):
        bad = tmp_path / f"bad-{field}"
        shutil.copytree(export, bad)
        manifest = json.loads((bad / "manifest.json").read_text())
        manifest[field] = value
        (bad / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(error):
            write_repository([bad], TritonOptions(out=tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()  # nothing half-written


def test_out_never_replaces_an_export_or_another_folder(tiny_export, tmp_path):
    export = tiny_export("classification")
    for out in (export, export.parent, export / "repo"):
        with pytest.raises(UsageError, match="would replace or sit inside"):
            write_repository([export], TritonOptions(out=out))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a model repository"):
        write_repository([export], TritonOptions(out=tmp_path / "notes"))
    assert (export / "manifest.json").is_file() and (tmp_path / "notes" / "todo.txt").is_file()
    write_repository([export], TritonOptions(out=tmp_path / "repo", name="a"))
    write_repository([export], TritonOptions(out=tmp_path / "repo", name="b"))  # a repository is replaced
    assert sorted(p.name for p in (tmp_path / "repo").iterdir())[:2] == ["README.md", "b"]


def test_triton_cli(tiny_export, tmp_path):
    out = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", str(tiny_export("classification")), "--out", str(out), "--name",
                                       "cls", "--max-batch", "4", "--preferred-batch", "2"])
    assert result.exit_code == 0, result.stderr
    assert f"serve it: beit-deploy serve {out}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "cls", "cls_model", "cls_postprocess",
                                                     "cls_preprocess"]
    bad = CliRunner().invoke(main, ["triton", str(tiny_export("classification")), "--out", str(out), "--name",
                                    "../x"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("task", ["classification", "segmentation", "masked-image-modeling", "features"])
def test_stages_answer_like_the_runner(tiny_export, tmp_path, task):
    """preprocess -> model -> postprocess on numpy, as the server chains them, against BeitTRTRunner.predict."""
    served, = write_repository([tiny_export(task)], TritonOptions(out=tmp_path / "repo", name="m"))
    folder = {stage: tmp_path / "repo" / name / "1" for stage, name in served.stages.items()}
    pre = stages.Preprocess(folder[PREPROCESS], {})
    model = stages.Model(folder[MODEL], {"precision": "fp32"})
    post = stages.Postprocess(folder[POSTPROCESS], {"top_k": "3"})
    requests = [{wire.IMAGE: np.array([[p.read_bytes()]], dtype=object)} for p in PHOTOS]
    requests.append({wire.IMAGE: np.array([[b"not an image"]], dtype=object)})
    prepared = pre.run(requests)
    assert isinstance(prepared[-1], BaseException) and "not a readable image" in str(prepared[-1])
    raw = model.run([{k: v for k, v in p.items() if k != wire.IMAGE_SIZE} for p in prepared[:-1]])
    answers = post.run([{**r, wire.IMAGE_SIZE: p[wire.IMAGE_SIZE]} for r, p in zip(raw, prepared)])
    with BeitTRTRunner(tiny_export(task)) as runner:
        local = runner.predict(PHOTOS, top_k=3)
    for a, answer, p in zip(local, answers, prepared):
        row = {k: v[0] for k, v in answer.items()}
        b = wire.decode(task, row, tuple(p[wire.IMAGE_SIZE][0]))
        assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    model.close()


def test_wire_pads_and_drops_padding():
    from beit_deploy.runtime.postprocess import classify, segment

    labels = {0: "a", 1: "b", 2: "c"}
    small = segment(np.random.default_rng(0).normal(size=(3, 2, 2)), (3, 4), labels)
    large = segment(np.random.default_rng(1).normal(size=(3, 2, 2)), (5, 2), labels)
    stacked = wire.stack([wire.encode(small), wire.encode(large)])
    assert stacked[wire.LABEL_MAP].shape == (2, 5, 4) and stacked[wire.LABEL_MAP][0, 4, 0] == -1
    back = wire.decode("segmentation", {k: v[0] for k, v in stacked.items()}, (3, 4))
    np.testing.assert_array_equal(back.label_map, small.label_map)
    assert back.classes == small.classes
    top = [classify(np.array([1.0, 2.0, 3.0]), labels, k) for k in (1, 3)]
    rows = wire.stack([wire.encode(t) for t in top])
    assert [wire.decode("classification", {k: v[i] for k, v in rows.items()}, (1, 1)) for i in (0, 1)] == top
