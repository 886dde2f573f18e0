"""`make gpu-check` on CPU: the dry run goes through every code path the GPU run takes (a tiny model, a few
iterations) and writes the same report; what cannot run here is said skipped with its reason. No timing is
asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from beit_deploy.bench import gpu_check, gpu_parts, seed_tables

ROOT = Path(__file__).resolve().parents[2]


def test_plan_says_what_runs_and_why_not(tmp_path, monkeypatch):
    on_cpu = gpu_check.plan({"cuda_available": False, "torch": "2.13"}, tmp_path)
    assert {k for k, v in on_cpu.items() if v is None} == {"parity", "inference", "training", "tests"}
    assert "no CUDA GPU" in on_cpu["tensorrt"]
    monkeypatch.setattr(gpu_check, "has_module", lambda name: name != "tensorrt")
    on_gpu = gpu_check.plan({"cuda_available": True, "torch": "2.11"}, tmp_path)
    assert on_gpu["tensorrt"].startswith("TensorRT is not installed") and on_gpu["training"] is None
    no_torch = gpu_check.plan({"cuda_available": False, "torch": None}, None)
    assert all(reason for reason in no_torch.values()) and no_torch["training"] == "torch is not installed"
    assert "checkout" in no_torch["tests"]


def test_the_dry_run_writes_both_tables_and_every_skip_reason(tmp_path, monkeypatch):
    """The CPU dry run that `make test` runs: parity, the docs' training and inference tables with the baked rows
    (fp16 and fp32), the GPU tests (skipping here), TensorRT skipped with the reason; log and JSON."""
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    monkeypatch.chdir(ROOT)
    assert gpu_check.main() == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["mode"].startswith("dry run on CPU") and report["parity"]["passed"]
    training = report["training"]["rows"]
    assert {(r["dtype"], r["backend"]) for r in training} == {(d, m) for d in ("fp16", "fp32")
                                                              for m in ("eager", "sdpa", "baked")}
    assert all(r["batch_size"] == 2 and r["iterations"] == seed_tables.DRY_RUN.train_steps for r in training)
    inference = report["inference"]["rows"]
    assert len(inference) == 2 * 3 * len(seed_tables.DRY_RUN.batches)
    assert all(r["seconds_per_iter"] > 0 and r["ci_percent"] is not None for r in inference)
    assert report["tensorrt"] == {"skipped": "no CUDA GPU (torch.cuda.is_available() is False)"}
    assert report["tests"]["tests"] == report["tests"]["skipped"] > 0 and report["tests"]["exit_code"] == 0
    log = (tmp_path / "gpu-check.log").read_text()
    assert log.startswith("gpu-check, dry run on CPU: a tiny model") and "SKIPPED TensorRT rows" in log
    assert "| dtype | eager s/batch | sdpa s/batch | sdpa speedup % | baked s/batch |" in log
    assert "| batch | eager s/iter | eager CI | eager MB | sdpa s/iter | sdpa CI | sdpa MB | sdpa speedup |" in log
    assert "| batch | baked s/iter | CI | MB | vs eager | vs sdpa |" in log


def test_without_torch_every_part_says_so_and_the_report_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    monkeypatch.setattr(gpu_check, "has_module", lambda name: name not in ("torch", "tensorrt"))
    monkeypatch.setattr(gpu_check, "find_checkout", lambda: None)
    assert gpu_check.main() == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    for part in ("parity", "training", "inference", "tensorrt"):
        assert report[part] == {"skipped": "torch is not installed"}, part
    assert "checkout" in report["tests"]["skipped"]


def test_a_failed_parity_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    monkeypatch.setattr(gpu_check, "find_checkout", lambda: None)
    monkeypatch.setattr(gpu_parts, "parity_on", lambda model, settings: {"fp32_rel": 0.5, "passed": False})
    monkeypatch.setattr(seed_tables, "training_rows", lambda model, settings: [])
    monkeypatch.setattr(seed_tables, "inference_rows", lambda model, settings: [])
    assert gpu_check.main() == 1
    assert json.loads((tmp_path / "gpu-check.json").read_text())["parity"]["passed"] is False


def test_a_timed_out_subprocess_is_logged_as_text():
    exc = subprocess.TimeoutExpired(["pytest"], 300, output=b"collected 13 items\n", stderr=b"slow\xff")
    text = gpu_check.timed_out_output(exc)
    assert text.startswith("collected 13 items\nslow") and text.endswith("TIMED OUT after 300 s")
    assert "b'" not in text


def test_the_tensorrt_part_checks_the_budget_before_each_export(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "trt"))
    from fake_tensorrt import install

    install(monkeypatch, version="11.4.0.106")
    log = gpu_check.Log(tmp_path / "log", budget=-1)
    monkeypatch.setattr(gpu_parts, "_export", lambda *a: pytest.fail("exported past the budget"))
    result = gpu_parts.tensorrt_rows(log, seed_tables.TableSettings(), tmp_path)
    assert result["rows"] == [] and set(result["skipped"]) == {f"tensorrt {form} {dtype}" for form in
                                                                ("decomposed", "fused") for dtype in ("fp16", "fp32")}
    assert all(reason.startswith("time budget (-1 s) spent") for reason in result["skipped"].values())


def test_the_docs_definitions_reproduce_the_docs_numbers():
    """The docs' training row: eager 0.984 s, SDPA 0.746 s -> 31.9 % speedup; 2779.42 MB vs 2634.11 MB -> 5.5 %
    saving; its inference row at batch 4: 4.616e8 vs 4.10659e8 bytes -> 12.4 % saved."""
    assert round(100 * (seed_tables.speedup(0.984, 0.746) - 1), 1) == 31.9
    assert round(seed_tables.saving(2779.42, 2634.11), 1) == 5.5
    assert round(seed_tables.saving(4.616e8, 4.10659e8), 1) == 12.4
    assert seed_tables.saving(None, 1.0) is None


@pytest.mark.slow
def test_make_gpu_check_without_a_wheel_folder_exits_0_and_leaves_a_report(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["make", "gpu-check", f"GPU_CHECK_OUT={out}", f"WHEELS={tmp_path / 'no-wheels'}",
                             f"VENV={Path(sys.prefix)}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert "rows" in report["training"] and "rows" in report["inference"]


@pytest.mark.parametrize("left", [None, '<?xml version="1.0"?><testsuites><testsuite tests="3" fail', "<testsuites/>"])
def test_tests_without_a_whole_junit_report_say_so(tmp_path, monkeypatch, left):
    """pytest cut off (no report), dead while writing it (half an XML) or writing none of it (no testsuite): said
    in the report, never an earlier run's counts left in the out folder, never an exception."""
    (tmp_path / "pytest-gpu.xml").write_text('<testsuite tests="7" failures="0" errors="0" skipped="0"/>')

    def pytest_dies(command, **kwargs):
        junit = Path(next(a for a in command if a.startswith("--junitxml=")).split("=", 1)[1])
        if left is None:
            raise subprocess.TimeoutExpired(command, gpu_check.TEST_TIMEOUT_S)
        junit.write_text(left)
        return subprocess.CompletedProcess(command, 1, "", "killed")

    monkeypatch.setattr(gpu_check.subprocess, "run", pytest_dies)
    result = gpu_check.run_tests(gpu_check.Log(tmp_path / "log"), tmp_path, ROOT)
    assert result["junit"] == "no JUnit report: pytest did not finish" and "tests" not in result
    assert result["exit_code"] != 0


