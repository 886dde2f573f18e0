"""The TensorRT stage up to the TensorRT call, on CPU: options, profiles, engine.json, compatibility, CLI refusal."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core import engine_manifest as em
from beit_deploy.core.engine_manifest import EngineManifest, GpuInfo
from beit_deploy.core.errors import ArtifactError, MissingDependencyError, UsageError
from beit_deploy.core.files import artifact_sha256
from beit_deploy.core.manifest import TensorSpec, resolution_folders
from beit_deploy.trt import build as engine
from beit_deploy.trt.build import BuildOptions

NO_TRT = importlib.util.find_spec("tensorrt") is None
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


def engine_manifest(**changes) -> EngineManifest:
    fields = dict(tensorrt="10.13.0.35", gpu=H100, precision="fp16",
                  source={"folder": "export/tiny/64x64", "onnx": "model.fp16.onnx", "sha256": "ab" * 32},
                  profile={"pixel_values": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}},
                  build_seconds=12.5, engine_bytes=1234, options={"workspace_gb": None, "opt_level": 3,
                                                                   "timing_cache": "engines/timing.cache"},
                  created="2026-01-01T00:00:00+0000")
    return EngineManifest(**{**fields, **changes})


@pytest.mark.parametrize("text, expected", [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), ("2:2:2", (2, 2, 2))])
def test_parse_batch(text, expected):
    assert engine.parse_batch(text) == expected


@pytest.mark.parametrize("text", ["8:1:32", "0:1:2", "1:8", "a:b:c", "1:2:3:4", ""])
def test_parse_batch_refuses(text):
    with pytest.raises(UsageError, match="MIN:OPT:MAX"):
        engine.parse_batch(text)


def test_build_options_validate():
    assert BuildOptions().cache_path("k") == engine.Path("engines/timing-k.cache")
    assert BuildOptions(timing_cache=engine.Path("/x/my.cache")).cache_path("k") == engine.Path("/x/my.cache")
    assert not BuildOptions().tf32
    with pytest.raises(UsageError, match="is not one of fp16, fp32, int8, fp8"):
        BuildOptions(precision="int4")
    with pytest.raises(UsageError, match="0..5"):
        BuildOptions(opt_level=7)
    with pytest.raises(UsageError, match="MIN:OPT:MAX"):
        BuildOptions(batch=(4, 2, 8))


def test_profile_covers_every_input_on_the_batch_axis():
    inputs = (TensorSpec("pixel_values", ("batch", 3, 224, 224), "float32"),
              TensorSpec("bool_masked_pos", ("batch", 196), "bool"))
    profile = engine.profile_shapes(inputs, (1, 8, 32))
    assert profile == {
        "pixel_values": {"min": (1, 3, 224, 224), "opt": (8, 3, 224, 224), "max": (32, 3, 224, 224)},
        "bool_masked_pos": {"min": (1, 196), "opt": (8, 196), "max": (32, 196)},
    }


def test_profile_refuses_other_dynamic_axes():
    with pytest.raises(ArtifactError, match="dynamic batch axis first"):
        engine.profile_shapes((TensorSpec("pixel_values", ("batch", 3, "height", 224), "float32"),), (1, 1, 1))


def test_profile_from_a_real_mim_export(tiny_export):
    from beit_deploy.core.manifest import read_manifest

    manifest = read_manifest(tiny_export("masked-image-modeling"))
    profile = engine.profile_shapes(manifest.inputs, (2, 4, 8))
    assert profile["bool_masked_pos"] == {"min": (2, 16), "opt": (4, 16), "max": (8, 16)}
    assert profile["pixel_values"]["max"] == (8, 3, 64, 64)


def test_strongly_typed_flag_only_on_tensorrt_10():
    assert engine.strongly_typed_flag_needed("10.13.0.35")
    assert not engine.strongly_typed_flag_needed("11.0.0")
    assert not engine.strongly_typed_flag_needed("11.4.1.2")


def test_engine_manifest_round_trip(tmp_path):
    original = engine_manifest()
    em.write_engine_manifest(tmp_path, original)
    assert json.loads((tmp_path / "engine.json").read_text())["gpu"] == {"name": H100.name,
                                                                         "compute_capability": "9.0"}
    assert em.read_engine_manifest(tmp_path) == original


def test_engine_manifest_without_tf32_still_reads(tmp_path):
    """engine.json files written before the tf32 field existed read as "not recorded"."""
    data = engine_manifest(tf32=False).to_dict()
    assert data["tf32"] is False
    del data["tf32"]
    (tmp_path / "engine.json").write_text(json.dumps(data))
    assert em.read_engine_manifest(tmp_path).tf32 is None


def test_engine_manifest_missing_or_broken(tmp_path):
    with pytest.raises(ArtifactError, match="has no engine.json"):
        em.read_engine_manifest(tmp_path)
    (tmp_path / "engine.json").write_text('{"format_version": 1, "tensorrt": "10"}')
    with pytest.raises(ArtifactError, match="not a valid engine manifest"):
        em.read_engine_manifest(tmp_path)
    (tmp_path / "engine.json").write_text('{"format_version": 99}')
    with pytest.raises(ArtifactError, match="format version 99"):
        em.read_engine_manifest(tmp_path)


def test_compatible_engine_passes(tmp_path):
    """engine.json read back from disk is compatible with the TensorRT and GPU it records (no error raised)."""
    written = engine_manifest()
    em.write_engine_manifest(tmp_path, written)
    again = em.read_engine_manifest(tmp_path)
    assert again == written and (again.tensorrt, again.gpu) == ("10.13.0.35", H100)
    assert em.check_engine_compatible(again, "10.13.0.35", H100) is None


def test_engine_from_another_tensorrt_is_refused():
    with pytest.raises(ArtifactError) as err:
        em.check_engine_compatible(engine_manifest(), "11.0.0.1", H100)
    message = str(err.value)
    assert "built with TensorRT 10.13.0.35" in message and "TensorRT 11.0.0.1" in message
    assert "beit-deploy build export/tiny/64x64" in message


@pytest.mark.parametrize("gpu", [GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"), GpuInfo("NVIDIA H200", "9.0")])
def test_engine_for_another_gpu_is_refused(gpu):
    with pytest.raises(ArtifactError) as err:
        em.check_engine_compatible(engine_manifest(), "10.13.0.35", gpu)
    message = str(err.value)
    assert f"built for {H100.name} (compute capability 9.0)" in message
    assert f"this machine has {gpu.name} (compute capability {gpu.compute_capability})" in message
    assert "rebuild it here" in message


def test_artifact_sha256_covers_external_data(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"graph")
    alone = artifact_sha256(tmp_path / "m.onnx")
    (tmp_path / "m.onnx.data").write_bytes(b"weights")
    (tmp_path / "m.onnx.bak").write_bytes(b"unrelated")
    assert artifact_sha256(tmp_path / "m.onnx") != alone


def test_resolution_folders(tiny_export, tmp_path):
    folder = tiny_export("classification")
    assert resolution_folders(folder) == {"64x64": folder}
    assert resolution_folders(folder.parent) == {"64x64": folder}
    with pytest.raises(UsageError, match="neither a resolution folder nor a model folder"):
        resolution_folders(tmp_path)


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot be shown")
def test_lazy_import_error_names_the_extra(tiny_export):
    with pytest.raises(MissingDependencyError) as err:
        engine.build(tiny_export("classification"), BuildOptions(precision="fp32"))
    assert "pip install 'beit-deploy[gpu]'" in str(err.value) and "NVIDIA GPU" in str(err.value)
    assert err.value.extra == "gpu"


def test_build_refuses_a_missing_precision_before_anything_else(tiny_export):
    with pytest.raises(UsageError, match="no fp16 graph.*--fp16"):
        engine.build(tiny_export("classification"), BuildOptions(precision="fp16"))


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot be shown")
def test_cli_build_without_tensorrt_says_so_in_one_line(tiny_export, tmp_path):
    folder = tiny_export("classification")
    result = CliRunner().invoke(main, ["build", str(folder), "--precision", "fp32", "--out", str(tmp_path)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "tensorrt" in lines[0] and "pip install 'beit-deploy[gpu]'" in lines[0]
    assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_modules_import_neither_tensorrt_nor_torch():
    code = ("import sys, beit_deploy.trt.build, beit_deploy.runtime.tensorrt_backend, beit_deploy.trt.inspect; "
            "print(sorted(m for m in ('tensorrt', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot be shown")
def test_backend_without_tensorrt_names_the_extra(tmp_path):
    from beit_deploy.runtime.tensorrt_backend import TensorRTBackend

    with pytest.raises(MissingDependencyError, match=r"beit-deploy\[gpu\]"):
        TensorRTBackend(tmp_path / "model.engine", None)


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("fp16", False), ("fp32", True)])
def test_build_with_a_stand_in_tensorrt(tiny_export, tmp_path, monkeypatch, precision, tf32):
    """Everything around the TensorRT calls, on CPU: TF32 cleared unless asked (and recorded), the strongly
    typed flag on 10.x, the batch profile, the keyed timing cache, engine.json, the copied manifest."""
    from fake_tensorrt import Builder, install

    install(monkeypatch)
    monkeypatch.setattr(engine, "current_gpu", lambda device=0: H100)
    folder = tiny_export("masked-image-modeling", fp16=True)
    options = BuildOptions(precision=precision, batch=(1, 2, 4), out_dir=tmp_path, tf32=tf32, workspace_gb=1)
    [path] = engine.build(folder, options)
    assert path == tmp_path / "tiny-masked-image-modeling" / "64x64" / "model.engine"
    assert path.read_bytes() == b"ENGINE:pixel_values,bool_masked_pos"
    [(network, config)] = Builder.built
    assert network.flags == 1 << 2 and config.cleared == ([] if tf32 else ["TF32"])
    assert config.pools == {"WORKSPACE": 2**30} and config.profiling_verbosity == "DETAILED"
    assert config.profiles[0].shapes["bool_masked_pos"] == ((1, 16), (2, 16), (4, 16))
    info = em.read_engine_manifest(path.parent)
    assert info.tf32 is tf32 and info.precision == precision and info.gpu == H100
    assert info.source["onnx"] == ("model.onnx" if precision == "fp32" else "model.fp16.onnx")
    assert info.source["sha256"] == artifact_sha256(folder / info.source["onnx"])
    cache = tmp_path / f"timing-{em.gpu_key('10.13.0.35', H100)}.cache"
    assert info.options["timing_cache"] == str(cache)
    assert json.loads(cache.read_bytes())["entries"] == ["tactic:bool_masked_pos", "tactic:pixel_values"]
    assert (path.parent / "manifest.json").read_text() == (folder / "manifest.json").read_text()


def test_tensorrt_11_needs_no_strongly_typed_flag(tiny_export, tmp_path, monkeypatch):
    from fake_tensorrt import Builder, install

    install(monkeypatch, version="11.4.0.106")
    monkeypatch.setattr(engine, "current_gpu", lambda device=0: H100)
    engine.build(tiny_export("classification"), BuildOptions(precision="fp32", out_dir=tmp_path))
    assert Builder.built[0][0].flags == 0


@pytest.mark.parametrize("factory", [lambda logger: None, lambda logger: (_ for _ in ()).throw(
    TypeError("pybind11::init(): factory function returned nullptr"))], ids=["None", "raises"])
def test_builder_or_runtime_failures_are_tensorrt_errors(factory):
    from beit_deploy.runtime.tensorrt_backend import trt_object

    with pytest.raises(em.TensorRTError, match="could not create its runtime.*nvidia-smi"):
        trt_object(factory, None, "runtime")
