"""The whole chain through the CLI on a tiny model, as a user runs it: export (fp32 + fp16) -> inspect -> predict
-> verify -> compare. The full-size version (beit-base@224) is tests/exporter/test_end_to_end.py, marked slow."""

import json
from pathlib import Path

from click.testing import CliRunner

from beit_deploy.cli import main

PHOTOS = Path(__file__).resolve().parent.parent / "samples" / "images"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_export_inspect_predict_verify_compare(tiny_dir, tmp_path):
    out = run("export", "--model", tiny_dir("segmentation"), "-r", "80x48", "--fp16", "--out", tmp_path)
    folder = tmp_path / "tiny-segmentation" / "80x48"
    assert "fp16: model.fp16.onnx" in out and "passed" in out
    report = json.loads(run("inspect", folder / "model.fp16.onnx", "--json"))
    assert report["inputs"][0]["shape"] == ["batch", 3, 80, 48] and report["precision"]["float16"] > 0
    lines = run("predict", folder, PHOTOS, "--json", "--masks", tmp_path / "masks").strip().splitlines()
    answers = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(answers) == 5 and all(a["task"] == "segmentation" for a in answers)
    assert len(list((tmp_path / "masks").iterdir())) == 5
    assert "PASSED" in run("verify", folder, "--json", tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True
    assert "comparison PASSED" in run("compare", folder, "--runners", "onnxrt-fp32,onnxrt-fp16,torch")
