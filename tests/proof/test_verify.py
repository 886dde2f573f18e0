"""verify: parity reports for every head, planted errors named by (artifact, output, metric), JSON round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TASKS

from beit_deploy.core.errors import ModelLoadError
from beit_deploy.proof.verify import ParityReport, parity_report


def planted_copy(folder: Path, dest: Path, zero_bias: bool = False, mean=None) -> Path:
    """A copy of an export folder with the first baked attention bias zeroed and/or a wrong image_mean: a wrong
    export, consistent with its manifest (bytes and sha256 rewritten), so only the parity check can tell."""
    import onnx
    from onnx import numpy_helper

    from beit_deploy.core.files import file_sha256

    shutil.copytree(folder, dest)
    data = json.loads((dest / "manifest.json").read_text())
    if zero_bias:
        model = onnx.load(str(dest / "model.onnx"))
        init = next(i for i in model.graph.initializer if i.name.endswith("attention.bias"))
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
        onnx.save(model, str(dest / "model.onnx"))
        data["graph"]["fp32"]["bytes"] = (dest / "model.onnx").stat().st_size
        data["sha256"]["model.onnx"] = file_sha256(dest / "model.onnx")
    if mean is not None:
        data["preprocessing"]["image_mean"] = list(mean)
    (dest / "manifest.json").write_text(json.dumps(data))
    return dest


def _export(tiny_export, task):
    return tiny_export(task, fp16=task == "classification")


@pytest.mark.parametrize("task", TASKS)
def test_report_every_head(tiny_export, task):
    report = parity_report(_export(tiny_export, task), random=2)
    assert report.passed, report.table()
    assert report.photos == 5 and report.random == 2 and report.task == task
    expected = ["fp32", "fp16"] if task == "classification" else ["fp32"]
    assert [a.name for a in report.artifacts] == expected
    out = report.artifacts[0].outputs[0]
    assert out.rel <= 1e-4 and out.cosine > 0.9999
    if task == "classification":
        assert out.top1 == 1.0 and out.top5 == 1.0 and out.top1_photos == 1.0
        assert report.artifacts[1].outputs[0].cosine >= 0.999
    if task == "segmentation":
        assert out.pixels == 1.0 and out.top1 is None
    if task == "features":
        assert [o.output for o in report.artifacts[0].outputs] == ["last_hidden_state", "pooler_output"]
    assert "PASSED" in report.table()


def test_json_round_trip(tiny_export, tmp_path):
    report = parity_report(_export(tiny_export, "classification"), random=1)
    again = ParityReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report and again.to_dict()["passed"] is True


def test_zeroed_bias_is_named(tiny_export, tmp_path):
    bad = planted_copy(_export(tiny_export, "classification"), tmp_path / "bad", zero_bias=True)
    report = parity_report(bad)
    assert not report.passed
    named = {(f.artifact, f.output, f.metric) for f in report.failures}
    assert ("fp32", "logits", "rel") in named
    assert all(f.artifact == "fp32" for f in report.failures)  # fp16 graph untouched: still passes
    assert "FAILED: fp32/logits/rel" in report.table()


def test_wrong_normalisation_is_named(tiny_export, tmp_path):
    bad = planted_copy(_export(tiny_export, "classification"), tmp_path / "bad", mean=(0.485, 0.456, 0.406))
    report = parity_report(bad, random=0)
    named = {(f.artifact, f.output, f.metric) for f in report.failures}
    assert ("manifest", "preprocessing", "image_mean") in named
    assert ("fp32", "logits", "rel") in named  # photos through the manifest's pipeline answer differently


def test_unreachable_source_and_reference(tiny_export, tiny_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(_export(tiny_export, "features"), moved)
    data = json.loads((moved / "manifest.json").read_text())
    data["source"]["model"] = str(tmp_path / "gone" / "tiny-features")
    (moved / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="--reference"):
        parity_report(moved, images=[])
    assert parity_report(moved, images=[], reference=tiny_dir("features")).passed


def test_cli_verify_exit_and_json(tiny_export, tmp_path):
    from click.testing import CliRunner

    from beit_deploy.cli import main

    bad = planted_copy(_export(tiny_export, "classification"), tmp_path / "bad", zero_bias=True)
    result = CliRunner().invoke(main, ["verify", str(bad), "--random", "1", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1
    assert "fp32/logits/rel" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False


def test_exif_rotated_photo_compares_models_not_exif(tiny_export, tmp_path):
    """Before: the runner turned the photo upright and the eager reference got it sideways, so a correct export
    failed. Both sides now see the upright photo."""
    from PIL import Image

    from beit_deploy.exporter.parity import sample_images

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: "rotate 90 CW to display"
    photo = tmp_path / "sideways.jpg"
    Image.open(sample_images()[0]).convert("RGB").resize((96, 48)).save(photo, exif=exif, quality=95)
    report = parity_report(_export(tiny_export, "classification"), images=[photo], random=0)
    assert report.passed, report.table()


def test_an_unreadable_photo_is_one_line(tiny_export, tmp_path):
    from click.testing import CliRunner

    from beit_deploy.cli import main

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG not really")
    result = CliRunner().invoke(main, ["verify", str(_export(tiny_export, "features")), "--images",
                                       str(tmp_path / "photos")])
    assert result.exit_code == 1 and "broken.png' is not a readable image" in result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
