"""`beit-deploy predict` through click's CliRunner: output formats, masks and overlays, and every error path."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from beit_deploy import BeitTRTRunner
from beit_deploy.cli import main
from beit_deploy.exporter.parity import sample_images
from beit_deploy.core.registry import ADE20K_CLASSES
from beit_deploy.runtime.palette import deterministic_palette, is_ade, palette_for

PHOTOS = sample_images()


def predict(*args):
    result = CliRunner().invoke(main, ["predict", *map(str, args)])
    assert "Traceback" not in result.output + result.stderr
    return result


def test_json_lines_for_a_folder(tiny_export):
    folder = tiny_export("classification", fp16=True)
    result = predict(folder, PHOTOS[0].parent, "--json", "--top-k", "3", "--batch-size", "2")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(p) for p in PHOTOS]
    assert all(r["task"] == "classification" and len(r["top_k"]) == 3 for r in rows)
    with BeitTRTRunner(folder) as runner:
        alone = runner.predict(PHOTOS[0], top_k=3).to_dict()["top_k"]  # batch of 1: same up to float noise
    assert [c["id"] for c in rows[0]["top_k"]] == [c["id"] for c in alone]
    np.testing.assert_allclose([c["score"] for c in rows[0]["top_k"]], [c["score"] for c in alone], atol=1e-6)


def test_progress_for_many_images(tiny_export):
    result = predict(tiny_export("classification", fp16=True), *PHOTOS, *PHOTOS, "--json")
    assert result.exit_code == 0 and "[10/10]" in result.stderr and len(result.stdout.splitlines()) == 10


def test_table_and_model_folder(tiny_export, tmp_path):
    (tmp_path / "64x64").symlink_to(tiny_export("classification", fp16=True))
    result = predict(tmp_path, PHOTOS[0], "--precision", "fp32")  # export/<model> with one resolution
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(str(PHOTOS[0])) and "  1. " in result.stdout and "  5. " in result.stdout


def test_corrupt_file_in_a_batch(tiny_export, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(PHOTOS[-1].read_bytes()[:500])
    result = predict(tiny_export("classification", fp16=True), PHOTOS[0], bad, PHOTOS[1], "--json")
    assert result.exit_code != 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(PHOTOS[0]), str(bad), str(PHOTOS[1])]  # the failed one as a row
    assert "corrupt.jpg" in rows[1]["error"] and "top_k" not in rows[1] and "error" not in rows[0]
    assert "corrupt.jpg" in result.stderr and "1 of 3 images" in result.stderr
    assert "3 images, 2 answered, 1 failed" in result.stderr  # the closing summary


def test_folders_with_subfolders(tiny_export, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(PHOTOS[0], tmp_path / "top.png")
    shutil.copy(PHOTOS[1], tmp_path / "a" / "b" / "deep.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image name: not listed")
    result = predict(tiny_export("classification", fp16=True), tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    names = [json.loads(line)["image"] for line in result.stdout.splitlines()]
    assert names == [str(tmp_path / "a" / "b" / "deep.png"), str(tmp_path / "top.png")]
    assert "2 images, 2 answered, 0 failed" in result.stderr


def test_masks_and_overlays(tiny_export, tmp_path):
    folder = tiny_export("segmentation", resample=3)
    result = predict(folder, *PHOTOS[:2], "--masks", tmp_path / "masks", "--overlay", tmp_path / "overlay", "--json")
    assert result.exit_code == 0, result.stderr
    with BeitTRTRunner(folder) as runner:
        expected = runner.predict(PHOTOS[0]).label_map
    mask = np.asarray(Image.open(tmp_path / "masks" / f"{PHOTOS[0].stem}.png"))
    np.testing.assert_array_equal(mask, expected)
    overlay = Image.open(tmp_path / "overlay" / f"{PHOTOS[0].stem}.png")
    width, height = Image.open(PHOTOS[0]).size
    assert overlay.height >= height and overlay.width > width  # photo plus a legend panel
    row = json.loads(result.stdout.splitlines()[0])
    assert row["size"] == [height, width] and row["classes"]


@pytest.mark.parametrize("args,needle", [
    (["{missing}", "{photo}"], "does not exist"),
    (["{empty}", "{photo}"], "no exported resolution"),
    (["{cls}", "{missing}"], "does not exist: check the image path"),
    (["{cls}", "{photo}", "--masks", "{empty}"], "need a segmentation model"),
    (["{cls}", "{photo}", "--precision", "fp16"], None),  # fp16 exists: runs on CPU too
])
def test_errors_are_one_line(tiny_export, tmp_path, args, needle):
    empty = tmp_path / "empty"
    empty.mkdir()
    values = dict(missing=tmp_path / "missing", empty=empty, photo=PHOTOS[0],
                  cls=tiny_export("classification", fp16=True))
    result = predict(*[a.format(**values) for a in args])
    if needle is None:
        assert result.exit_code == 0, result.stderr
        return
    assert result.exit_code != 0 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_truncated_model_and_missing_backend(tiny_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_export("classification", fp16=True), copy)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:1000])
    result = predict(copy, PHOTOS[0], "--precision", "fp32")
    assert result.exit_code != 0 and "truncated" in result.stderr and "export the model again" in result.stderr
    if importlib.util.find_spec("tensorrt") is None:
        (copy / "model.engine").write_bytes(b"x")
        result = predict(copy / "model.engine", PHOTOS[0])
        assert result.exit_code != 0 and "pip install 'beit-deploy[gpu]'" in result.stderr


def test_palettes():
    ade = {i: name + (" " if i == 7 else "") for i, name in enumerate(ADE20K_CLASSES)}
    assert is_ade(ade) and tuple(palette_for(ade)[2]) == (6, 230, 230)
    other = {i: f"class{i}" for i in range(5)}
    assert not is_ade(other)
    np.testing.assert_array_equal(palette_for(other), deterministic_palette(5))
    assert len({tuple(c) for c in deterministic_palette(150)}) == 150


def test_masks_and_overlays_never_clobber_other_files(tiny_export, tmp_path):
    """Before: `--masks DIR` with the photo a.png in DIR overwrote a.png with its mask (exit 0)."""
    folder, photos = tiny_export("segmentation"), tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTOS[0], photos / "a.png")
    shutil.copy(PHOTOS[1], photos / "b.png")
    before = (photos / "a.png").read_bytes()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (photos / "b.png").unlink()
    (photos / "b.png").symlink_to(PHOTOS[1].resolve())  # an input that is a link: read, never written through
    result = predict(folder, photos / "a.png", photos / "b.png", "--masks", photos)
    assert result.exit_code == 1 and "a.png' exists and is not a mask beit-deploy wrote" in result.stderr
    assert (photos / "a.png").read_bytes() == before and (photos / "b.png").is_symlink()
    assert "2 mask/overlay file(s) were not written" in result.stderr
    masks, overlays = tmp_path / "masks", tmp_path / "overlays"
    for _ in range(2):  # a second run replaces its own earlier outputs
        result = predict(folder, photos / "a.png", "--masks", masks, "--overlay", overlays)
        assert result.exit_code == 0, result.stderr
    result = predict(folder, photos / "a.png", "--masks", overlays)  # an overlay is not a mask
    assert result.exit_code == 1 and "is not a mask" in result.stderr
    (masks / "a.png").unlink()
    (masks / "a.png").symlink_to(victim)
    result = predict(folder, photos / "a.png", "--masks", masks)
    assert result.exit_code == 1 and victim.read_text() == "precious"
