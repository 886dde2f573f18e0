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
from beit_deploy.core.files import file_sha256
from beit_deploy.core.manifest import read_manifest
from beit_deploy.runtime import wire
from beit_deploy.serve import stages
from beit_deploy.serve.configs import MODEL, POSTPROCESS, PREPROCESS, stage_names
from beit_deploy.serve.pbtxt import quote
from beit_deploy.serve.repository import MODEL_PY, TritonOptions, write_repository
from beit_deploy.trt.build import profile_shapes

TYPES = {"float32": "TYPE_FP32", "bool": "TYPE_BOOL"}
try:
    from tritonclient.grpc import model_config_pb2
except ImportError:  # the tests that need it are marked needs_tritonclient
    model_config_pb2 = None


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
    assert post.parameters["top_k"].string_value == "3"
    ensemble = parse(repo / served.name / "config.pbtxt")
    assert json.loads(ensemble.parameters["labels"].string_value) == {
        str(k): v for k, v in read_manifest(export).labels.items()}
    assert "beit-deploy serve" in (repo / "README.md").read_text()
    # a label map has no top-k; it travels in the smallest integer type, fractions in FP32
    assert [i.name for i in ensemble.input] == [wire.IMAGE] and [i.name for i in post.input][-1] == wire.IMAGE_SIZE
    types = {o.name: model_config_pb2.DataType.Name(o.data_type) for o in ensemble.output}
    assert types[wire.LABEL_MAP] == "TYPE_UINT8" and types[wire.FRACTIONS] == "TYPE_FP32"
    for stage in (*served.stages.values(), served.name):  # beit-deploy's mark, with the hashes of the files
        mark = json.loads((repo / stage / "beit-deploy.json").read_text())
        assert mark["written_by"] == "beit-deploy triton" and mark["ensemble"] == served.name
        for name, digest in mark["files"].items():
            assert file_sha256(repo / stage / name) == digest


@needs_tritonclient
def test_classifier_outputs_for_any_kserve_client(tiny_export, tmp_path):
    """FP32 scores, TOP_K, and PROBABILITIES over every class with labels.txt as its label_filename."""
    export = tiny_export("classification")
    served, = write_repository([export], TritonOptions(out=tmp_path / "repo", name="cls"))
    ensemble = parse(tmp_path / "repo" / "cls" / "config.pbtxt")
    outputs = {o.name: o for o in ensemble.output}
    assert model_config_pb2.DataType.Name(outputs[wire.SCORES].data_type) == "TYPE_FP32"
    assert outputs[wire.PROBABILITIES].label_filename == "labels.txt" and list(outputs[wire.PROBABILITIES].dims) == [5]
    assert (tmp_path / "repo" / "cls" / "labels.txt").read_text().splitlines() == ["cat", "dog", "rocket", "coffee",
                                                                                   "camera"]
    assert [i.name for i in ensemble.input] == [wire.IMAGE, wire.TOP_K]


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


def test_out_never_sits_inside_an_export(tiny_export, tmp_path):
    export = tiny_export("classification")
    for out in (export, export / "repo"):
        with pytest.raises(UsageError, match="would sit inside"):
            write_repository([export], TritonOptions(out=out))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        write_repository([export], TritonOptions(out=tmp_path / "file"))


def test_triton_adds_to_a_repository(tiny_export, tmp_path):
    """The everyday workflow: models are added to a repository that holds other models and files, all kept."""
    repo, export = tmp_path / "repo", tiny_export("classification")
    theirs = {"src/main.py": "print('keep me')", "other/config.pbtxt": 'backend: "onnxruntime"',
              "other/1/model.onnx": "graph", "datasets/a.txt": "data", "NOTES.md": "notes"}
    for name, text in theirs.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    write_repository([export], TritonOptions(out=repo, name="a"))
    write_repository([export], TritonOptions(out=repo, name="b"))
    first = (repo / "a_model" / "1" / "model.onnx").stat().st_ino
    write_repository([export], TritonOptions(out=repo, name="a", top_k=2))  # ours: replaced, whole
    assert all((repo / name).read_text() == text for name, text in theirs.items())
    assert {p.name for p in repo.iterdir()} >= {"a", "a_model", "a_preprocess", "a_postprocess", "b", "b_model"}
    assert (repo / "a_model" / "1" / "model.onnx").stat().st_ino != first
    assert 'string_value: "2"' in (repo / "a_postprocess" / "config.pbtxt").read_text()
    readme = (repo / "README.md").read_text()
    assert "| `a` |" in readme and "| `b` |" in readme  # lists every model of ours
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no partial folders left


