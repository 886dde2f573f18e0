"""samples/export_memory.py: one run, one table of export and session peaks (ours, and another exporter's)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "samples" / "export_memory.py"


def test_export_memory_table(tiny_dir, tmp_path):
    """On the tiny model, with a stand-in for optimum-cli (a script writing a copy of our fp32 graph where Optimum
    writes its model.onnx): every figure measured and positive, the table has the row."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "optimum-cli"
    graph = tmp_path / "work" / "tiny-classification.ours" / "tiny-classification" / "64x64" / "model.onnx"
    fake.write_text(f'#!/bin/sh\nfor last; do :; done\nmkdir -p "$last" && cp "{graph}" "$last/model.onnx"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_dir("classification")), "--optimum-cli",
                           str(fake), "--work", str(tmp_path / "work"), "--markdown", str(tmp_path / "t.md")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "work" / "export_memory.json").read_text())
    row = report["rows"][0]
    assert row["model"] == "tiny-classification" and row["resolution"] == [64, 64]
    assert row["ours_export"] > 0.1 and row["optimum_export"] > 0
    for key in ("ours_session", "optimum_session", "ours_fp16_session"):
        assert 0 < row[key]["held_gib"] <= row[key]["run_peak_gib"] <= row[key]["peak_gib"]
    assert "optimum not installed" in report["machine"]["optimum"]
    table = (tmp_path / "t.md").read_text()
    assert "| tiny-classification |" in table and "Peak resident memory in GiB" in table
