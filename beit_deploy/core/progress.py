"""Progress lines on stderr for long steps, so stdout stays machine-readable."""

from __future__ import annotations

import contextlib
import sys
import time


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(what: str):
    """`with step("tracing"):` prints 'tracing...' then 'tracing: done in 1.2 s' (or nothing more on error)."""
    say(f"{what}...")
    start = time.perf_counter()
    yield
    say(f"{what}: done in {time.perf_counter() - start:.1f} s")
