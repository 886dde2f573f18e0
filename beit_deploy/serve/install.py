"""Where the Triton server is and what it needs: the `tritonserver` on PATH (an official install) or nvidia-pytriton's
(the `serve` extra: Triton 2.51, Python backend only, with a backend folder of links made per start so that
nothing installed is changed), and a Python environment its Python backend can use (numpy < 2).
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ServerError  # raised here; also importable from here (its first home)

SERVER_HINT = "pip install 'beit-deploy[serve]' (the tritonserver of nvidia-pytriton), or put Triton's tritonserver " \
              "on PATH"

@dataclass(frozen=True)
class Installation:
    """A tritonserver binary, and for nvidia-pytriton's, where its backends and Python backend stubs are."""

    binary: Path
    backends: Path | None = None  # None: the server's own default (an official install)
    stubs: Path | None = None


def find_server() -> Installation:
    """The tritonserver on PATH, else nvidia-pytriton's; ServerError naming what to install otherwise."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return Installation(Path(on_path))
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
    root = Path(spec.origin).parent / "tritonserver" if spec and spec.origin else None
    if root is None or not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no Triton server found: {SERVER_HINT}")
    return Installation(root / "bin" / "tritonserver", root / "backends", root / "python_backend_stubs")


def check_python_environment() -> None:
    """The Python-backend models run in this environment: numpy < 2 (Triton 2.51's stub exchanges tensors
    wrongly with numpy 2) and Pillow + ONNX Runtime (beit-deploy's own dependencies; found, not imported)."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise ServerError(f"this Python environment has numpy {numpy.__version__}; Triton 2.51's Python backend "
                          "needs numpy < 2 for its models (which run here): pip install 'numpy<2'")
    missing = [package for module, package in (("PIL", "pillow"), ("onnxruntime", "onnxruntime"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ServerError(f"this Python environment lacks {' and '.join(missing)}, which beit-deploy's Python models "
                          f"need (they run here): pip install {' '.join(missing)}")


def backend_folder(installation: Installation, scratch: Path) -> Path:
    """A backend folder of links to nvidia-pytriton's, plus the Python backend stub for this Python."""
    folder = scratch / "backends"
    shutil.copytree(installation.backends, folder, symlinks=True, copy_function=os.symlink)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = installation.stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"this Triton has no Python backend stub for Python {version} (it has "
                          f"{', '.join(sorted(p.name for p in installation.stubs.iterdir()))}): run "
                          "beit-deploy with one of those Python versions")
    if ctypes.util.find_library(f"python{version}") is None:
        raise ServerError(f"the Python backend stub of this Triton needs libpython{version}.so.1.0, which is not "
                          f"installed: apt-get install libpython{version} (Debian/Ubuntu)")
    os.symlink(stub, folder / "python" / stub.name)
    return folder

