"""`beit-deploy predict` on hostile folders and manifests: every odd entry reported, JSON always valid, the pixel
limit and the hash check as options."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.exporter.parity import sample_images

PHOTOS = sample_images()


def predict(*args):
    result = CliRunner().invoke(main, ["predict", *map(str, args)])
    assert "Traceback" not in result.output + result.stderr and "internal error" not in result.stderr
    return result


def test_fifos_and_looping_symlinks_in_a_folder_are_reported(tiny_export, tmp_path):
    """Before: skipped without a word. (A FIFO named as a file hung predict: see tests/runtime, which can unblock
    it should it regress.)"""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(PHOTOS[0], folder / "good.png")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    result = predict(tiny_export("classification"), folder, "--json")
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # failed images are error rows there too
    assert [(r["image"], "error" in r) for r in rows] == [(str(folder / "good.png"), False),
                                                         (str(folder / "loop.jpg"), True),
                                                         (str(folder / "pipe.jpg"), True)]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "2 of 3 images could not be read" in errors[-1]
    assert any("pipe.jpg' is not a regular file" in e for e in errors)
    assert any("loop.jpg' is a symbolic link that leads nowhere" in e for e in errors)


def test_a_manifest_with_std_zero_is_refused_not_turned_into_nan(tiny_export, tmp_path):
    """Before: image_std 0 wrote NaN scores into --json output, which is not JSON."""
    copy = shutil.copytree(tiny_export("classification"), tmp_path / "copy")
    data = json.loads((copy / "manifest.json").read_text())
    data["preprocessing"]["image_std"] = [0.0, 0.0, 0.0]
    (copy / "manifest.json").write_text(json.dumps(data))
    result = predict(copy, PHOTOS[0], "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "image_std [0.0, 0.0, 0.0] is not 3 finite non-zero numbers" in result.stderr


def test_json_output_is_always_json():
    from beit_deploy.core.jsontext import dumps

    text = dumps({"score": float("nan"), "rows": [1.0, float("inf"), np.float64(-np.inf)], "ok": 0.5})
    assert json.loads(text) == {"score": None, "rows": [1.0, None, None], "ok": 0.5}


def test_the_pixel_limit_option(tiny_export):
    result = predict(tiny_export("classification"), PHOTOS[0], PHOTOS[1], "--max-pixels", "1000")
    assert result.exit_code == 1 and "above the limit of 0.001 megapixels" in result.stderr
    assert "2 of 2 images could not be read" in result.stderr
    assert predict(tiny_export("classification"), PHOTOS[0], "--max-pixels", "0").exit_code == 0  # no limit
    assert predict(tiny_export("classification"), PHOTOS[0], "--max-pixels", "-1").exit_code == 2


def test_the_hash_check_and_its_opt_out(tiny_export, tmp_path):
    import onnx
    from onnx import numpy_helper

    copy = shutil.copytree(tiny_export("classification"), tmp_path / "copy")
    data = (copy / "model.onnx").read_bytes()
    init = max(onnx.load(str(copy / "model.onnx")).graph.initializer, key=lambda i: i.ByteSize())
    raw = numpy_helper.to_array(init).tobytes()
    at = data.index(raw)  # other weights in place, byte for byte: same size, still a valid graph
    (copy / "model.onnx").write_bytes(data[:at] + (numpy_helper.to_array(init) * 1.5).tobytes() + data[at + len(raw):])
    result = predict(copy, PHOTOS[0])
    assert result.exit_code == 1 and "sha256 differs" in result.stderr and "export the model again" in result.stderr
    assert predict(copy, PHOTOS[0], "--no-hash-check").exit_code == 0
