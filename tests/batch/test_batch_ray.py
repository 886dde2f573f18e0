"""The Ray engine on a local Ray cluster (one per module, `address="local"`: never a Ray already on the machine):
the same rows as the local engine, a killed worker replaced without a lost or doubled row, and clear errors for
a cluster without GPUs and for an export a worker cannot open."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from photos import check_rows, photo_tree  # noqa: F401 - photo_tree: the fixture

from beit_deploy.batch import BatchOptions, run_batch
from beit_deploy.batch.output import read_rows
from beit_deploy.core.errors import UsageError

ray = pytest.importorskip("ray", reason="the batch extra (ray[data]) is not installed")
pytestmark = pytest.mark.ray
WORKER_TITLE = b"MapWorker(MapBatches(BatchWorker))"


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU local cluster for this module's jobs (run_batch uses a Ray already initialised, as is)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def job(export, inputs, out, progress=None, **kwargs):
    return run_batch(BatchOptions(str(export), tuple(map(str, inputs)), str(out), **kwargs), progress)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_the_same_rows_as_the_local_engine(cluster, tiny_export, photo_tree, tmp_path, monkeypatch, task):
    export = tiny_export(task)
    job(export, [photo_tree], tmp_path / "local", batch_size=3)
    monkeypatch.chdir(photo_tree.parent)  # relative paths: made absolute on the driver, as workers need
    summary = job(os.path.relpath(export), ["photos"], tmp_path / "ray", engine="ray", workers=2, batch_size=3,
                  quiet=True)
    local, distributed = read_rows(tmp_path / "local", "parquet"), read_rows(tmp_path / "ray", "parquet")
    check_rows(distributed, photo_tree)
    assert distributed == local  # bit for bit, in the same order
    assert summary.rows == len(local) and summary.errors == 7


def test_killed_workers_lose_no_row_and_double_none(cluster, tiny_export, photo_tree, tmp_path):
    """Both actors are killed (SIGKILL) once the first rows are in: the job can only finish if Ray replaces them
    and runs their batches again; every input still has exactly one row, equal to the local engine's."""
    inputs = tmp_path / "many"
    inputs.mkdir()
    photos = sorted((photo_tree / "city").rglob("*.png"))
    for k in range(120):
        (inputs / f"{k:03d}.png").symlink_to(photos[k % len(photos)])
    killed, later = [], set()
    earlier = set(workers())  # actors of this module's earlier jobs may still be shutting down

    def kill_the_workers(done, total):
        if not killed:
            killed.extend(set(workers()) - earlier)
            assert killed, "no Ray worker process found"
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            assert done < total  # killed while work was left
        else:
            later.update(set(workers()) - set(killed) - earlier)

    export = tiny_export("segmentation")
    job(export, [inputs], tmp_path / "ray", kill_the_workers, engine="ray", workers=2, batch_size=2, quiet=True)
    assert len(killed) == 2 and later  # both died, and new ones did the rest
    rows = read_rows(tmp_path / "ray", "parquet")
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in inputs.iterdir())  # each exactly once
    assert all(r["error"] is None for r in rows)
    job(export, [inputs], tmp_path / "local", batch_size=2)
    assert rows == read_rows(tmp_path / "local", "parquet")  # in input order too


def workers() -> list[int]:
    """Process ids of this test's batch actors (Ray names each process after its actor class), among the
    descendants of this process: the local cluster's, not those of another Ray on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and WORKER_TITLE in (entry / "cmdline").read_bytes()
                    and descends_from_us(int(entry.name))):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def descends_from_us(pid: int) -> bool:
    """True when `pid` is this process or one of its descendants (read from /proc/<pid>/stat's parent field)."""
    while pid > 1:
        if pid == os.getpid():
            return True
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def test_gpus_asked_of_a_cluster_without_them(cluster, tiny_export, photo_tree, tmp_path):
    with pytest.raises(UsageError, match="has 0 GPU"):
        job(tiny_export("classification"), [photo_tree / "city"], tmp_path / "out", engine="ray",
            gpus_per_worker=1)


def test_a_worker_that_cannot_open_the_export_says_why(cluster, tiny_export, photo_tree, tmp_path):
    with pytest.raises(UsageError, match="on a Ray worker: .* has no fp16 graph"):
        job(tiny_export("classification"), [photo_tree / "city"], tmp_path / "out", engine="ray", precision="fp16",
            quiet=True)


def test_a_worker_without_the_masks_folder_says_so(tiny_export, tmp_path):
    """Workers write the mask files: on a node that does not see --masks (not shared), the worker refuses at
    start with the node's name, instead of failing each row or writing to that node's own disk."""
    from beit_deploy.batch.ray_engine import BatchWorker

    options = BatchOptions(str(tiny_export("segmentation")), ("x.png",), str(tmp_path / "out"), engine="ray")
    with pytest.raises(UsageError, match="masks folder .* is not on Ray node"):
        BatchWorker(options.export, options, str(tmp_path / "not-on-this-node"), 1)
    BatchWorker(options.export, options, str(tmp_path), 1).runner.close()  # a folder it sees: fine