def only_tensorrt(monkeypatch, tmp_path, tensorrt_rows) -> dict:
    """main() with every part but TensorRT skipped and `tensorrt_rows` as its measurement -> the report."""
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    monkeypatch.setattr(gpu_check, "plan", lambda env, checkout: {**{k: "not here" for k in gpu_check.PARTS},
                                                                  "tensorrt": None})
    monkeypatch.setattr(gpu_parts, "tensorrt_rows", tensorrt_rows)
    return {"code": gpu_check.main(), **json.loads((tmp_path / "gpu-check.json").read_text())}


def test_a_broken_tensorrt_build_fails_the_check(tmp_path, monkeypatch):
    def a_build_fails(log, settings, work):
        return {"rows": [], "skipped": {}, "errors": {"tensorrt decomposed fp16": "RuntimeError: no engine"}}

    assert only_tensorrt(monkeypatch, tmp_path, a_build_fails)["code"] == 1
    assert "tensorrt decomposed fp16: FAILED (RuntimeError: no engine)" in (tmp_path / "gpu-check.log").read_text()

    def the_part_fails(log, settings, work):
        raise RuntimeError("no TensorRT logger")

    assert only_tensorrt(monkeypatch, tmp_path, the_part_fails)["code"] == 1

    def only_skips(log, settings, work):
        return {"rows": [], "skipped": {"fused": "TensorRT 10.13 < 10.14"}, "errors": {}}

    assert only_tensorrt(monkeypatch, tmp_path, only_skips)["code"] == 0


