"""The timing cache on disk (trt/timing_cache.py) with a stand-in TensorRT: file lock, merge with what another
build saved meanwhile, and a cache of another GPU or TensorRT version kept apart, never overwritten."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from beit_deploy.core.engine_manifest import GpuInfo, gpu_key
from beit_deploy.trt import timing_cache
from fake_tensorrt import Cache, Config

KEY = "trt10.13.0.35-nvidia-h100-80gb-hbm3-sm90"


def entries(path) -> tuple[str, list[str]]:
    data = json.loads(path.read_bytes())
    return data["key"], data["entries"]


def build(config: Config, *measured: str) -> None:
    """What a build does to the attached cache: measures tactics."""
    config.get_timing_cache().entries |= set(measured)


def test_gpu_key_names_tensorrt_gpu_and_compute_capability():
    assert gpu_key("10.13.0.35", GpuInfo("NVIDIA H100 80GB HBM3", "9.0")) == KEY
    assert gpu_key("11.4.0.106", GpuInfo("NVIDIA H200", "9.0")) == "trt11.4.0.106-nvidia-h200-sm90"
    assert timing_cache.keyed_path("engines", KEY).as_posix() == f"engines/timing-{KEY}.cache"


def test_first_build_writes_the_cache(tmp_path):
    path, config = tmp_path / "t.cache", Config(KEY)
    assert timing_cache.attach(config, path, KEY) == path
    build(config, "a")
    assert timing_cache.save(config, path, KEY) == path
    assert entries(path) == (KEY, ["a"])
    again = Config(KEY)
    timing_cache.attach(again, path, KEY)
    assert again.get_timing_cache().entries == {"a"}  # the next build starts from it


def test_concurrent_builds_keep_each_others_entries(tmp_path):
    """Two builds attach the same (empty) file, build, save: the second merges with what the first wrote."""
    path, first, second = tmp_path / "t.cache", Config(KEY), Config(KEY)
    timing_cache.attach(first, path, KEY)
    timing_cache.attach(second, path, KEY)
    build(first, "a", "shared")
    build(second, "b", "shared")
    timing_cache.save(first, path, KEY)
    timing_cache.save(second, path, KEY)
    assert entries(path) == (KEY, ["a", "b", "shared"])
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("content", [Cache("trt10.13.0.35-nvidia-a100-sm80", ["x"]).serialize(), b"\x00garbage"],
                         ids=["another GPU", "damaged"])
def test_a_foreign_cache_is_left_alone(tmp_path, content):
    path = tmp_path / "t.cache"
    path.write_bytes(content)
    config = Config(KEY)
    target = timing_cache.attach(config, path, KEY)
    assert target == tmp_path / f"t-{KEY}.cache" == timing_cache.beside(path, KEY)
    assert config.get_timing_cache().entries == set()  # started afresh
    build(config, "a")
    assert timing_cache.save(config, target, KEY) == target
    assert path.read_bytes() == content and entries(target) == (KEY, ["a"])


def test_a_cache_replaced_by_a_foreign_one_during_the_build_is_left_alone(tmp_path):
    path, config = tmp_path / "t.cache", Config(KEY)
    timing_cache.attach(config, path, KEY)
    build(config, "a")
    foreign = Cache("trt11.4.0.106-nvidia-h200-sm90", ["y"]).serialize()
    path.write_bytes(foreign)  # another machine's build wrote the shared file meanwhile
    assert timing_cache.save(config, path, KEY) == timing_cache.beside(path, KEY)
    assert path.read_bytes() == foreign


def test_the_lock_excludes_other_processes(tmp_path):
    path = tmp_path / "t.cache"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a+b')\n"
             "try:\n    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('locked')")
    lock = str(path) + ".lock"
    with timing_cache.locked(path):
        held = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True).stdout.strip()
    free = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True).stdout.strip()
    assert (held, free) == ("locked", "free")


def test_planted_links_in_a_shared_cache_folder_are_never_written_through(tmp_path):
    """Another user of a shared cache folder plants links where the build writes: at the temporary name the
    build used to choose (`.<name>.<pid>.tmp`), at the lock file, at the cache itself. Their targets stay as
    they were; the build's cache lands in the folder."""
    import os

    from beit_deploy.core.errors import ArtifactError

    victim, absent = tmp_path / "victim.txt", tmp_path / "not-there.txt"
    victim.write_text("precious")
    shared = tmp_path / "shared"
    shared.mkdir()
    path, config = shared / "t.cache", Config(KEY)
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (shared / f".t.cache.{pid}.tmp").symlink_to(victim)
    timing_cache.attach(config, path, KEY)
    build(config, "a")
    timing_cache.save(config, path, KEY)
    assert victim.read_text() == "precious" and entries(path) == (KEY, ["a"])
    path.unlink()
    path.symlink_to(victim)  # the cache itself: replaced as a name, its target untouched
    timing_cache.save(config, path, KEY)
    assert victim.read_text() == "precious" and not path.is_symlink() and entries(path) == (KEY, ["a"])
    (shared / "u.cache.lock").symlink_to(absent)
    with pytest.raises(ArtifactError, match="symbolic link"):
        timing_cache.attach(Config(KEY), shared / "u.cache", KEY)
    assert not absent.exists()
