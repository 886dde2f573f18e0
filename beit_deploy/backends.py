"""The inference backend interface: what the runner needs from ONNX Runtime, TensorRT or anything else.

A backend runs one artifact (an ONNX file or a TensorRT engine) on numpy arrays. It knows nothing of images,
labels or BEiT; the runner does the pre- and post-processing around it. Only numpy is imported here.
"""

from __future__ import annotations

import abc

import numpy as np


class Backend(abc.ABC):
    """Runs one inference artifact. Subclasses: onnxruntime (runner), TensorRT (trt_backend)."""

    #: short name shown to users, e.g. "onnxruntime-cpu", "tensorrt"
    name: str = "backend"

    @property
    @abc.abstractmethod
    def input_names(self) -> list[str]:
        """Names of the graph inputs, in order."""

    @property
    @abc.abstractmethod
    def output_names(self) -> list[str]:
        """Names of the graph outputs, in order."""

    @property
    def max_batch(self) -> int | None:
        """Largest batch one call accepts (None: no limit). The runner splits larger batches."""
        return None

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs by name (batch first) -> outputs by name, as float32 numpy arrays."""

    def close(self) -> None:
        """Release what the backend holds (sessions, device memory). Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
