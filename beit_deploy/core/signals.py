"""SIGTERM as an exception, so a terminated command cleans up exactly as one stopped with Ctrl-C does.

Python turns SIGINT into KeyboardInterrupt in the main thread; SIGTERM (what `kill`, systemd, Kubernetes and CI
runners send) kills the process outright by default, skipping every `finally:` and leaving half-written
folders behind. Inside `sigterm_raises()`, SIGTERM raises `Terminated` in the main thread instead.
"""

from __future__ import annotations

import contextlib
import signal


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so `except Exception` does not swallow it)."""


def _raise(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises Terminated in the main thread; the previous handler comes back after.
    Outside the main thread (embedded use) signals are left alone."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except (ValueError, OSError):
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
