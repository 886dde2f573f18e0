"""The inference backend interface: what the runner needs from ONNX Runtime, TensorRT or anything else.

A backend runs one artifact (an ONNX file or a TensorRT engine) on numpy arrays. It knows nothing of images,
labels or BEiT; the runner does the pre- and post-processing around it. Only numpy is imported here.
"""

from __future__ import annotations

import abc
from typing import Callable

import numpy as np

from ..core.backends import ONNXRUNTIME, provider_device
from ..core.heap import trim_heap
from ..core.progress import chatty

Feeds = dict[str, np.ndarray]


class Backend(abc.ABC):
    """Runs one inference artifact. Subclasses: OnnxRuntimeBackend (here), TensorRTBackend (tensorrt_backend.py).
    The backend table (core/backends.py) names them and says what each needs."""

    #: short name shown to users, e.g. "onnxruntime-cpu", "tensorrt"
    name: str = "backend"

    #: graph input and output names, in order; set by each subclass when it opens its artifact
    _inputs: list[str] = []
    _outputs: list[str] = []

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @property
    def max_batch(self) -> int | None:
        """Largest batch one call accepts (None: no limit). The runner splits larger batches."""
        return None

    @property
    def min_batch(self) -> int:
        """Smallest batch one call accepts (a TensorRT profile's MIN). The runner pads smaller chunks up to it."""
        return 1

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs by name (batch first) -> outputs by name, as float32 numpy arrays."""

    def run_batched(self, feeds: Feeds, batch_size: int | None = None) -> Feeds:
        """`run` on any number of images: split into chunks this backend accepts, padded up to its smallest
        batch (see `run_in_batches`). What the runner, verify and compare all use."""
        return run_in_batches(self.run, feeds, self.min_batch, self.max_batch, batch_size)

    def close(self) -> None:
        """Release what the backend holds (sessions, device memory). Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_in_batches(run: Callable[[Feeds], Feeds], feeds: Feeds, low: int = 1, high: int | None = None,
                   batch_size: int | None = None) -> Feeds:
    """`run(feeds)` in chunks of at most `batch_size` (default: all at once) and `high` images, each chunk
    below `low` padded by repeating its last image, the padded rows dropped from its outputs; outputs joined.

    Every image is computed independently, so the others are unchanged by the split or the padding. This is
    how a TensorRT engine with profile MIN..MAX answers any number of images, and the one place that does it.
    """
    n = len(next(iter(feeds.values())))
    step = max(batch_size or n, low, 1)
    step = min(step, high) if high else step
    chunks = []
    for start in range(0, max(n, 1), step):
        chunk = {k: v[start:start + step] for k, v in feeds.items()}
        size = len(next(iter(chunk.values())))
        if size < low:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], low - size, axis=0)]) for k, v in chunk.items()}
        chunks.append({k: np.asarray(v)[:size] for k, v in run(chunk).items()})
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


#: ONNX Runtime execution providers, best first (the longest chain of the backend table's). The runner uses the
#: first one that is installed.
PREFERRED_PROVIDERS = max(ONNXRUNTIME.providers.values(), key=len)
GPU_PROVIDERS = frozenset(PREFERRED_PROVIDERS[:2])
CPU = ["CPUExecutionProvider"]
_ORT_PURPOSE = "running ONNX graphs"
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def available_providers() -> list[str]:
    """The preferred ONNX Runtime providers installed here, best first (CPU is always last)."""
    from ..core.errors import require

    ort = require("onnxruntime", "gpu", _ORT_PURPOSE)
    present = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in present] or ["CPUExecutionProvider"]


def has_gpu_provider() -> bool:
    """True when ONNX Runtime here can run on an NVIDIA GPU (CUDA or TensorRT execution provider)."""
    return any(p in GPU_PROVIDERS for p in available_providers())


class OnnxRuntimeBackend(Backend):
    """One ONNX graph in an ONNX Runtime session, on the best provider installed (or the ones given).

    Inputs are cast to the dtypes the graph declares (so a graph with fp16 inputs takes float32 feeds);
    outputs come back as float32 (bool/int outputs unchanged). The batch axis is dynamic: no max_batch.
    `providers=CPU` gives the plain CPU session every stage uses to check a graph; `options` an
    onnxruntime.SessionOptions of the caller's (the benchmark's); `memory_arena=False` hands activation memory
    back after every run (a one-off check on large graphs) instead of keeping it for the next (serving).
    """

    def __init__(self, onnx_path, providers: list[str] | None = None, threads: int | None = None, options=None,
                 memory_arena: bool = True):
        from ..core.errors import ArtifactError, describe, require

        ort = require("onnxruntime", "gpu", _ORT_PURPOSE)
        if options is None:
            options = ort.SessionOptions()
            # warnings about fallbacks belong to ORT's logs, not our stderr (unless -v: progress.chatty)
            options.log_severity_level = 2 if chatty() else 3
        if threads:
            options.intra_op_num_threads = threads
        options.enable_cpu_mem_arena = memory_arena
        try:
            self._session = ort.InferenceSession(str(onnx_path), options, providers=providers or available_providers())
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise ArtifactError(f"ONNX Runtime cannot load '{onnx_path}' ({describe(exc)}): "
                                "the file is truncated or corrupt; export the model again") from exc
        trim_heap()  # what loading the graph freed (up to 0.7 GiB for beit-large@512) goes back to the system
        self.name = f"{ONNXRUNTIME.name}-{provider_device(self._session.get_providers()[0])}"
        self._types = {i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in self._session.get_inputs()}
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("this backend is closed")
        cast = {k: np.ascontiguousarray(v, dtype=self._types.get(k, v.dtype)) for k, v in feeds.items()}
        outputs = self._session.run(None, cast)
        return {name: (out.astype(np.float32, copy=False) if np.issubdtype(out.dtype, np.floating) else out)
                for name, out in zip(self._outputs, outputs)}

    def close(self) -> None:
        self._session = None  # ORT frees the session (and its device memory) when the last reference goes
