"""Run a TensorRT engine: the TensorRT backend of the runner.

One deserialised engine and one non-default CUDA stream on the chosen device. Device memory is torch's: inputs
and outputs are CUDA tensors whose `data_ptr()` goes to `set_tensor_address`, so there is no pycuda. Per call:
`set_input_shape` for the batch, addresses, `execute_async_v3` on the stream, every result checked. The same
calls exist on TensorRT 10.x and 11.x. tensorrt and torch are imported when a backend is made, never when this
module is.

Optional CUDA graphs (`cuda_graph=True`): one graph per batch size, each captured once on its own execution
context with static buffers, then replayed (copy in, replay, outputs in the static buffers). A context keeps
the shape state TensorRT set up for its batch size, so switching between cached sizes needs no recapture
(TensorRT allows several contexts on one profile as long as they are not used concurrently; ours run one at a
time on one stream). At most `max_graphs` sizes are kept (each keeps its static buffers), least recently used
dropped first. A batch size whose capture fails runs without a graph from then on, and the CUDA error the failed
capture left pending is cleared (cudaGetLastError, as trtexec does), so the next CUDA call does not report it.

Device memory for activations: every context of the engine (the plain one and one per captured graph) is
created with user-managed allocation and given the same single buffer of `device_memory_size_v2` bytes (the
largest any profile shape needs). They never run at the same time (one stream, one call at a time), so
sharing is safe, and 1 + `max_graphs` contexts cost one workspace instead of one each.

One `trt.Logger` per process (`trt_logger`), shared by every Builder, parser and Runtime, as TensorRT expects.
"""

from __future__ import annotations

import collections
import ctypes
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from ..core.backends import TENSORRT
from ..core.engine_manifest import ENGINE_FILE, TRT_PURPOSE, TensorRTError, check_engine_compatible, current_gpu, \
    read_engine_manifest
from ..core.errors import ArtifactError, UsageError, describe, require
from ..core.manifest import Manifest
from ..core.progress import say
from .backends import Backend

if TYPE_CHECKING:
    import tensorrt as trt

# TensorRT DataType name -> torch dtype name
TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
MAX_GRAPHS = 4
Made = TypeVar("Made")
Logger = TypeVar("Logger")


def trt_logger() -> trt.Logger:
    """The process's one TensorRT logger (warnings and errors), for every Builder, Runtime and parser."""
    import tensorrt as trt

    return _logger_of(trt)


@functools.cache
def _logger_of(module) -> trt.Logger:
    return module.Logger(module.Logger.WARNING)


def trt_object(factory: Callable[[Logger], Made | None], logger: Logger, what: str) -> Made:
    """`factory(logger)` (trt.Builder, trt.Runtime), or TensorRTError saying why TensorRT could not start.

    Without a usable GPU or with a driver too old for TensorRT's CUDA, the bindings return None or raise
    ("factory function returned nullptr"); the message says what to check instead.
    """
    try:
        made, why = factory(logger), "it returned nothing"
    except Exception as exc:  # noqa: BLE001 - pybind11 raises TypeError/RuntimeError for a failed init
        made, why = None, describe(exc)
    if made is None:
        raise TensorRTError(f"TensorRT could not create its {what} ({why}): check that `nvidia-smi` sees the GPU "
                            "and that the NVIDIA driver supports the CUDA version this TensorRT was built for")
    return made


def clear_cuda_error() -> int | None:
    """cudaGetLastError() on the CUDA runtime this process loaded (torch's): returns and clears the error a
    failed stream capture leaves pending, as trtexec does after one. None where no CUDA runtime is loaded."""
    library = _cudart()
    return None if library is None else int(library.cudaGetLastError())


