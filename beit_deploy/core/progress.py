"""Progress on stderr for long steps, so stdout stays machine-readable.

Every step says a start line ('tracing...') and a done line ('tracing: done in 1.2 s'). Between them, when stderr
is a terminal, a bar (tqdm, imported only then) counts what the step does (`step(what, total=n)` and its
`advance()`, or `tracked(iterable)`), or shows the elapsed time of an opaque step (tracing, one library call).
Where stderr is not a terminal (a log, a pipe, CI) there is no bar: the lines only, as a log wants them.

How much is said is one setting for the whole process, `set_verbosity` (the CLI's -q/-v), kept in the
environment so that worker processes (the benchmark's, ModelOpt's) inherit it: QUIET says only warnings and
notes here (errors and results still go out), NORMAL the lines and bars, VERBOSE also lets third-party libraries
talk (Polygraphy, ModelOpt, ONNX Runtime, transformers: `chatty()` says whether they may). BEIT_DEPLOY_PROGRESS=1
(or 0) forces the bars on (or off) whatever stderr is.

With BEIT_DEPLOY_MEMORY=1 (Linux), each finished step also says the process's resident memory and its peak during
the step (the kernel's high-water mark, reset at every step start), which is how the export's per-stage memory
figures in docs/ were measured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

QUIET, NORMAL, VERBOSE = -1, 0, 1
VERBOSITY_ENV, BARS_ENV = "BEIT_DEPLOY_VERBOSITY", "BEIT_DEPLOY_PROGRESS"
# Loggers of the libraries we call, kept at ERROR unless -v (their advice is for their developers, not our users).
THIRD_PARTY_LOGGERS = ("transformers", "huggingface_hub", "modelopt", "onnxruntime", "onnxscript", "onnx_ir",
                       "torch.onnx", "polygraphy", "tritonclient")
T = TypeVar("T")
_open_bars: list = []


def set_verbosity(level: int) -> None:
    """QUIET, NORMAL or VERBOSE for this process and the ones it starts; third-party loggers follow."""
    os.environ[VERBOSITY_ENV] = str(level)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if level >= VERBOSE else logging.ERROR)
    if level < VERBOSE:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' own weight-loading bars


def verbosity() -> int:
    try:
        return int(os.environ.get(VERBOSITY_ENV, NORMAL))
    except ValueError:
        return NORMAL


def chatty() -> bool:
    """Whether third-party libraries may print their own logs (-v)."""
    return verbosity() >= VERBOSE


def bars_on() -> bool:
    """A progress bar is drawn when stderr is a terminal (BEIT_DEPLOY_PROGRESS=1/0 forces it) and not under -q."""
    if verbosity() <= QUIET:
        return False
    forced = os.environ.get(BARS_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def say(message: str) -> None:
    """One line on stderr, drawn above any open bar; under -q only warnings and notes (advice, not progress)."""
    if verbosity() <= QUIET and not message.lstrip().startswith(("warning:", "note:")):
        return
    if _open_bars:
        _open_bars[-1].write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def outside_bars():
    """`with outside_bars(): print(result)`: open bars are cleared while the block writes (to stdout, say) and
    drawn again after, so results and bar do not mix on one terminal."""
    if not _open_bars:
        yield
        return
    with _open_bars[-1].external_write_mode(file=sys.stdout):
        yield


@contextlib.contextmanager
def quiet_logger(name: str | None = None, level: int = logging.ERROR):
    """`with quiet_logger("huggingface_hub"):` a library's logger (the root logger for None) says only what
    reaches `level` while the block runs (unless -v); our own error message then says what matters once."""
    logger = logging.getLogger(name)
    before = logger.level
    if not chatty():
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


class Step:
    """What `step` yields: `advance(n)` moves its bar (a no-op without one)."""

    def __init__(self, bar):
        self.bar = bar

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)


@contextlib.contextmanager
def step(what: str, total: int | None = None, unit: str = "it"):
    """`with step("tracing"):` prints 'tracing...' then 'tracing: done in 1.2 s' (or nothing more on error).

    On a terminal a bar runs between the two lines: counting to `total` as the step calls `.advance()`, or, with
    no total, the elapsed time (refreshed by a timer thread, so an opaque library call shows it is alive)."""
    say(f"{what}...")
    measure = bool(os.environ.get("BEIT_DEPLOY_MEMORY"))
    if measure:
        reset_peak()
        before = status_gib("VmRSS")
    start = time.perf_counter()
    with _bar(what, total, unit) as bar:
        yield Step(bar)
    say(f"{what}: done in {time.perf_counter() - start:.1f} s" + (_memory(before) if measure else ""))


def tracked(items: Iterable[T], what: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """`for x in tracked(xs, "validating"):` the items, with a bar on a terminal (no lines of its own)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _bar(what, total, unit) as bar:
        for item in items:
            yield item
            del item  # let go of each before the next is made (a full-size label map, say)
            if bar is not None:
                bar.update(1)


@contextlib.contextmanager
def _bar(what: str, total: int | None, unit: str):
    """A tqdm bar on stderr, or None where bars are off or tqdm is not installed (then the lines suffice)."""
    if not bars_on():
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
               bar_format=None if total else "{desc}: {elapsed}", mininterval=0.5)
    stop = threading.Event()
    ticker = threading.Thread(target=_tick, args=(bar, stop), daemon=True)
    ticker.start()
    _open_bars.append(bar)
    try:
        yield bar
    finally:
        _open_bars.remove(bar)
        stop.set()
        ticker.join()
        bar.refresh()  # the final count, drawn once even for a step quicker than the redraw interval
        bar.close()


def _tick(bar, stop: threading.Event) -> None:
    """Redraw `bar` every second until `stop`, so elapsed time and rate move while the main thread is busy."""
    while not stop.wait(1.0):
        bar.refresh()


def status_gib(key: str) -> float | None:
    """A /proc/self/status field in GiB (None where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def reset_peak() -> None:
    """Restart the process's peak resident memory (VmHWM) from its current RSS, so the next peak read is of what
    follows (Linux; nothing elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _memory(before: float | None) -> str:
    rss, peak = status_gib("VmRSS"), status_gib("VmHWM")
    return "" if rss is None else f", RSS {before:.2f} -> {rss:.2f} GiB, peak {peak:.2f} GiB"
