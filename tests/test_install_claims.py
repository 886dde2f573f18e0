"""Every command works on the install it claims, tested in a subprocess where the packages of the optional extras
are hidden (`sys.modules[name] = None` makes importing them fail as if they were not installed).

- base install (numpy, Pillow, click, onnxruntime): `models`, `predict`; every other command names its extra;
- base + onnx: `inspect` on an ONNX graph (no torch);
- the export extra: export, verify, compare, bench (the rest of the suite);
- the gpu extra: build (tests/trt).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PHOTO = Path(__file__).resolve().parent.parent / "samples" / "images" / "rocket.jpg"

EXPORT_EXTRA = ("torch", "transformers", "onnx", "onnxscript", "onnx_ir", "polygraphy", "tensorrt")


def cli(args: list[str], hidden: tuple[str, ...]) -> subprocess.CompletedProcess:
    code = ("import sys\n"
            f"for name in {list(hidden)!r}: sys.modules[name] = None\n"
            "from beit_deploy.cli import main\n"
            f"main({args!r})\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_models_and_predict_on_a_base_install(tiny_export):
    folder = tiny_export("classification")
    assert cli(["models", "--json"], EXPORT_EXTRA).returncode == 0
    done = cli(["predict", str(folder), str(PHOTO), "--json"], EXPORT_EXTRA)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["task"] == "classification"


@pytest.mark.parametrize("args", [
    ["export", "--model", "beit-base-patch16-224", "--random-weights"],
    ["verify", "{folder}"],
    ["compare", "{folder}", "--runners", "onnxrt-fp32,torch"],
    ["bench", "--model", "beit-base-patch16-224", "--random-weights", "--batch-sizes", "1"],
    ["inspect", "{folder}/model.onnx"],
], ids=lambda args: args[0])
def test_commands_beyond_the_base_name_their_extra(tiny_export, args):
    folder = tiny_export("classification")
    done = cli([a.format(folder=folder) for a in args], EXPORT_EXTRA)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "pip install 'beit-deploy[export]'" in lines[-1], done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


def test_inspect_needs_onnx_but_not_torch(tiny_export):
    folder = tiny_export("classification", fp16=True)
    done = cli(["inspect", str(folder / "model.fp16.onnx"), "--json"], ("torch", "transformers", "tensorrt"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["kind"] == "onnx" and report["precision"]["float16"] > 0


def test_build_names_the_gpu_extra(tiny_export, tmp_path):
    done = cli(["build", str(tiny_export("classification")), "--precision", "fp32", "--out", str(tmp_path)],
               ("tensorrt",))
    assert done.returncode == 1 and "pip install 'beit-deploy[gpu]'" in done.stderr, done.stderr
