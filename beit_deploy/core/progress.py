"""Progress lines on stderr for long steps, so stdout stays machine-readable.

With BEIT_DEPLOY_MEMORY=1 (Linux), each finished step also says the process's resident memory and its peak during
the step (the kernel's high-water mark, reset at every step start), which is how the export's per-stage memory
figures in docs/ were measured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_logger(name: str | None = None, level: int = logging.ERROR):
    """`with quiet_logger("huggingface_hub"):` a library's logger (the root logger for None) says only what
    reaches `level` while the block runs; our own error message then says what matters once."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def step(what: str):
    """`with step("tracing"):` prints 'tracing...' then 'tracing: done in 1.2 s' (or nothing more on error)."""
    say(f"{what}...")
    measure = bool(os.environ.get("BEIT_DEPLOY_MEMORY"))
    if measure:
        _reset_peak()
        before = status_gb("VmRSS")
    start = time.perf_counter()
    yield
    say(f"{what}: done in {time.perf_counter() - start:.1f} s" + (_memory(before) if measure else ""))


def status_gb(key: str) -> float | None:
    """A /proc/self/status field in GB (None where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _memory(before: float | None) -> str:
    rss, peak = status_gb("VmRSS"), status_gb("VmHWM")
    return "" if rss is None else f", RSS {before:.2f} -> {rss:.2f} GB, peak {peak:.2f} GB"
