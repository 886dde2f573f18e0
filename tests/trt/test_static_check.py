"""The static TensorRT check: mypy over the TensorRT-using modules against TensorRT's type stubs, proof that it
bites (a misspelled attribute and a wrong argument fail it), and the names used checked against TensorRT 11.

Where the stubs are wrong or 10.x-only, the code carries `# type: ignore[code]  # stubs: why` (the allow-list;
mypy's warn_unused_ignores drops stale ones); `test_every_ignore_says_why` keeps each one commented.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import trt_stubs

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "beit_deploy"
TRT_MODULES = ["trt/build.py", "trt/timing_cache.py", "trt/inspect.py", "runtime/tensorrt_backend.py"]
STUBS = Path(sys.prefix) / trt_stubs.STUBS_DIR
WHEELS = sorted((Path(sys.prefix) / trt_stubs.WHEELS_DIR).glob("tensorrt_cu13_bindings-11.*.whl"))
needs_stubs = pytest.mark.skipif(not (STUBS / "tensorrt").is_dir(), reason=f"no TensorRT stubs in {STUBS}: run "
                                 "`make install` (python tests/trt/trt_stubs.py install .venv)")
# Names the code uses that TensorRT 11 no longer has, each used only where it cannot run on 11 (say where).
ONLY_ON_10: dict[str, str] = {}


def mypy(root: Path, modules: list[str]) -> subprocess.CompletedProcess:
    """mypy (the project's [tool.mypy] settings) over `modules` of the package copy at `root`."""
    env = {**os.environ, "MYPYPATH": str(STUBS)}
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
               str(Path(sys.prefix) / "mypy-cache"), *[f"beit_deploy/{m}" for m in modules]]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


@needs_stubs
def test_tensorrt_modules_type_check():
    result = mypy(ROOT, TRT_MODULES)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_stubs
def test_the_check_fails_on_a_misspelled_attribute_and_a_wrong_argument(tmp_path):
    """The same check on a copy of the package with two planted mistakes: it must name both."""
    copy = tmp_path / "beit_deploy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    plant(copy / "trt/build.py", "config.clear_flag(trt.BuilderFlag.TF32)", "config.clear_flag(trt.BuilderFlag.TF23)")
    plant(copy / "trt/timing_cache.py", "config.set_timing_cache(cache, ignore_mismatch=False)",
          "config.set_timing_cache(cache, ignore_mismatches=False)")
    result = mypy(tmp_path, TRT_MODULES)
    assert result.returncode == 1, result.stdout
    assert re.search(r'build\.py:\d+: error: "type\[BuilderFlag\]" has no attribute "TF23"', result.stdout), \
        result.stdout
    assert re.search(r'timing_cache\.py:\d+: error: Unexpected keyword argument "ignore_mismatches" for '
                     r'"set_timing_cache"', result.stdout), result.stdout


def plant(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer has {old!r}: update this test"
    path.write_text(text.replace(old, new, 1))


def test_every_ignore_says_why():
    for module in TRT_MODULES:
        for number, line in enumerate((PACKAGE / module).read_text().splitlines(), 1):
            if "type: ignore" in line:
                assert re.search(r"type: ignore\[[\w-]+(, [\w-]+)*\]\s+# stubs: \S", line), f"{module}:{number}"


@needs_stubs
@pytest.mark.skipif(not WHEELS, reason=f"no {trt_stubs.BINDINGS_11} wheel in {Path(sys.prefix) / 'trt-wheels'} "
                    "(pip could not download it): see docs/tensorrt.md, Static check, for running this check")
def test_every_tensorrt_name_used_exists_in_tensorrt_11():
    used = trt_stubs.used_names([PACKAGE / m for m in TRT_MODULES], trt_stubs.stub_names(STUBS),
                                trt_stubs.own_names(PACKAGE))
    assert {"TF32", "STRONGLY_TYPED", "execute_async_v3", "set_timing_cache", "combine"} <= set(used)
    missing = trt_stubs.missing_from_bindings(set(used) - set(ONLY_ON_10), WHEELS[-1])
    assert not missing, f"not in TensorRT 11's bindings: { {name: sorted(used[name]) for name in missing} }"
    # the check can tell: names TensorRT 11 removed are missing from its bindings
    assert trt_stubs.missing_from_bindings({"OBEY_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH", "TF32"}, WHEELS[-1]) \
        == {"OBEY_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH"}


def test_stub_patches_apply_once(tmp_path):
    (tmp_path / "tensorrt_bindings").mkdir()
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt_bindings/tensorrt.pyi").write_text(
        "    def f(self, in: list[int], out: list[int]) -> int: ...\n"
        "    def add_scale_nd(self, input: ITensor, mode: ScaleMode, shift: Weights = None, scale: Weights = None, "
        "power: Weights = None, channel_axis: int) -> IScaleLayer: ...\n")
    (tmp_path / "tensorrt/__init__.pyi").write_text("import tensorrt_libs as tensorrt_libs\nimport warnings\n")
    assert trt_stubs.patch(tmp_path) == 3 and trt_stubs.patch(tmp_path) == 0
    text = (tmp_path / "tensorrt_bindings/tensorrt.pyi").read_text()
    assert "self, in_: list[int]" in text and "channel_axis: int = ...)" in text
    assert (tmp_path / "tensorrt/__init__.pyi").read_text() == "import warnings\n"