def test_a_name_taken_by_another_model_is_refused(tiny_export, tmp_path):
    repo, export = tmp_path / "repo", tiny_export("classification")
    (repo / "cls_postprocess" / "1").mkdir(parents=True)
    (repo / "cls_postprocess" / "config.pbtxt").write_text('backend: "python"')
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    result = CliRunner().invoke(main, ["triton", str(export), "--out", str(repo), "--name", "cls"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "cls_postprocess' exists and was not written by `beit-deploy triton`; nothing was changed" in result.stderr
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before


def test_out_dot_and_names_export_makes(tiny_export, tmp_path, monkeypatch):
    """`--out .` adds the models to the current folder; a model name `export` allows (a leading '_', '+')
    becomes a Triton name instead of a refusal."""
    export = tmp_path / "export" / "_tiny+model" / "64x64"
    shutil.copytree(tiny_export("classification"), export)
    manifest = json.loads((export / "manifest.json").read_text())
    (export / "manifest.json").write_text(json.dumps({**manifest, "model": "_tiny+model"}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["triton", str(export), "--out", "."])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "tiny_model" / "config.pbtxt").is_file() and (tmp_path / "export").is_dir()
    assert result.stdout.startswith("tiny_model: classification")


def _external_data_export(export, tmp_path):
    """A copy of `export` whose graph keeps its weights in model.onnx.data, listed in its manifest as export
    writes large graphs."""
    import onnx

    from beit_deploy.core.manifest import artifact_hashes

    folder = tmp_path / "ext" / "64x64"
    shutil.copytree(export, folder)
    onnx.save(onnx.load(folder / "model.onnx"), folder / "model.onnx", save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = artifact_hashes(folder, manifest["artifacts"])
    manifest["graph"]["fp32"]["bytes"] = sum((folder / n).stat().st_size for n in ("model.onnx", "model.onnx.data"))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_external_data_is_contained_and_hash_checked(tiny_export, tmp_path):
    export = tiny_export("classification")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    # not in the manifest: a planted model.onnx.data is never copied
    planted = tmp_path / "planted" / "64x64"
    shutil.copytree(export, planted)
    (planted / "model.onnx.data").symlink_to(secret)
    served, = write_repository([planted], TritonOptions(out=tmp_path / "repo", name="p"))
    assert sorted(p.name for p in (tmp_path / "repo" / "p_model" / "1").iterdir()) == [
        "manifest.json", "model.onnx", "model.py"]
    # listed: copied and checked; a link out of the folder, or other bytes, are refused
    external = _external_data_export(export, tmp_path)
    write_repository([external], TritonOptions(out=tmp_path / "repo", name="e"))
    copy = tmp_path / "repo" / "e_model" / "1" / "model.onnx.data"
    assert copy.read_bytes() == (external / "model.onnx.data").read_bytes()
    data = (external / "model.onnx.data").read_bytes()
    (external / "model.onnx.data").unlink()
    (external / "model.onnx.data").symlink_to(secret)
    with pytest.raises(ArtifactError):
        write_repository([external], TritonOptions(out=tmp_path / "repo", name="e2"))
    (external / "model.onnx.data").unlink()
    (external / "model.onnx.data").write_bytes(data[:-4] + b"\0\0\0\1")
    with pytest.raises(ArtifactError, match="sha256"):
        write_repository([external], TritonOptions(out=tmp_path / "repo", name="e3"))
    assert not (tmp_path / "repo" / "e2_model").exists() and not (tmp_path / "repo" / "e3_model").exists()
    assert "password" not in "".join(p.read_text(errors="replace") for p in (tmp_path / "repo").rglob("*")
                                     if p.is_file())


def test_nonsense_options_are_one_line(tiny_export, tmp_path):
    export = tiny_export("classification")
    result = CliRunner().invoke(main, ["triton", str(export), "--out", str(tmp_path / "r"), "--instances", "100000"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "at most" not in result.stdout
    assert "more than 64 per stage" in result.stderr and not (tmp_path / "r").exists()


def test_onnxruntime_stage_says_the_bundled_server_cannot_run_it(tiny_export, tmp_path):
    result = CliRunner().invoke(main, ["triton", str(tiny_export("classification")), "--out", str(tmp_path / "r"),
                                       "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.stderr
    assert "the bundled CPU server" in result.stderr and "--backend python" in result.stderr


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
        assert_same_dict(a.to_dict(), b.to_dict())
        if task == "segmentation":
            assert answer[wire.LABEL_MAP].dtype == np.uint8
    model.close()


def assert_same_dict(a, b):
    """Equal answers, floats within FP32's precision (scores and fractions travel as FP32)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_dict(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_dict(x, y)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-7)
    else:
        assert a == b


def test_wire_pads_and_drops_padding():
    from beit_deploy.runtime.postprocess import classify, segment

    labels = {0: "a", 1: "b", 2: "c"}
    small = segment(np.random.default_rng(0).normal(size=(3, 2, 2)), (3, 4), labels)
    large = segment(np.random.default_rng(1).normal(size=(3, 2, 2)), (5, 2), labels)
    stacked = wire.stack([wire.encode(small), wire.encode(large)])
    assert stacked[wire.LABEL_MAP].shape == (2, 5, 4) and stacked[wire.LABEL_MAP][0, 4, 0] == 255
    back = wire.decode("segmentation", {k: v[0] for k, v in stacked.items()}, (3, 4))
    np.testing.assert_array_equal(back.label_map, small.label_map)
    assert_same_dict(back.to_dict(), small.to_dict())
    top = [classify(np.array([1.0, 2.0, 3.0]), labels, k) for k in (1, 3)]
    rows = wire.stack([wire.encode(t) for t in top])
    back = [wire.decode("classification", {k: v[i] for k, v in rows.items()}, (1, 1)) for i in (0, 1)]
    assert_same_dict([b.to_dict() for b in back], [t.to_dict() for t in top])
