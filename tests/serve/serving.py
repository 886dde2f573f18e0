"""Helpers of the serving tests: the sample photos, whether the serve extra is here (skip marks saying why), and
the server fixture: the real `tritonserver` (nvidia-pytriton's, Python backend) on a generated repository, on free
local ports, started once per test module that imports it, ready within a timeout, and always stopped.

(A module, not a conftest.py: a second conftest module would shadow tests/conftest.py for `from conftest import`.)
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from beit_deploy.exporter.parity import sample_images

PHOTOS = sample_images()
SEGMENTATION_RESOLUTION = (64, 96)  # not square, so heights and widths cannot be swapped unnoticed


def serve_unavailable() -> str | None:
    """Why a real server cannot run here (None: it can): the serve extra is missing."""
    if importlib.util.find_spec("tritonclient") is None:
        return "the serve extra is not installed (no tritonclient): pip install 'beit-deploy[serve]'"
    from beit_deploy.serve.server import ServerError, find_server

    try:
        find_server()
    except ServerError as exc:
        return f"the serve extra is not installed: {exc}"
    return None


needs_server = pytest.mark.skipif(serve_unavailable() is not None, reason=str(serve_unavailable()))
needs_tritonclient = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                        reason="the serve extra is not installed (no tritonclient)")


@dataclass(frozen=True)
class Served:
    """A running server, its ensembles by task, and the export folders they serve."""

    server: object
    names: dict[str, str]
    folders: dict[str, Path]


@pytest.fixture(scope="module")
def served(tiny_export, tmp_path_factory):
    """Triton serving a tiny classification (64x64) and a tiny segmentation (64x96) export, python stages."""
    folders = {"classification": tiny_export("classification"),
               "segmentation": tiny_export("segmentation", SEGMENTATION_RESOLUTION)}
    with serving(folders, tmp_path_factory.mktemp("triton") / "model_repository") as running:
        yield running


@contextmanager
def serving(folders: dict[str, Path], repo: Path, **options) -> Iterator[Served]:
    """The real server on a repository written for `folders` (by task) with TritonOptions(**options)."""
    from beit_deploy.serve.repository import TritonOptions, write_repository
    from beit_deploy.serve.server import ServerOptions, TritonServer

    models = write_repository(list(folders.values()), TritonOptions(out=repo, **{"max_queue_delay_us": 20000,
                                                                                 **options}))
    with TritonServer(repo, ServerOptions(0, 0, 0, startup_timeout=240)) as server:
        yield Served(server, {m.task: m.name for m in models}, folders)
