"""serve's leftovers of killed starts (serve/watch.py), without a server: a scratch folder is locked before it is
marked, so another start's clean-up never removes one in use; a shared-memory region removed meanwhile is no
error."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from beit_deploy.serve import watch


def test_hold_locks_a_scratch_folder_before_marking_it(tmp_path, monkeypatch):
    """Another start cleaning up just before the lock is taken must not find a marked, unlocked folder (it
    would remove it); once the holder lets go, the mark makes the folder a leftover to remove."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(watch, "SHM", tmp_path / "no-shm")
    scratch = Path(tempfile.mkdtemp(prefix=watch.SCRATCH_PREFIX))
    flock, other = watch.fcntl.flock, {}

    def another_start_cleans_first(fd, operation):
        if "removed" not in other:  # once: its own clean-up locks through here too
            other["removed"] = None
            other["removed"] = watch.clean_leftovers()
        return flock(fd, operation)

    monkeypatch.setattr(watch.fcntl, "flock", another_start_cleans_first)
    fd = watch.hold(scratch)
    assert other["removed"] == [] and (scratch / watch.SCRATCH_MARK).is_file()
    assert watch.clean_leftovers() == []  # held
    os.close(fd)
    assert watch.clean_leftovers() == [scratch.name] and not scratch.exists()


def test_a_region_removed_meanwhile_is_no_error(tmp_path, monkeypatch):
    """A leftover region that its own server (or another start) removes between the listing and the check."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(watch, "SHM", tmp_path)
    region = tmp_path / f"{watch.SHM_PREFIX}4194304_0a1b2c3d_x"
    region.touch()
    monkeypatch.setattr(watch, "alive", lambda pid: region.unlink() or False)
    assert watch.clean_leftovers() == []
