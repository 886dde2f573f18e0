"""`make gpu-check` on CPU: its plan says what runs and why not, and its benchmark and parity code runs (on a tiny
model, on CPU, without timings asserted) so the first GPU run is not its first run."""

from __future__ import annotations

import json

import pytest

from beit_deploy.exporter.loading import ModelSpec
from beit_deploy.trt import gpu_check


def test_plan_says_what_runs_and_why_not(tmp_path):
    no_gpu = gpu_check.plan({"cuda_available": False}, tmp_path)
    assert all(reason and "no CUDA GPU" in reason for reason in no_gpu.values())
    gpu = gpu_check.plan({"cuda_available": True}, tmp_path)
    trt = "TensorRT is not installed"
    assert gpu["eager vs SDPA attention table (CUDA fp16)"] is None
    assert gpu["parity on CUDA (baked vs eager, fp32 and fp16)"] is None
    assert trt in gpu["TensorRT row (like for like)"] and trt in gpu["TensorRT tests (build, run, CUDA graphs, inspect)"]
    assert gpu["GPU tests (fp16 baked vs eager on CUDA, ONNX Runtime CUDA provider)"] is None
    assert "checkout" in gpu_check.plan({"cuda_available": True}, None)[next(iter(gpu))]


def test_benchmark_and_parity_code_runs_on_cpu(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "WARMUP", 1)
    monkeypatch.setattr(gpu_check, "ITERS", 2)
    log = gpu_check.Log(tmp_path / "log")
    bench = gpu_check.attention_table(log, ModelSpec(str(tiny_dir("classification"))), (64, 64), (1, 2), "cpu")
    assert bench["parity"]["passed"] and bench["parity"]["fp32_rel"] < 1e-5
    assert [r["batch"] for r in bench["rows"]] == [1, 2]
    for row in bench["rows"]:
        assert all(row[k][0] > 0 and row[k][1] is None for k in ("eager", "sdpa", "baked"))
    gpu_check.table(log, bench, None)
    text = (tmp_path / "log").read_text()
    assert "| batch | eager ms | sdpa ms | sdpa speedup |" in text and "| batch | baked ms | vs eager |" in text
    json.dumps(bench)


def test_main_writes_log_and_json_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    monkeypatch.setattr(gpu_check, "run_tests", lambda log, out, checkout: {"exit_code": 0, "tests": 13,
                                                                           "failures": 0, "errors": 0})
    monkeypatch.setattr(gpu_check, "environment", lambda: {"cuda_available": False, "python": "3.12"})
    assert gpu_check.main() == 0
    lines = (tmp_path / "gpu-check.log").read_text().splitlines()
    assert lines[0] == "gpu-check: what runs on this machine" and lines[1].startswith("  SKIPPED")
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert set(report) >= {"plan", "environment", "tests"} and "benchmark" not in report


@pytest.mark.parametrize("eager, other, expected", [(100.0, 75.0, "25.0%"), (None, None, "-"), (100.0, None, "-")])
def test_memory_saved_column(eager, other, expected):
    assert gpu_check._saved(eager, other) == expected
