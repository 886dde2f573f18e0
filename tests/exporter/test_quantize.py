"""Quantized graphs on tiny models: made by ModelOpt and by the ONNX Runtime fallback, run on ONNX Runtime CPU,
meet their thresholds, say how they were made; calibration photos, placement fallback, failures."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core.errors import MissingDependencyError, ParityError, UsageError
from beit_deploy.core.manifest import read_manifest
from beit_deploy.exporter import parity, quantize, quantize_tools
from beit_deploy.exporter.loading import ModelSpec
from beit_deploy.exporter.pipeline import ExportOptions, export
from beit_deploy.exporter.quantize import QuantizeOptions
from beit_deploy.runtime.runner import BeitTRTRunner
from beit_deploy.trt.inspect import format_report, inspect_onnx
from conftest import TASKS

HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None
needs_modelopt = pytest.mark.skipif(not HAS_MODELOPT, reason="nvidia-modelopt is not installed (the quantize extra; "
                                    "make test installs it): the ModelOpt path cannot run here")
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "images"


@pytest.fixture(scope="module")
def quantized(tiny_dir, tmp_path_factory):
    """quantized(task, tool) -> resolution folder exported with --int8 --int8-cpu (and --fp8 with ModelOpt)."""
    @functools.cache
    def make(task: str, tool: str) -> Path:
        options = QuantizeOptions(int8=True, int8_cpu=True, fp8=tool == "modelopt", tool=tool)
        out = tmp_path_factory.mktemp(f"quant-{tool}")
        return export(ModelSpec(str(tiny_dir(task))), ExportOptions(resolutions=((64, 48),), out_dir=out,
                                                                    quantize=options))[0].folder
    return make


def _check_export(folder: Path, tool: str, precisions: tuple[str, ...]):
    manifest = read_manifest(folder)
    for precision in precisions:
        assert (folder / quantize.FILES[precision]).is_file()
        assert manifest.artifacts[precision] == quantize.FILES[precision]
        figures = manifest.parity[precision]
        assert figures["passed"] and figures["thresholds"] == parity.THRESHOLDS[precision]
        assert all(o["cosine"] >= parity.THRESHOLDS[precision]["cosine"] for o in figures["outputs"])
        info = manifest.quantization[precision]
        assert info["version"] not in ("", "not installed") and info["high_precision"] == "fp32"
        if precision == "int8cpu":
            assert info["tool"] == "onnxruntime" and info["qdq"]["quantized"]["MatMulInteger"] > 0
            continue
        assert info["tool"] == tool and info["method"] == "max"
        assert info["calibration"] == {"images": 5, "source": "the parity photos", "skipped": []}
        assert isinstance(info["placement"]["attention_qdq"], bool) and info["placement"]["reason"]
        assert info["qdq"]["QuantizeLinear"] > 0 and info["qdq"]["quantized"]["MatMul"] > 0
        assert info["qdq"]["types"] == [precision]
    return manifest


@needs_modelopt
@pytest.mark.parametrize("task", TASKS)
def test_modelopt_graphs_every_head(task, quantized):
    manifest = _check_export(quantized(task, "modelopt"), "modelopt", ("int8", "fp8", "int8cpu"))
    if task == "segmentation":
        assert manifest.quantization["int8"]["placement"]["decoder"] in ("quantized", "float")


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_onnxruntime_fallback(task, quantized):
    manifest = _check_export(quantized(task, "onnxruntime"), "onnxruntime", ("int8", "int8cpu"))
    assert "fp8" not in manifest.artifacts
    assert manifest.quantization["int8"]["tool_reason"].startswith("asked for")


def test_head_layernorm_and_bias_add_stay_float(quantized):
    folder = quantized("classification", "onnxruntime")
    model = quantize_tools.load_graph(folder / "model.int8.onnx")
    quantized_nodes = set(quantize_tools.qdq_counts(folder / "model.int8.onnx")["quantized_nodes"])
    kept = set(quantize_tools.float_nodes(folder / "model.onnx", "classification"))
    assert kept and not kept & quantized_nodes
    assert not any(n.op_type in ("LayerNormalization", "Softmax", "Add") for n in model.graph.node
                   if n.name in quantized_nodes)


def test_runner_int8_opts_in_and_cpu_default_stays_fp32(quantized):
    folder = quantized("classification", "onnxruntime")
    with BeitTRTRunner(folder) as default, BeitTRTRunner(folder, precision="int8") as int8, \
            BeitTRTRunner(folder, precision="int8", backend="cpu") as cpu, \
            BeitTRTRunner(folder / "model.int8.onnx") as qdq:
        assert default.precision == "fp32" and int8.precision == "int8cpu" and cpu.precision == "int8cpu"
        assert qdq.precision == "int8"
        pixels = default.preprocess(parity.sample_images()[:2])
        ref = default.run(pixels)["logits"]
        for runner in (int8, qdq):
            got = runner.run(pixels)["logits"]
            assert np.sum(ref * got) / np.linalg.norm(ref) / np.linalg.norm(got) > 0.999
        assert len(int8.predict(parity.sample_images()[0]).top_k) == 5


def test_inspect_counts_qdq(quantized):
    folder = quantized("classification", "onnxruntime")
    report = inspect_onnx(folder / "model.int8.onnx")
    q = report["quantization"]
    assert q["QuantizeLinear"] > 0 and q["DequantizeLinear"] >= q["QuantizeLinear"] and q["types"] == ["int8"]
    assert "quantized layers: MatMul" in format_report(report)
    assert inspect_onnx(folder / "model.onnx")["quantization"]["quantized"] == {}


@needs_modelopt
def test_modelopt_gets_a_copy_in_its_own_process(tiny_export, monkeypatch, tmp_path):
    folder = shutil.copytree(tiny_export("classification"), tmp_path / "export")
    fp32 = folder / "model.onnx"
    before = hashlib.sha256(fp32.read_bytes()).hexdigest()
    seen = []

    pool = quantize_tools._modelopt_pool()

    class Spy:
        def submit(self, fn, onnx_path, settings):
            seen.append(onnx_path)
            return pool.submit(fn, onnx_path, settings)

    monkeypatch.setattr(quantize_tools, "_modelopt_pool", Spy)
    calibration = quantize.Calibration({"pixel_values": np.zeros((2, 3, 64, 64), np.float32)}, "test")
    quantize_tools.qdq("modelopt", "int8", fp32, folder / "model.int8.onnx", calibration, "max", [], True)
    assert seen and Path(seen[0]) != fp32 and not Path(seen[0]).exists()  # a private copy, removed afterwards
    assert hashlib.sha256(fp32.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    assert "modelopt" not in __import__("sys").modules  # ONNX Runtime's quantizer here was never patched


def _photos(folder: Path, n: int, broken: int = 0) -> Path:
    folder.mkdir()
    for photo in parity.sample_images()[:n]:
        shutil.copy(photo, folder / photo.name)
    for i in range(broken):
        (folder / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    return folder


def test_calibration_skips_a_bad_image_and_warns(tiny_export, tmp_path, capfd):
    manifest = read_manifest(tiny_export("masked-image-modeling"))
    cal = quantize.calibration_set(_photos(tmp_path / "cal", 2, broken=1), list(manifest.inputs),
                                   manifest.preprocessing)
    err = capfd.readouterr().err
    assert cal.count == 2 and cal.skipped == ("broken0.jpg",)
    assert cal.feeds["pixel_values"].shape == (2, 3, 64, 64) and cal.feeds["bool_masked_pos"].shape == (2, 16)
    assert sum("skipping" in line and "broken0.jpg" in line for line in err.splitlines()) == 1
    assert "fewer than 64" in err and "--calibration DIR" in err


def test_no_readable_calibration_photo_is_one_clear_error(tiny_export, tmp_path):
    manifest = read_manifest(tiny_export("classification"))
    with pytest.raises(UsageError, match="no readable calibration photos"):
        quantize.calibration_set(_photos(tmp_path / "cal", 0, broken=2), list(manifest.inputs), manifest.preprocessing)


def _parity(cosine: float) -> parity.Parity:
    out = parity.OutputParity("logits", 0.1, 0.01, 0.01, cosine)
    failures = tuple(f"logits {m}: {d}" for m, d in parity.threshold_failures("int8", out))
    return parity.Parity("int8", 8, (out,), failures)


@pytest.mark.parametrize("task, rungs", [("classification", [(True, False), (False, False)]),
                                         ("segmentation", [(True, False), (False, False), (False, True)])])
def test_placement_falls_back_with_the_reason(task, rungs, tmp_path):
    made = []
    judged = iter([_parity(0.99), _parity(0.9995)])
    result, info = quantize._placed("int8", task, tmp_path / "q.onnx", lambda *_: next(judged), None,
                                    lambda a, d: made.append((a, d)) or {"tool": "x"})
    assert made == rungs[:2] and result.passed
    assert info["placement"]["attention_qdq"] is False and "attention Q/DQ on" in info["placement"]["reason"]
    assert "0.990000 < 0.999" in info["placement"]["reason"]
    with pytest.raises(ParityError, match="attention Q/DQ on .*attention Q/DQ off"):
        quantize._placed("int8", task, tmp_path / "q.onnx", lambda *_: _parity(0.9), None, lambda a, d: {})


def test_missed_threshold_fails_the_export_and_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.THRESHOLDS, "int8cpu", {"cosine": 1.5})
    with pytest.raises(ParityError, match="int8cpu graph misses"):
        export(ModelSpec(str(tiny_dir("features"))),
               ExportOptions(out_dir=tmp_path, quantize=QuantizeOptions(int8_cpu=True)))
    assert not (tmp_path / "tiny-features").exists() or not any((tmp_path / "tiny-features").iterdir())


def test_tool_choice(monkeypatch):
    monkeypatch.setattr(quantize_tools, "modelopt_available", lambda: False)
    assert quantize._choose_tool("int8", QuantizeOptions(int8=True))[0] == "onnxruntime"
    assert "not installed" in quantize._choose_tool("int8", QuantizeOptions(int8=True))[1]
    with pytest.raises(MissingDependencyError) as err:
        quantize._choose_tool("fp8", QuantizeOptions(fp8=True))
    assert err.value.extra == "quantize" and "pip install 'beit-deploy[quantize]'" in str(err.value)
    assert quantize._choose_tool("int8", QuantizeOptions(int8=True, method="percentile"))[0] == "onnxruntime"
    for bad in (dict(method="minmax"), dict(tool="tvm"), dict(fp8=True, tool="onnxruntime")):
        with pytest.raises(UsageError):
            QuantizeOptions(**bad)


def test_cli_export_prints_quantized_lines(tiny_dir, tmp_path):
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_dir("classification")), "--int8", "--int8-cpu",
                                       "--quantizer", "onnxruntime", "--int8-method", "percentile",
                                       "--calibration", str(SAMPLES), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    int8 = next(line for line in result.output.splitlines() if line.strip().startswith("int8:"))
    assert "model.int8.onnx" in int8 and "min cosine" in int8 and "passed" in int8
    assert "onnxruntime" in int8 and "percentile on 5 images" in int8 and "attention Q/DQ" in int8
    assert any(line.strip().startswith("int8cpu: model.int8cpu.onnx") for line in result.output.splitlines())


def test_verify_and_compare_judge_the_quantized_graphs(quantized):
    from beit_deploy.proof.compare import CompareOptions, compare
    from beit_deploy.proof.verify import parity_report

    folder = quantized("classification", "onnxruntime")
    report = parity_report(folder)
    assert [a.name for a in report.artifacts] == ["fp32", "int8", "int8cpu"] and report.passed, report.table()
    assert "int8cpu" in report.table()
    outcome = compare(folder, CompareOptions(runners=("onnxrt-int8", "onnxrt-int8cpu", "onnxrt-fp8", "torch")))
    assert outcome.passed and {a for a, _, _ in outcome.pairs} == {"onnxrt-int8", "onnxrt-int8cpu"}
    assert "--fp8" in outcome.skipped["onnxrt-fp8"]


def test_build_takes_the_qdq_graphs_only(quantized, tiny_export):
    from beit_deploy.trt.build import BuildOptions, build

    assert BuildOptions(precision="int8").precision == "int8" and BuildOptions(precision="fp8").precision == "fp8"
    with pytest.raises(UsageError, match="int8cpu is an ONNX Runtime CPU graph"):
        BuildOptions(precision="int8cpu")
    with pytest.raises(UsageError, match="no int8 graph.*export with --int8"):
        build(tiny_export("classification"), BuildOptions(precision="int8"))
    if importlib.util.find_spec("tensorrt") is None:  # up to the TensorRT boundary
        with pytest.raises(MissingDependencyError, match="beit-deploy\\[gpu\\]"):
            build(quantized("classification", "onnxruntime"), BuildOptions(precision="int8"))


def test_bench_backends_map_to_artifacts():
    from beit_deploy.bench.report import BACKENDS
    from beit_deploy.bench.run import ORT_ARTIFACTS

    assert set(ORT_ARTIFACTS) <= set(BACKENDS)
    assert ORT_ARTIFACTS["onnxruntime-int8"] == "int8cpu" and ORT_ARTIFACTS["onnxruntime-int8-qdq"] == "int8"


def test_calibration_skips_crafted_files_of_any_decoder_error(tiny_export, tmp_path, capfd):
    from crafted_images import CRAFTED

    folder = _photos(tmp_path / "cal", 2)
    for name, make in CRAFTED.items():  # Pillow raises NotImplementedError / AttributeError on these
        (folder / (name.replace('.', '-') + '.png')).write_bytes(make())
    manifest = read_manifest(tiny_export("classification"))
    cal = quantize.calibration_set(folder, list(manifest.inputs), manifest.preprocessing)
    assert cal.count == 2 and sorted(cal.skipped) == ["bad-dds.png", "bad-spider.png"]
    assert capfd.readouterr().err.count("calibration: skipping") == 2


def test_calibration_streams_into_a_mapped_file(tiny_export, tmp_path):
    manifest = read_manifest(tiny_export("masked-image-modeling"))
    work = tmp_path / "work"
    work.mkdir()
    cal = quantize.calibration_set(_photos(tmp_path / "cal", 3, broken=1), list(manifest.inputs),
                                   manifest.preprocessing, work=work)
    pixels = cal.feeds["pixel_values"]
    assert isinstance(pixels, np.memmap) and Path(pixels.filename).parent == work and pixels.shape[0] == 3
    assert cal.feeds["bool_masked_pos"].shape == (3, 16)
    in_memory = quantize.calibration_set(tmp_path / "cal", list(manifest.inputs), manifest.preprocessing)
    np.testing.assert_array_equal(np.asarray(pixels), in_memory.feeds["pixel_values"])


def test_empty_calibration_folder_is_refused_before_the_model_loads(tiny_dir, tmp_path, monkeypatch):
    from beit_deploy.exporter import pipeline

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_dir("classification")), "--int8",
                                       "--quantizer", "onnxruntime", "--calibration", str(tmp_path / "empty"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no calibration photos in" in result.stderr, result.output
    assert not (tmp_path / "out").exists()
