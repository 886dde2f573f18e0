"""Hand freed heap memory back to the system: glibc's malloc_trim, a no-op elsewhere. Standard library only.

glibc keeps freed memory in its heaps for reuse, and how much of it stays resident after a burst of allocations is
a matter of luck: an ONNX Runtime session of beit-large@512's fp32 graph holds 1.27 or 1.99 GiB once created from
one run to the next (1.22 after a trim), what the session needs plus whatever of ONNX Runtime's loading garbage
glibc kept. So the places that free a lot at once trim: export stages, a session once created, a serving stage
after a large answer.
"""

from __future__ import annotations

import ctypes
import gc


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
