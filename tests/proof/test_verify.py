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


def test_a_crafted_photo_is_left_out_and_the_rest_checked(tiny_export, tmp_path):
    from click.testing import CliRunner
    from crafted_images import CRAFTED

    from beit_deploy.cli import main
    from beit_deploy.exporter.parity import sample_images

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sample_images()[0], photos / "good.jpg")
    (photos / "evil.png").write_bytes(CRAFTED["bad.dds"]())  # Pillow raises NotImplementedError on it
    report = parity_report(_export(tiny_export, "classification"), images=photos, random=0)
    assert report.passed and report.photos == 1 and "evil.png" in report.unreadable[0]
    assert "left out, unreadable" in report.table()
    result = CliRunner().invoke(main, ["verify", str(_export(tiny_export, "classification")), "--images",
                                       str(photos), "--random", "0"])
    assert result.exit_code == 1 and "1 of 2 photos could not be read" in result.stderr, result.output
    assert "PASSED" in result.stdout and "internal error" not in result.output


def test_a_tampered_artifact_is_refused_before_the_model_loads(tiny_export, tmp_path, monkeypatch):
    from beit_deploy.core.errors import ArtifactError
    from beit_deploy.proof import verify

    copy = tmp_path / "copy"
    shutil.copytree(_export(tiny_export, "features"), copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1  # same size, another sha256
    (copy / "model.onnx").write_bytes(bytes(data))
    monkeypatch.setattr(verify, "reference_model", lambda *a, **k: pytest.fail("the eager model loaded first"))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        parity_report(copy, images=[])


def _with_source(tiny_export, tmp_path, source: dict, weights: dict | None = None) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(_export(tiny_export, "features"), copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["source"] = source
    data["weights"] = weights or data["weights"]
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


def test_a_manifest_without_source_model_is_one_clear_line(tiny_export, tmp_path):
    from click.testing import CliRunner

    from beit_deploy.cli import main

    copy = _with_source(tiny_export, tmp_path, {"kind": "hub"})
    result = CliRunner().invoke(main, ["verify", str(copy), "--random", "1"])
    assert result.exit_code == 1 and "does not name its source model" in result.stderr, result.output
    assert "--reference" in result.stderr and "internal error" not in result.output


def test_a_hub_source_is_read_from_the_cache_only(tiny_export, tmp_path, monkeypatch):
    import transformers

    asked = []

    def offline_config(name, **kwargs):
        asked.append(kwargs)
        raise OSError(f"{name} is not cached")

    copy = _with_source(tiny_export, tmp_path, {"kind": "hub", "model": "somebody/beit-from-a-manifest"},
                        {"kind": "pretrained", "seed": None})
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline_config)
    with pytest.raises(ModelLoadError, match="--allow-download"):
        parity_report(copy, images=[])
    assert asked == [{"local_files_only": True}]
    with pytest.raises(ModelLoadError):
        parity_report(copy, images=[], allow_download=True)
    assert asked[-1] == {"local_files_only": False}


def test_random_inputs_are_bounded(tiny_export):
    from click.testing import CliRunner

    from beit_deploy.cli import main
    from beit_deploy.core.errors import UsageError

    result = CliRunner().invoke(main, ["verify", str(_export(tiny_export, "features")), "--random", "1000000"])
    assert result.exit_code == 2 and "0<=x<=64" in result.output.replace(" ", "")
    with pytest.raises(UsageError, match="0 to 64"):
        parity_report(_export(tiny_export, "features"), random=10**6)
