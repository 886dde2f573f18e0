"""`make demo` installs only what the demo needs, quietly; `make test` still installs the full stack, even in a
venv the demo made (separate stamps); our pyproject gives setuptools nothing to warn about."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(target: str, venv: Path) -> str:
    """What `make TARGET` would run with VENV=venv (make -n: nothing is run)."""
    done = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True, text=True,
                          check=True)
    return done.stdout


def test_the_demo_installs_torch_and_the_export_extra_only(tmp_path):
    plan = dry_run("demo", tmp_path / "venv")
    assert '-e ".[export]"' in plan and "torch" in plan and "samples/demo.py" in plan
    for heavy in ('".[test]"', "quantize", "serve", "trt_stubs", "mypy"):
        assert heavy not in plan, heavy
    pips = [line for line in plan.splitlines() if "/pip " in line]
    assert pips and all("--quiet --disable-pip-version-check" in line for line in pips)


def test_a_demo_venv_does_not_pass_for_the_test_stack(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-demo").touch()  # `make demo` ran here
    assert "samples/demo.py" in dry_run("demo", venv) and '".[export]"' not in dry_run("demo", venv)
    plan = dry_run("test", venv)
    assert '-e ".[test]"' in plan and "trt_stubs.py install" in plan and "pytest" in plan
    (venv / ".installed").touch()  # `make install` ran: the full stack serves the demo too
    assert '-e "' not in dry_run("test", venv)


def test_pyproject_licence_is_an_spdx_expression_and_ships_the_label_sets():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a table is deprecated by setuptools (PEP 639)
    assert any(r.replace(" ", "") == "setuptools>=77" for r in project["build-system"]["requires"])
    assert project["tool"]["setuptools"]["package-data"]["beit_deploy.core"] == ["label_sets/*.tsv.gz"]


def test_the_demo_lists_what_it_wrote_and_the_thresholds_passed(tiny_export, capsys):
    import runpy

    demo = runpy.run_path(str(ROOT / "samples" / "demo.py"))  # not as __main__: nothing runs
    folder = tiny_export("classification", fp16=True)
    demo["what_was_written"](folder)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"written to {folder}/:"
    listed = {line.split()[0]: line for line in lines[2:]}
    assert set(listed) == {p.name for p in folder.iterdir()}
    assert " <= 1e-04 on 8 samples" in listed["model.onnx"] and "max rel err " in listed["model.onnx"]
    assert "min cosine 1.000000 >= 0.999" in listed["model.fp16.onnx"] and "top-1 agreement" in listed["model.fp16.onnx"]