def test_tensorrt_failures_are_errors_not_skips(monkeypatch, tmp_path):
    """A failed export or build is an error (the check fails); what cannot run here is a skip."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "trt"))
    from fake_tensorrt import install

    from beit_deploy.core import manifest

    install(monkeypatch, version="10.16.0.1")
    monkeypatch.setitem(manifest.ATTENTION_MIN_TENSORRT, manifest.FUSED, (10, 20))

    def engine_rows(log, settings, folder, form, dtype, work, skipped):
        if dtype == "fp16":
            raise RuntimeError("the build failed")
        return [{"dtype": dtype, "backend": f"tensorrt {form}"}]

    monkeypatch.setattr(gpu_parts, "_export", lambda settings, work, form: work / form)
    monkeypatch.setattr(gpu_parts, "_engine_rows", engine_rows)
    result = gpu_parts.tensorrt_rows(gpu_check.Log(tmp_path / "log"), seed_tables.TableSettings(), tmp_path)
    assert result["rows"] == [{"dtype": "fp32", "backend": "tensorrt decomposed"}]
    assert result["errors"] == {"tensorrt decomposed fp16": "RuntimeError: the build failed"}
    assert result["skipped"] == {"fused": "TensorRT 10.16.0.1 < 10.20 does not parse the ONNX Attention op"}
    def export_fails(settings, work, form):
        raise ValueError("no graph")

    monkeypatch.setattr(gpu_parts, "_export", export_fails)
    result = gpu_parts.tensorrt_rows(gpu_check.Log(tmp_path / "log"), seed_tables.TableSettings(), tmp_path)
    assert result["errors"] == {"tensorrt decomposed export": "ValueError: no graph"} and result["rows"] == []
    assert result["skipped"]["tensorrt decomposed fp32"].startswith("its export failed")


def test_parity_leaves_tf32_as_it_found_it(tmp_path):
    """Parity turns TF32 off for itself only: the tables after it time fp32 with torch's own settings."""
    import torch

    from beit_deploy.exporter.loading import load_model

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # (torch's own properties:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True  # monkeypatch cannot undo)
    try:
        model = load_model(gpu_parts.model_spec(seed_tables.DRY_RUN, tmp_path)).model.eval()
        assert gpu_parts.parity_on(model, seed_tables.DRY_RUN)["passed"]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_bad_budget_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    monkeypatch.setattr(gpu_check, "has_module", lambda name: name not in ("torch", "tensorrt"))
    monkeypatch.setattr(gpu_check, "find_checkout", lambda: None)
    for value in ("7min", "0", "-5", ""):
        monkeypatch.setenv("GPU_CHECK_BUDGET_S", value)
        assert gpu_check.main() == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: GPU_CHECK_BUDGET_S='{value}' is not a whole number")
    monkeypatch.setenv("GPU_CHECK_BUDGET_S", "60")
    assert gpu_check.main() == 0


def test_the_report_replaces_a_link_and_the_log_is_closed(tmp_path, monkeypatch):
    """gpu-check.json is written to a temporary name and renamed: a link planted there is replaced, not
    written through."""
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    monkeypatch.setattr(gpu_check, "has_module", lambda name: name not in ("torch", "tensorrt"))
    monkeypatch.setattr(gpu_check, "find_checkout", lambda: None)
    (tmp_path / "victim").write_text("mine\n")
    (tmp_path / "gpu-check.json").symlink_to(tmp_path / "victim")
    real, logs = gpu_check.Log, []
    monkeypatch.setattr(gpu_check, "Log", lambda *args: logs.append(real(*args)) or logs[-1])
    assert gpu_check.main() == 0
    assert (tmp_path / "victim").read_text() == "mine\n" and not (tmp_path / "gpu-check.json").is_symlink()
    assert json.loads((tmp_path / "gpu-check.json").read_text())["tensorrt"] == {"skipped": "torch is not installed"}
    assert logs[0].file.closed
