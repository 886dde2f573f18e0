"""Interrupting a real `beit-deploy export` process: SIGTERM stops it cleanly (exit 143, nothing left); what a
SIGKILL leaves is never listed as a resolution, and the next export of the model cleans it up (recovering an
export a killed swap had hidden). No timing luck: the export is paused at a known point by a hook, the test
waits for the hook's marker file, then signals it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beit_deploy import BeitTRTRunner
from beit_deploy.core.manifest import resolution_folders
from beit_deploy.exporter.loading import ModelSpec
from beit_deploy.exporter.parity import sample_images
from beit_deploy.exporter.pipeline import ExportOptions, export

# `beit-deploy export ...` with one hook: at PAUSE_AT it creates PAUSE_MARKER and sleeps.
#   manifest: the manifest is written inside the hidden .partial folder (the export is about to be swapped in)
#   swap: the earlier export was renamed aside to .old-*, the new one is not in place yet
HOOKED_CLI = """
import os, sys, time
from beit_deploy.core import files
from beit_deploy.exporter import pipeline

def pause():
    open(os.environ["PAUSE_MARKER"], "w").close()
    time.sleep(600)

if os.environ["PAUSE_AT"] == "manifest":
    write = pipeline.write_data_loader
    pipeline.write_data_loader = lambda *a, **k: (write(*a, **k), pause())[0]
else:
    replace, moved = files.os.replace, []
    def hooked(src, dst):
        if moved and ".partial-" in str(src):
            pause()
        moved.append(".old-" in str(dst))
        return replace(src, dst)
    files.os.replace = hooked

from beit_deploy.cli import main
sys.argv[0] = "beit-deploy"
main()
"""


def paused_export(model: Path, out: Path, at: str, tmp_path: Path) -> subprocess.Popen:
    """A `beit-deploy export` process of `model` into `out`, paused at `at` (see HOOKED_CLI)."""
    marker = tmp_path / f"paused-{at}"
    env = {**os.environ, "PAUSE_AT": at, "PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", HOOKED_CLI, "export", "--model", str(model), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the export never reached {at}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def good_export(model: Path, out: Path, resolution=(64, 64)) -> Path:
    return export(ModelSpec(str(model)), ExportOptions(resolutions=(resolution,), out_dir=out))[0].folder


def predicts(folder: Path) -> bool:
    with BeitTRTRunner(folder) as runner:
        return bool(runner.predict(sample_images()[0]).top_k)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_sigterm_stops_cleanly(tiny_dir, tmp_path):
    model, out = tiny_dir("classification"), tmp_path / "out"
    earlier = good_export(model, out)
    before = (earlier / "manifest.json").read_text()
    code, err = stop(paused_export(model, out, "manifest", tmp_path), signal.SIGTERM)
    assert code == 143 and err.strip().endswith("terminated"), err
    assert "Traceback" not in err
    assert hidden(earlier.parent) == []  # the half-written export is gone
    assert (earlier / "manifest.json").read_text() == before  # the earlier one untouched
    assert predicts(earlier)
    assert predicts(good_export(model, out))


def test_sigkill_leftovers_are_never_resolutions_and_get_cleaned(tiny_dir, tmp_path):
    model, out = tiny_dir("classification"), tmp_path / "out"
    earlier = good_export(model, out)
    code, _ = stop(paused_export(model, out, "manifest", tmp_path), signal.SIGKILL)
    assert code == -signal.SIGKILL
    (leftover,) = hidden(earlier.parent)
    assert leftover.startswith(".64x64.partial-") and (earlier.parent / leftover / "manifest.json").is_file()
    assert list(resolution_folders(earlier.parent)) == ["64x64"]  # before: ".64x64.partial-..., 64x64"
    with BeitTRTRunner.from_dir(earlier.parent) as runner:
        assert runner.resolution == (64, 64)
    good_export(model, out, (32, 32))  # the next export of the model cleans up
    assert hidden(earlier.parent) == [] and list(resolution_folders(earlier.parent)) == ["32x32", "64x64"]
    assert predicts(earlier)


def test_sigkill_between_the_renames_loses_no_export(tiny_dir, tmp_path):
    model, out = tiny_dir("classification"), tmp_path / "out"
    earlier = good_export(model, out)
    code, _ = stop(paused_export(model, out, "swap", tmp_path), signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not earlier.exists()  # killed with the export renamed aside: it is hidden, not lost
    assert sorted(n.split("-")[0] for n in hidden(earlier.parent)) == [".64x64.old", ".64x64.partial"]
    good_export(model, out, (32, 32))  # the next export of the model puts it back
    assert hidden(earlier.parent) == [] and list(resolution_folders(earlier.parent)) == ["32x32", "64x64"]
    assert predicts(earlier)
