"""The eager bf16 backend: run where the CPU has native bf16 (AMX or AVX-512 BF16) and parity holds, refused with
its reason elsewhere."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from beit_deploy.bench import run
from beit_deploy.core import backends, machine
from beit_deploy.cli import main


def _bench(tiny_dir, tmp_path) -> dict:
    args = ["bench", "--model", str(tiny_dir("classification")), "--batch-sizes", "2", "--iters", "2", "--warmup",
            "0", "--backends", "eager-bf16", "--no-end-to-end", "--cache", str(tmp_path / "cache"), "--json",
            str(tmp_path / "bench.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "bench.json").read_text())


@pytest.mark.skipif(machine.cpu_bf16() is None, reason="this CPU has no native bf16 (AMX or AVX-512 BF16)")
def test_bf16_row_where_the_cpu_has_it(tiny_dir, tmp_path):
    measured = _bench(tiny_dir, tmp_path)
    rows = {r["backend"] for r in measured["results"]}
    skipped = {s["backend"]: s["reason"] for s in measured["skipped"]}
    assert "eager-bf16" in rows or "misses parity: cosine" in skipped["eager-bf16"]


def test_bf16_refused_without_native_bf16(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "cpu_bf16", lambda: None)
    measured = _bench(tiny_dir, tmp_path)
    assert "eager-bf16" not in {r["backend"] for r in measured["results"]}
    reason = {s["backend"]: s["reason"] for s in measured["skipped"]}["eager-bf16"]
    assert "neither AMX nor AVX-512 BF16" in reason
    assert "CPU backend" in run.autocast_refusal("eager-bf16", "cuda")
    assert backends.backend("eager-bf16").autocast == "bfloat16"  # a row of the backend table
    from beit_deploy.bench.report import DEFAULT_BACKENDS
    assert "eager-bf16" not in DEFAULT_BACKENDS  # only when asked


def test_bf16_flags_from_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                        *a, **k))
    assert machine.cpu_bf16() == "avx512_bf16"
    cpuinfo.write_text("flags\t\t: fpu sse avx512f\n")
    assert machine.cpu_bf16() is None
