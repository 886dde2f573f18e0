"""The builder's timing cache on disk: shared by concurrent builds, kept apart per GPU and TensorRT version.

A timing cache holds the measured speed of kernels ("tactics") for one GPU model and TensorRT version; a build
that starts from one skips those measurements. Three rules make a shared file safe:

- A file lock (fcntl, on `<cache>.lock`) is held while the file is read at the start of a build and while it is
  merged and written at the end, never during the build itself, so concurrent builds do not wait on each other.
- At the end the build's cache is `combine`d with what is on disk *now*, then written (to an unpredictable
  temporary name opened with O_EXCL|O_NOFOLLOW, then renamed), so entries another build saved in the meantime
  are kept and a name another user planted in a shared cache folder (a symbolic link) is never written through.
- A cache made by another GPU or TensorRT version is never overwritten: the default file name carries both
  (`timing-<trt version>-<gpu>-sm<cc>.cache`), and a file given by the user that turns out to be foreign is left
  as it is while this build's cache goes to a keyed file beside it.

Everything here takes the builder config and the cache as arguments, so the locking and merging logic is tested
on CPU with stand-ins; tensorrt itself is imported only for type checking.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..core.files import open_lock_file, write_atomic
from ..core.progress import say

if TYPE_CHECKING:
    import tensorrt as trt


def keyed_path(out_dir: Path, key: str) -> Path:
    """The default cache file for builds into `out_dir` on one GPU and TensorRT version (`key`: gpu_key)."""
    return Path(out_dir) / f"timing-{key}.cache"


def beside(path: Path, key: str) -> Path:
    """Where this build's cache goes when the file at `path` belongs to another GPU or TensorRT version."""
    return path.with_name(f"{path.stem}-{key}{path.suffix or '.cache'}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (created if needed, never through a symbolic link) for the
    duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(path.with_name(path.name + ".lock"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def attach(config: trt.IBuilderConfig, path: Path, key: str) -> Path:
    """Give `config` a timing cache started from the file at `path` (if it fits this GPU and TensorRT).

    Returns the file this build's cache is to be saved to: `path`, or a keyed file beside it when `path` holds
    another GPU's or TensorRT version's cache (which is then left untouched).
    """
    with locked(path):
        data = path.read_bytes() if path.is_file() else b""
    cache = _parse(config, data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        say(f"  reusing timing cache {path}")
        return path
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    if not data:
        return path
    target = beside(path, key)
    say(f"  timing cache {path} was made by another GPU or TensorRT version (or is damaged): left as it is; "
        f"this build's cache goes to {target}")
    return target


def save(config: trt.IBuilderConfig, path: Path, key: str) -> Path | None:
    """Merge the build's timing cache with the file at `path` as it is now, and write the result there.

    If that file now holds another GPU's or TensorRT version's cache (it changed during the build), it is left
    alone and the keyed file beside it is used instead. Returns the file written (None: no cache to save).
    """
    cache = config.get_timing_cache()
    if cache is None:
        return None
    for target in (path, beside(path, key)):
        with locked(target):
            on_disk = _parse(config, target.read_bytes() if target.is_file() else b"")
            if on_disk is not None and not cache.combine(on_disk, ignore_mismatch=False):
                say(f"  timing cache {target} is now another GPU's or TensorRT version's: left as it is")
                continue
            data = bytes(memoryview(cache.serialize()))
            write_atomic(target, lambda handle: handle.write(data))  # unpredictable name, O_EXCL|O_NOFOLLOW
            return target
    return None


def _parse(config: trt.IBuilderConfig, data: bytes) -> trt.ITimingCache | None:
    """A timing cache from serialized bytes; None for no bytes or bytes TensorRT cannot read."""
    if not data:
        return None
    try:
        return config.create_timing_cache(data)
    except Exception:  # noqa: BLE001 - a truncated or foreign file: treated as no cache
        return None
