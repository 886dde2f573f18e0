"""Helpers of the serving tests: the sample photos, whether the serve extra is here (skip marks saying why)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

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
