import shutil

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_export_prints_the_parity_figures(tiny_dir, tmp_path):
    result = _run("export", "--model", str(tiny_dir("classification")), "--fp16", "-r", "64", "-r", "80x48",
                  "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "tiny-classification/64x64: classification, 64x64, weights pretrained" in result.output
    assert "fp16: model.fp16.onnx" in result.output and "passed" in result.output
    assert (tmp_path / "tiny-classification" / "80x48" / "manifest.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--model", "beit-bse-patch16-224"], "did you mean beit-base-patch16-224"),
    (["--model", "beit-base-patch16-224", "--random-weights", "-r", "100"], "multiples of 16"),
    (["--model", "beit-base-patch16-224", "--random-weights", "-r", "big"], "not N or HxW"),
    (["--model", "./no/such/folder"], "does not exist"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    result = _run("export", *args, "--out", str(tmp_path))
    assert result.exit_code == 2
    assert message in result.output
    _assert_one_error_line(result)
    assert not any(tmp_path.iterdir())


def test_folder_without_config(tmp_path):
    result = _run("export", "--model", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "has no config.json" in result.output
    _assert_one_error_line(result)


def test_broken_weights(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir("classification"), tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    result = _run("export", "--model", str(folder), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "could not be loaded" in result.output
    _assert_one_error_line(result)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _assert_one_error_line(result):
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
