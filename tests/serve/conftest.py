"""The server fixture: the real `tritonserver` (nvidia-pytriton's, Python backend) on a generated repository, on
free local ports, started once per test module, ready within a timeout, and always stopped, failure or not.
"""

from __future__ import annotations

import pytest
from serving import SEGMENTATION_RESOLUTION, Served


@pytest.fixture(scope="module")
def served(tiny_export, tmp_path_factory):
    """Triton serving a tiny classification (64x64) and a tiny segmentation (64x96) export, python stages."""
    from beit_deploy.serve.repository import TritonOptions, write_repository
    from beit_deploy.serve.server import ServerOptions, TritonServer

    folders = {"classification": tiny_export("classification"),
               "segmentation": tiny_export("segmentation", SEGMENTATION_RESOLUTION)}
    repo = tmp_path_factory.mktemp("triton") / "model_repository"
    models = write_repository(list(folders.values()), TritonOptions(out=repo, max_queue_delay_us=20000))
    with TritonServer(repo, ServerOptions(0, 0, 0, startup_timeout=240)) as server:
        yield Served(server, {m.task: m.name for m in models}, folders)
