"""Run a TensorRT engine: the TensorRT backend of the runner.

One deserialised engine, one execution context, one non-default CUDA stream. Device memory is torch's: inputs
and outputs are CUDA tensors whose `data_ptr()` goes to `set_tensor_address`, so there is no pycuda. Per call:
`set_input_shape` for the batch, addresses, `execute_async_v3` on the stream. The same calls exist on TensorRT
10.x and 11.x. tensorrt and torch are imported when a backend is made, never when this module is.

Optional CUDA graph (`cuda_graph=True`): the first call at a batch size captures the enqueue with static
buffers; later calls at that size copy into them and replay. A call at another size runs normally and drops
the graph (TensorRT may keep shape state on the device), so the next call at a fixed size captures again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.engine_manifest import ENGINE_FILE, TRT_PURPOSE, TensorRTError, check_engine_compatible, current_gpu, \
    read_engine_manifest
from ..core.errors import ArtifactError, UsageError, require
from ..core.manifest import Manifest
from .backends import Backend

# TensorRT DataType name -> torch dtype name
TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class TensorRTBackend(Backend):
    """A TensorRT engine built by `beit-deploy build`, checked against this machine before it is loaded."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, manifest: Manifest, cuda_graph: bool = False, device: int = 0):
        self._trt = require("tensorrt", "gpu", TRT_PURPOSE)
        self._torch = torch = require("torch", "export", "running a TensorRT engine")
        path = Path(engine_path)
        path = path / ENGINE_FILE if path.is_dir() else path
        info = read_engine_manifest(path.parent)
        check_engine_compatible(info, self._trt.__version__, current_gpu(device))
        if not path.is_file() or path.stat().st_size != info.engine_bytes:
            raise ArtifactError(f"{path} is missing or not the size its engine.json says ({info.engine_bytes} "
                                "bytes): build the engine again")
        self.manifest, self.engine_manifest = manifest, info
        self._device = torch.device("cuda", device)
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._runtime = self._trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not load {path} (its messages above say why): build it again")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: getattr(torch, TORCH_DTYPES[self._engine.get_tensor_dtype(n).name]) for n in names}
        self._batch_range = tuple(s[0] for s in self._engine.get_tensor_profile_shape(self._inputs[0], 0))
        self._use_graph, self._graph = cuda_graph, None

    @property
    def max_batch(self) -> int:
        return int(self._batch_range[2])

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        """Inputs by name (numpy arrays or torch CUDA tensors, batch first) -> float32 numpy outputs."""
        return {name: out.float().cpu().numpy() for name, out in self.run_torch(feeds).items()}

    def run_torch(self, feeds: dict) -> dict:
        """Like `run`, but returns the CUDA output tensors (valid until the next call with a CUDA graph)."""
        torch = self._torch
        batch = self._check(feeds)
        producer = torch.cuda.current_stream(self._device)
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._stream.wait_stream(producer)  # CUDA feeds may still be being written on the caller's stream
            tensors = {n: self._to_device(feeds[n], n) for n in self._inputs}
            if self._use_graph:
                outputs = self._run_graph(tensors, batch)
            else:
                outputs = self._enqueue(tensors)
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

    def _to_device(self, value, name: str):
        torch = self._torch
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.ascontiguousarray(value))
        return value.to(self._device, self._dtypes[name], non_blocking=False).contiguous()

    def _bind(self, tensors: dict) -> dict:
        """Set input shapes and addresses; allocate outputs at the shapes TensorRT infers. Returns the outputs."""
        for name, tensor in tensors.items():
            if not self._context.set_input_shape(name, tuple(tensor.shape)):
                raise UsageError(f"input {name} has shape {list(tensor.shape)}, which the engine's profile "
                                 f"does not cover ({self.engine_manifest.profile.get(name)})")
            self._context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = self._torch.empty(shape, dtype=self._dtypes[name], device=self._device)
            self._context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def _enqueue(self, tensors: dict) -> dict:
        self._graph = None
        outputs = self._bind(tensors)
        self._execute()
        return outputs

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise TensorRTError("TensorRT failed to run the engine (its messages above say why)")

    def _run_graph(self, tensors: dict, batch: int) -> dict:
        """Replay the CUDA graph captured for `batch` (capturing it first if there is none for that size)."""
        if self._graph is None or self._graph[0] != batch:
            self._capture(tensors, batch)
        _, graph, static_in, static_out = self._graph
        for name, tensor in tensors.items():
            static_in[name].copy_(tensor)
        graph.replay()
        return static_out

    def _capture(self, tensors: dict, batch: int) -> None:
        torch = self._torch
        static_in = {n: t.clone() for n, t in tensors.items()}
        static_out = self._bind(static_in)
        self._execute()  # one ordinary enqueue first: TensorRT finishes its lazy setup outside the capture
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            self._execute()
        self._graph = (batch, graph, static_in, static_out)

    def close(self) -> None:
        """Drop the graph, context and engine (in that order) and the buffers; safe to call twice."""
        for attr in ("_graph", "_context", "_engine", "_runtime"):
            if hasattr(self, attr):
                setattr(self, attr, None)