def _cudart():
    """The loaded libcudart (found in /proc/self/maps: torch ships and loads its own), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libcudart.so" in line})
    except OSError:
        return None
    return ctypes.CDLL(paths[0]) if paths else None  # dlopen of a loaded library: the same handle


class GraphCache:
    """Captured CUDA graphs by batch size: `get(batch)` -> the entry `capture(batch)` made, or None when the
    capture failed (that size then runs without a graph and is never captured again). At most `limit` entries,
    least recently used dropped first (`release(entry)` is called for it)."""

    def __init__(self, capture: Callable[[int], Any], release: Callable[[Any], None], limit: int = MAX_GRAPHS,
                 after_failure: Callable[[], object] = lambda: None):
        if limit < 1:
            raise UsageError(f"at most {limit} CUDA graphs: keep at least one, or run without graphs")
        self._capture, self._release, self.limit = capture, release, limit
        self._after_failure = after_failure
        self.entries: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self.failed: dict[int, str] = {}

    def get(self, batch: int) -> Any | None:
        if batch in self.failed:
            return None
        if batch in self.entries:
            self.entries.move_to_end(batch)
            return self.entries[batch]
        try:
            entry = self._capture(batch)
        except Exception as exc:  # noqa: BLE001 - any capture failure: run plainly from now on
            self._after_failure()
            self.failed[batch] = describe(exc)
            say(f"CUDA graph capture failed at batch {batch} ({self.failed[batch]}): running without a graph")
            return None
        self.entries[batch] = entry
        while len(self.entries) > self.limit:
            self._release(self.entries.popitem(last=False)[1])
        return entry

    def clear(self) -> None:
        while self.entries:
            self._release(self.entries.popitem()[1])


class TensorRTBackend(Backend):
    """A TensorRT engine built by `beit-deploy build`, checked against this machine before it is loaded.

    engine_path: model.engine or its folder (with engine.json). device: CUDA device index; the engine is
    deserialised, its contexts created and run there. cuda_graph / max_graphs: see the module docstring.
    """

    name = TENSORRT.name

    def __init__(self, engine_path: Path, manifest: Manifest, cuda_graph: bool = False, device: int = 0,
                 max_graphs: int = MAX_GRAPHS):
        require("tensorrt", "gpu", TRT_PURPOSE)
        import tensorrt as trt

        self._torch = torch = require("torch", "export", "running a TensorRT engine")
        path = Path(engine_path)
        path = path / ENGINE_FILE if path.is_dir() else path
        info = read_engine_manifest(path.parent)
        check_engine_compatible(info, trt.__version__, current_gpu(device))
        if not path.is_file() or path.stat().st_size != info.engine_bytes:
            raise ArtifactError(f"{path} is missing or not the size its engine.json says ({info.engine_bytes} "
                                "bytes): build the engine again")
        self.manifest, self.engine_manifest, self.path = manifest, info, path
        self._device = torch.device("cuda", device)
        with torch.cuda.device(self._device):  # TensorRT deserialises and allocates on the current device
            self._runtime = trt_object(trt.Runtime, trt_logger(), "runtime")
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise ArtifactError(f"TensorRT could not load {path} (its messages above say why): build it again")
            self._workspace_bytes = int(self._engine.device_memory_size_v2)
            self._workspace = self._allocate(self._workspace_bytes)
            self._context = self._new_context()
            self._stream = torch.cuda.Stream(device=self._device)
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: getattr(torch, TORCH_DTYPES[engine.get_tensor_dtype(n).name]) for n in names}
        self._batch_range = tuple(int(dims[0]) for dims in engine.get_tensor_profile_shape(self._inputs[0], 0))
        self._graphs = GraphCache(self._capture, lambda entry: None, max_graphs, clear_cuda_error) if cuda_graph \
            else None

    @property
    def max_batch(self) -> int:
        return int(self._batch_range[2])

    @property
    def min_batch(self) -> int:
        return int(self._batch_range[0])

    @property
    def device_memory_bytes(self) -> int:
        """Activation memory of this backend: the one workspace all its execution contexts share."""
        return self._workspace_bytes

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        """Inputs by name (numpy arrays or torch CUDA tensors, batch first) -> float32 numpy outputs."""
        return {name: out.float().cpu().numpy() for name, out in self.run_torch(feeds).items()}

    def run_torch(self, feeds: dict) -> dict:
        """Like `run`, but returns the CUDA output tensors (with CUDA graphs: valid until the next call at the
        same batch size). Inputs already on this device in the engine's dtypes are used without a copy."""
        torch = self._torch
        batch = self._check(feeds)
        producer = torch.cuda.current_stream(self._device)
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._stream.wait_stream(producer)  # CUDA feeds may still be being written on the caller's stream
            tensors = {n: self._to_device(feeds[n], n) for n in self._inputs}
            entry = self._graphs.get(batch) if self._graphs is not None else None
            if entry is None:
                outputs = self._bind(self._context, tensors)
                self._execute(self._context)
            else:
                outputs = self._replay(entry, tensors)
        self._stream.synchronize()
        return outputs

    def _check(self, feeds: dict) -> int:
        """The batch size of `feeds`, after checking names and the profile's range."""
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise UsageError(f"TensorRT engine inputs {missing} are missing (it takes {self._inputs})")
        batches = {int(feeds[n].shape[0]) for n in self._inputs}
        low, _, high = self._batch_range
        if len(batches) != 1 or not low <= next(iter(batches)) <= high:
            raise UsageError(f"batch sizes {sorted(batches)} are not one size within the engine's profile "
                             f"{low}..{high}: split the batch or build with --batch")
        return batches.pop()

    def _allocate(self, size: int):
        """The shared activation workspace: `size` bytes of device memory from torch's allocator (256-byte
        aligned or better, as TensorRT requires)."""
        return self._torch.empty(max(size, 1), dtype=self._torch.uint8, device=self._device)

    def _new_context(self) -> trt.IExecutionContext:
        """An execution context that allocates nothing itself and uses the backend's one workspace."""
        import tensorrt as trt

        context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise TensorRTError(f"TensorRT could not create an execution context for {self.path} (out of GPU "
                                "memory? its messages above say why)")
        context.set_device_memory(self._workspace.data_ptr(), self._workspace_bytes)
        return context

    def _to_device(self, value, name: str):
        torch = self._torch
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.ascontiguousarray(value))
        return value.to(self._device, self._dtypes[name], non_blocking=False).contiguous()

    def _bind(self, context: trt.IExecutionContext, tensors: dict) -> dict:
        """Set input shapes and addresses; allocate outputs at the shapes TensorRT infers. Returns the outputs."""
        for name, tensor in tensors.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise UsageError(f"input {name} has shape {list(tensor.shape)}, which the engine's profile "
                                 f"does not cover ({self.engine_manifest.profile.get(name)})")
            self._address(context, name, tensor)
        outputs = {}
        for name in self._outputs:
            shape = context.get_tensor_shape(name)[:]  # Dims -> tuple
            outputs[name] = self._torch.empty(shape, dtype=self._dtypes[name], device=self._device)
            self._address(context, name, outputs[name])
        return outputs

    @staticmethod
    def _address(context: trt.IExecutionContext, name: str, tensor) -> None:
        if not context.set_tensor_address(name, tensor.data_ptr()):
            raise TensorRTError(f"TensorRT refused the device address of {name} (shape {list(tensor.shape)}, "
                                f"{tensor.dtype}); its messages above say why")

    def _execute(self, context: trt.IExecutionContext) -> None:
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise TensorRTError("TensorRT failed to run the engine (its messages above say why)")

    def _capture(self, batch: int) -> tuple:
        """(graph, context, static inputs, static outputs) for `batch`, on a context of its own."""
        torch = self._torch
        context = self._new_context()
        static_in = {n: torch.zeros((batch, *self._input_shape(n)[1:]), dtype=self._dtypes[n], device=self._device)
                     for n in self._inputs}
        static_out = self._bind(context, static_in)
        self._execute(context)  # one ordinary enqueue first: TensorRT finishes its lazy setup outside the capture
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
            self._execute(context)
        return graph, context, static_in, static_out

    def _input_shape(self, name: str) -> tuple:
        return self._engine.get_tensor_profile_shape(name, 0)[0][:]

    def _replay(self, entry: tuple, tensors: dict) -> dict:
        graph, _, static_in, static_out = entry
        for name, tensor in tensors.items():
            static_in[name].copy_(tensor)
        graph.replay()
        return static_out

    def close(self) -> None:
        """Drop the graphs and their contexts, the context, the workspace, engine and runtime (in that order);
        safe to call twice."""
        graphs = getattr(self, "_graphs", None)
        if graphs is not None:
            graphs.clear()
        for attr in ("_context", "_workspace", "_engine", "_runtime"):
            if hasattr(self, attr):
                setattr(self, attr, None)
