"""Hand freed heap memory back to the system: glibc's malloc_trim, a no-op elsewhere. Standard library only.

glibc keeps freed memory in its heaps for reuse, and how much of it stays resident after a burst of allocations is
a matter of luck: an ONNX Runtime session of beit-large@512's fp32 graph holds 1.27 or 1.99 GiB once created from
one run to the next (1.22 after a trim), what the session needs plus whatever of ONNX Runtime's loading garbage
glibc kept. So the places that free a lot at once trim: export stages, a session once created, a serving stage
after a large answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
GLIBC_MMAP_THRESHOLD = 128 * 1024  # its initial value


def trim_heap() -> None:
    """Return the heap's free memory to the system (glibc's malloc_trim(0)); nothing without glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        pass


def release_memory() -> None:
    """Collect garbage, then trim: what an export stage no longer needs (a traced graph, a proto, a validation
    session) does not stay in the process while the next stage allocates."""
    gc.collect()
    trim_heap()


@contextlib.contextmanager
def large_blocks_unmapped(threshold: int = 1 << 20):
    """Within: blocks of `threshold` bytes or more come from mmap and go back to the system when freed.

    glibc raises its mmap threshold as large blocks are freed (up to 32 MiB) and then serves them from its heaps,
    which keep their pages: an ONNX Runtime session without its arena (export validation) grew beit-base@384 from
    0.57 to 1.27 GiB in one batch-2 call, against a 0.66 GiB peak with the threshold held at 1 MiB (beit-large@512:
    1.76 -> 1.68). On leaving, the threshold is glibc's initial 128 KiB, no longer adjusted. Nothing without glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        yield
        return
    mallopt(M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD)
