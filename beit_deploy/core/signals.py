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


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """In a worker process: end it when the process that started it (`parent_pid`) dies, however it dies
    (SIGKILL and the OOM killer included), so no worker outlives its command holding memory.

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); a parent already gone by
    then is caught by comparing getppid(). Elsewhere: a daemon thread that checks getppid() once a second."""
    import ctypes
    import os
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # it died before the prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
