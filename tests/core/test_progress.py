"""core.progress: the step lines always (a log reads them), a bar between them only on a terminal, nothing under
-q but warnings, third-party loggers loud only under -v; and the same through the CLI (predict, compare)."""

from __future__ import annotations

import logging
import sys

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core import progress
from beit_deploy.exporter.parity import sample_images


@pytest.fixture(autouse=True)
def normal(monkeypatch):
    """Each test starts at NORMAL verbosity with bars decided by the terminal test (and restores both)."""
    monkeypatch.setenv(progress.VERBOSITY_ENV, str(progress.NORMAL))
    monkeypatch.delenv(progress.BARS_ENV, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    yield
    progress.set_verbosity(progress.NORMAL)


def counted_step():
    with progress.step("counting", total=3, unit="img") as counting:
        for _ in range(3):
            counting.advance()
    for _ in progress.tracked([1, 2], "tracking"):
        pass


def test_a_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    counted_step()
    err = capsys.readouterr().err
    assert err.startswith("counting...\n") and "counting: done in" in err
    assert "3/3" in err and "img" in err and "2/2" in err  # tqdm's counter


def test_only_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    counted_step()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "counting..." and lines[1].startswith("counting: done in") and len(lines) == 2


def test_forced_off_and_on(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv(progress.BARS_ENV, "0")
    counted_step()
    assert "3/3" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv(progress.BARS_ENV, "1")
    counted_step()
    assert "3/3" in capsys.readouterr().err


def test_quiet_says_only_warnings_and_notes(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress.set_verbosity(progress.QUIET)
    counted_step()
    progress.say("  warning: few calibration photos")
    progress.say("note: the bundled server cannot run this stage")
    progress.say("exporting tiny at 64x64")
    assert capsys.readouterr().err == "  warning: few calibration photos\nnote: the bundled server cannot run this stage\n"


def test_an_opaque_step_shows_its_elapsed_time(capsys, monkeypatch):
    import time

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress.step("tracing"):
        time.sleep(1.3)  # the timer thread redraws once a second
    err = capsys.readouterr().err
    assert "tracing: 00:01" in err and "tracing: done in" in err


def test_lines_said_during_a_bar_stay_whole(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress.step("validating", total=2):
        progress.say("  fp32 vs eager: passed")
    assert "\n  fp32 vs eager: passed\n" in capsys.readouterr().err.replace("\r", "\n")


def test_third_party_loggers_follow_verbosity():
    progress.set_verbosity(progress.VERBOSE)
    assert progress.chatty() and logging.getLogger("modelopt").level == logging.INFO
    progress.set_verbosity(progress.NORMAL)
    assert not progress.chatty() and logging.getLogger("transformers").level == logging.ERROR


# -- through the CLI -----------------------------------------------------------------------------------------
def predict(*args, env=None):
    return CliRunner().invoke(main, ["predict", *map(str, args)], env=env)


def test_predict_bar_replaces_the_per_image_lines(tiny_export):
    photos = sample_images() * 2
    folder = tiny_export("classification")
    plain = predict(folder, *photos, "--json")
    assert plain.exit_code == 0 and "[10/10]" in plain.stderr and "10/10 [" not in plain.stderr
    bar = predict(folder, *photos, "--json", env={progress.BARS_ENV: "1"})  # as on a terminal
    assert bar.exit_code == 0 and "[1/10]" not in bar.stderr and "10/10 [" in bar.stderr
    assert len(bar.stdout.splitlines()) == 10  # results untouched, on stdout
    quiet = predict(folder, *photos, "--json", "-q", env={progress.BARS_ENV: "1"})
    assert quiet.exit_code == 0 and quiet.stderr == "" and len(quiet.stdout.splitlines()) == 10


def test_quiet_triton_says_nothing_on_stderr(tiny_export, tmp_path):
    folder = tiny_export("classification")
    loud = CliRunner().invoke(main, ["triton", str(folder), "--out", str(tmp_path / "a")])
    quiet = CliRunner().invoke(main, ["triton", str(folder), "--out", str(tmp_path / "b"), "-q"])
    assert loud.exit_code == quiet.exit_code == 0, loud.stderr + quiet.stderr
    assert "model(s) into" in loud.stderr and quiet.stderr == ""
    assert quiet.stdout.replace(str(tmp_path / "b"), "X") == loud.stdout.replace(str(tmp_path / "a"), "X")


def test_polygraphy_log_only_with_verbose(tiny_export):
    pytest.importorskip("polygraphy")
    folder = tiny_export("classification")
    args = ["compare", str(folder), "--runners", "onnxrt-fp32,torch", "--random-inputs", "1"]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0 and plain.stdout.strip() == "comparison PASSED: onnxrt-fp32 vs torch"
    verbose = CliRunner().invoke(main, [*args, "-v"])
    assert verbose.exit_code == 0 and "[I] Accuracy Comparison" in verbose.stdout


def test_lines_only_without_tqdm(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    counted_step()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "counting..." and lines[1].startswith("counting: done in") and len(lines) == 2


def test_quiet_on_the_group_reaches_the_command(tiny_export, tmp_path):
    folder = tiny_export("classification")
    quiet = CliRunner().invoke(main, ["-q", "triton", str(folder), "--out", str(tmp_path / "q")])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    assert progress.verbosity() == progress.NORMAL  # restored when the command ended
    loud = CliRunner().invoke(main, ["-q", "triton", str(folder), "--out", str(tmp_path / "v"), "-v"])
    assert loud.exit_code == 0 and "model(s) into" in loud.stderr  # the command's flag wins
