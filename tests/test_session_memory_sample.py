"""samples/session_memory.py: the session memory of any graph (an export folder's, or a bare .onnx), as JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "samples" / "session_memory.py"


def test_session_memory_of_an_export_and_of_a_bare_graph(tiny_export):
    folder = tiny_export("classification")
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for target, extra in ((folder, ["--batch", "2"]), (folder / "model.onnx", ["--no-arena"])):
        done = subprocess.run([sys.executable, str(SCRIPT), str(target), *extra], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        figures = json.loads(done.stdout)
        assert figures["graph"].endswith("model.onnx") and figures["cpu"]
        assert 0 < figures["rss_before_gib"] <= figures["session_gib"] <= figures["peak_gib"]
        assert figures["held_gib"] <= figures["run_peak_gib"] <= figures["peak_gib"]
        assert figures["arena"] == ("--no-arena" not in extra) and figures["batch"] == (2 if extra[0] == "--batch" else 1)
