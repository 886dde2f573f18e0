"""export on hostile names and a hostile environment: the output stays inside --out, generated code carries no
data, impossible resolutions and bad inputs are refused up front in one line, the disk's errors are named."""

from __future__ import annotations

import errno
import json
import runpy
import shutil

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core import files
from beit_deploy.core.manifest import read_manifest
from beit_deploy.exporter import data_loader, pipeline
from beit_deploy.exporter.parity import sample_images


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def one_error(result, code: int, needle: str) -> None:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == code and len(errors) == 1 and needle in errors[0], result.output


def only_visible(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir())


def test_model_dot_dot_stays_inside_out_and_spares_the_folder_next_door(tiny_dir, tmp_path, monkeypatch):
    """Before: the model name was '..', so OUT/../64x64 (here: work/64x64) was replaced, precious file and all."""
    model = shutil.copytree(tiny_dir("classification"), tmp_path / "my-model")
    work = model / "work"
    (work / "64x64").mkdir(parents=True)
    (work / "64x64" / "precious.txt").write_text("keep me")
    monkeypatch.chdir(work)
    result = run("export", "--model", "..", "--out", "out")
    assert result.exit_code == 0, result.output
    assert (work / "64x64" / "precious.txt").read_text() == "keep me"
    assert (work / "out" / "my-model" / "64x64" / "manifest.json").is_file()
    assert read_manifest(work / "out" / "my-model" / "64x64").model == "my-model"


def test_model_dot_and_trailing_slash_give_the_folder_name(tiny_dir, tmp_path, monkeypatch):
    model = shutil.copytree(tiny_dir("classification"), tmp_path / "tiny-c")
    monkeypatch.chdir(model)
    assert run("export", "--model", ".", "--out", tmp_path / "out").exit_code == 0  # before: an empty name
    monkeypatch.chdir(tmp_path)
    assert run("export", "--model", "tiny-c/", "-r", "32", "--out", tmp_path / "out").exit_code == 0
    assert only_visible(tmp_path / "out") == ["tiny-c", "tiny-c/32x32", "tiny-c/64x64"]


@pytest.mark.parametrize("model, source, expected", [
    ("microsoft/beit-base-patch16-224", "hub", "beit-base-patch16-224"),
    ("org/name/", "hub", "name"), ("beit-base-patch16-224", "registry", "beit-base-patch16-224"),
    ("/", "local", "model"), ("a b;c", "local", "a_b_c"),
])
def test_model_names(model, source, expected):
    from beit_deploy.exporter.loading import model_name

    assert model_name(model, source) == expected


PAYLOAD = 'x""";__import__("pathlib").Path("PWNED").touch();"""'


def test_a_folder_name_with_code_does_not_run(tiny_dir, tmp_path, monkeypatch):
    """Before: the checkpoint folder's name was pasted into data_loader.py, so importing it (as the README's
    `polygraphy run ... --data-loader-script` does) ran whatever the name said."""
    model = shutil.copytree(tiny_dir("classification"), tmp_path / PAYLOAD)
    monkeypatch.chdir(tmp_path)
    result = run("export", "--model", str(model), "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "out").glob("*/64x64")
    script = folder / "data_loader.py"
    feeds = list(runpy.run_path(str(script))["load_data"]())
    assert feeds and not (tmp_path / "PWNED").exists()
    assert script.read_text() == data_loader.TEMPLATE  # one static text for every export
    assert json.loads((folder / "manifest.json").read_text())["source"]["model"] == str(model)  # data stays data


def test_generated_code_ignores_the_manifest_even_when_it_is_hostile(tmp_path):
    manifest = type("M", (), {"model": PAYLOAD, "resolution": (64, 64), "task": 'c"""; 1/0; """'})()
    path = data_loader.write_data_loader(tmp_path, manifest)
    assert PAYLOAD not in path.read_text() and path.read_text() == data_loader.TEMPLATE


def test_an_impossible_resolution_is_refused_before_anything(tiny_dir, tmp_path):
    """Before: -r 8192 went on to allocate terabytes (an internal error, or the machine swapping)."""
    result = run("export", "--model", tiny_dir("classification"), "-r", "64", "-r", "8192", "--out", tmp_path)
    one_error(result, 2, "resolution 8192x8192 needs at least")
    assert "choose a smaller resolution" in result.output and "loading" not in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text, needle", [("{not json", "Expecting property name"),
                                          ('{"resample": 99}', "resample 99"),
                                          ('{"image_std": [0, 0, 0]}', "image_std"),
                                          ('{"size": "big"}', "string indices"), ("[1, 2]", "not a JSON object")])
def test_a_bad_preprocessor_config_is_named(tiny_dir, tmp_path, text, needle):
    model = shutil.copytree(tiny_dir("classification"), tmp_path / "m")
    (model / "preprocessor_config.json").write_text(text)
    result = run("export", "--model", model, "--out", tmp_path / "out")
    one_error(result, 1, "preprocessor_config.json' cannot be used")
    assert needle in result.output and not (tmp_path / "out").exists()


def test_an_unreadable_parity_photo_is_named_up_front(tiny_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sample_images()[0], photos)
    (photos / "holiday.jpg").mkdir()  # a folder named like a photo
    result = run("export", "--model", tiny_dir("classification"), "--images", photos, "--out", tmp_path / "out")
    one_error(result, 2, "holiday.jpg")
    (photos / "holiday.jpg").rmdir()
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    result = run("export", "--model", tiny_dir("classification"), "--images", photos, "--out", tmp_path / "out")
    one_error(result, 2, "broken.png' is not a readable image")
    assert "remove it from the --images folder" in result.output and not (tmp_path / "out").exists()


def _fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, errno.errorcode[code] == "ENOSPC" and "No space left on device" or "Read-only file system",
                      "/the/disk/file")
    return fail


def test_a_read_only_out_is_one_line(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(files.tempfile, "mkdtemp", _fail_with(errno.EROFS))  # as root, chmod cannot do it
    result = run("export", "--model", tiny_dir("classification"), "--out", tmp_path / "out")
    one_error(result, 1, "Read-only file system ('/the/disk/file'): choose a folder on a writable file system")


def test_a_full_disk_is_one_line_and_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "write_data_loader", _fail_with(errno.ENOSPC))
    result = run("export", "--model", tiny_dir("classification"), "--out", tmp_path / "out")
    one_error(result, 1, "No space left on device")
    assert "free some disk space" in result.output and "nothing was written" in result.output
    assert not any((tmp_path / "out").rglob("*"))


def test_each_resolution_is_reported_as_soon_as_it_is_written(tiny_dir, tmp_path, monkeypatch):
    """Before: with -r 64 -r 32 and the second failing, the first (written) export was never reported."""
    build, calls = pipeline._build, []

    def second_fails(loaded, resolution, *rest):
        calls.append(resolution)
        if len(calls) == 2:
            raise pipeline.ParityError("planted failure")
        return build(loaded, resolution, *rest)

    monkeypatch.setattr(pipeline, "_build", second_fails)
    result = run("export", "--model", tiny_dir("classification"), "-r", "64", "-r", "32", "--out", tmp_path)
    one_error(result, 1, "planted failure")
    assert "tiny-classification/64x64: classification, 64x64" in result.output
    assert only_visible(tmp_path) == ["tiny-classification", "tiny-classification/64x64"]
