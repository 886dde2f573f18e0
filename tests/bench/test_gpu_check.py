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
    log = gpu_check.Log(tmp_path / "log")
    monkeypatch.setattr(gpu_check, "BUDGET_S", -1)
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
