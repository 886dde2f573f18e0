"""TensorRT's Python API without TensorRT: its type stubs (for mypy) and the names its 11.x bindings define.

Used by `make install` and tests/trt/test_static_check.py:

    python tests/trt/trt_stubs.py install VENV   # stubs -> VENV/trt-stubs (patched); 11.x wheel -> VENV/trt-wheels

- `tensorrt-stubs` (10.13.0.35.1, MIT) is installed with `pip install --target $(VENV)/trt-stubs`, never into
  site-packages: its `tensorrt/__init__.pyi` would make `import tensorrt` find an empty namespace package, and
  every "is TensorRT installed?" check would answer yes. mypy reads it through MYPYPATH.
- Three of its signatures are not valid Python (a parameter named `in`; a parameter without a default after
  ones with defaults) and it imports `tensorrt_libs`, which has no stubs; `patch` fixes exactly those lines.
- The `tensorrt_cu13_bindings` 11.x wheel is downloaded (not installed) to $(VENV)/trt-wheels; its compiled
  module holds every Python API name as a string, which `binding_names` reads out of the wheel.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

STUBS = "tensorrt-stubs==10.13.0.35.1"
BINDINGS_11 = "tensorrt_cu13_bindings==11.4.0.106"
STUBS_DIR, WHEELS_DIR = "trt-stubs", "trt-wheels"  # under the virtual environment (sys.prefix)
PATCHES = [  # (file, regex, replacement): the lines mypy cannot parse or resolve
    ("tensorrt_bindings/tensorrt.pyi", r"(\(self(?:: \w+)?, )in: ", r"\1in_: "),
    ("tensorrt_bindings/tensorrt.pyi", r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)"),
    ("tensorrt/__init__.pyi", r"(?m)^import tensorrt_libs as tensorrt_libs\n", ""),
]


def patch(folder: Path) -> int:
    """Apply PATCHES to the stubs installed in `folder`; returns how many lines changed (0 the second time)."""
    changed = 0
    for name, pattern, replacement in PATCHES:
        path = Path(folder) / name
        text, count = re.subn(pattern, replacement, path.read_text())
        if count:
            path.write_text(text)
            changed += count
    return changed


def stub_names(folder: Path) -> set[str]:
    """Every class, function, method, attribute and enum member name the stubs define."""
    names: set[str] = set()
    for path in (Path(folder) / "tensorrt_bindings").glob("*.pyi"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def missing_from_bindings(names, wheel: Path) -> set[str]:
    """The names not among the strings of the bindings wheel's compiled tensorrt module (its Python API names).

    A name counts when it ends a NUL-terminated string there: the linker merges "INPUT" into the tail of
    "CONDITIONAL_INPUT", so whole-string matching would miss names that are there (and a name that is only
    the tail of another passes: the check can miss a removal, never invent one).
    """
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if re.search(r"/tensorrt[^/]*\.so$", n))
        data = archive.read(member)
    return {name for name in names if name.encode() + b"\0" not in data}


def used_names(paths: list[Path], known: set[str], own: set[str] = frozenset()) -> dict[str, set[str]]:
    """{name: files} for attribute names the modules use that TensorRT's stubs define: every `trt.X.Y` chain,
    and every other attribute the stubs know by that name unless the package defines it itself (`own`: a
    `.precision` there is our manifest's, not TensorRT's removed ILayer.precision)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Attribute) and (_rooted_at_trt(node) or node.attr in known - own):
                found.setdefault(node.attr, set()).add(Path(path).name)
    return found


def own_names(package: Path) -> set[str]:
    """Names the package defines: functions and methods, class-level fields, `self.x = ...` attributes."""
    names: set[str] = set()
    for path in Path(package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
                names |= {t.target.id for t in node.body if isinstance(t, ast.AnnAssign)
                          and isinstance(t.target, ast.Name)}
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def _rooted_at_trt(node: ast.Attribute) -> bool:
    value = node.value
    while isinstance(value, ast.Attribute):
        value = value.value
    return isinstance(value, ast.Name) and value.id == "trt"


def install(prefix: Path) -> None:
    """The patched stubs into prefix/trt-stubs; the 11.x bindings wheel into prefix/trt-wheels if pip can get
    it (without it the TensorRT 11 name check skips, saying so)."""
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "--no-deps", "--upgrade", "--target", str(prefix / STUBS_DIR), STUBS],
                   check=True)
    print(f"patched {patch(prefix / STUBS_DIR)} line(s) of {STUBS} in {prefix / STUBS_DIR}")
    got = subprocess.run(pip + ["download", "--no-deps", "-d", str(prefix / WHEELS_DIR), BINDINGS_11])
    if got.returncode:
        print(f"{BINDINGS_11} could not be downloaded: the TensorRT 11 name check will skip (docs/tensorrt.md, Static check)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "install":
        sys.exit("usage: python tests/trt/trt_stubs.py install VENV")
    install(Path(sys.argv[2]))
