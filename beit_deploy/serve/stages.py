"""The Python-backend stages, run inside Triton: preprocess, model (ONNX Runtime) and postprocess.

Each generated `model.py` imports `TritonPythonModel` from here; config.pbtxt's `beit_deploy.stage` parameter
says which stage it is, and the manifest.json beside model.py gives every setting. The stages themselves work
on numpy dicts (one per request), so they are tested without a server; only `TritonPythonModel` touches
`triton_python_backend_utils`, which exists only inside Triton's Python backend.

A request's images either all succeed or the request fails with the first error; other requests in the same
dynamic batch are not affected.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core import precisions, tasks
from ..core.errors import BeitDeployError, UsageError, describe
from ..core.manifest import read_manifest
from ..runtime import answers, postprocess as post, wire
from ..runtime.backends import OnnxRuntimeBackend
from ..runtime.preprocess import prepare
from .configs import MODEL, POSTPROCESS, PREPROCESS, STAGE

Feeds = dict[str, np.ndarray]
Answer = dict[str, np.ndarray] | BaseException


class Preprocess:
    """IMAGE (n, 1) encoded bytes -> the graph's inputs (pixel values; no patch masked) and IMAGE_SIZE (n, 2)."""

    def __init__(self, folder: Path, params: dict[str, str]):
        self.manifest = read_manifest(folder)

    def run(self, requests: list[Feeds]) -> list[Answer]:
        return [self._one(feeds) for feeds in requests]

    def _one(self, feeds: Feeds) -> Answer:
        blobs = feeds[wire.IMAGE].reshape(-1)
        try:  # each image resized as soon as it is decoded: a request holds no full-size copies
            images = [prepare(_blob(b), self.manifest.preprocessing, name=f"image {k}" if len(blobs) > 1 else "image")
                      for k, b in enumerate(blobs)]
        except BeitDeployError as exc:
            return exc
        pixels = np.stack([i.pixels for i in images])
        extras = {s.name: np.zeros((len(images), *s.shape[1:]), dtype=bool) for s in self.manifest.inputs[1:]}
        return {self.manifest.inputs[0].name: pixels, **extras,
                wire.IMAGE_SIZE: np.array([i.size for i in images], dtype=np.int64)}


def _blob(value) -> bytes:
    """One element of a TYPE_STRING tensor as bytes (Triton hands them over as bytes; tests may pass str)."""
    return value if isinstance(value, bytes) else bytes(value) if isinstance(value, (bytearray, memoryview)) \
        else str(value).encode("latin-1")


class Model:
    """The graph on beit-deploy's OnnxRuntimeBackend: every request of a dynamic batch in one run."""

    def __init__(self, folder: Path, params: dict[str, str]):
        self.manifest = read_manifest(folder)
        precision = params.get("precision", precisions.REFERENCE)
        file = self.manifest.artifacts.get(precision, "")
        if Path(file).name != file or not (folder / file).is_file():
            raise BeitDeployError(f"{folder} has no {precision} graph '{file}': generate the repository again")
        self.backend = OnnxRuntimeBackend(folder / file)
        self.inputs = [s.name for s in self.manifest.inputs]
        self.outputs = [s.name for s in self.manifest.outputs]

    def run(self, requests: list[Feeds]) -> list[Answer]:
        sizes = [len(feeds[self.inputs[0]]) for feeds in requests]
        joined = {name: np.concatenate([feeds[name] for feeds in requests]) for name in self.inputs}
        try:
            outputs = self.backend.run(joined)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own types; every request gets the error
            error = BeitDeployError(f"ONNX Runtime failed on a batch of {sum(sizes)}: {describe(exc)}")
            return [error] * len(requests)
        bounds = np.cumsum([0, *sizes])
        return [{name: outputs[name][a:b] for name in self.outputs} for a, b in zip(bounds[:-1], bounds[1:])]

    def close(self) -> None:
        self.backend.close()


class Postprocess:
    """The graph's answer output (n, ...), IMAGE_SIZE (n, 2), optional TOP_K (n, 1) -> the task's answer tensors
    (runtime/wire.py), through the task's answer kind (runtime/answers.py)."""

    def __init__(self, folder: Path, params: dict[str, str]):
        self.manifest = read_manifest(folder)
        self.task = tasks.task(self.manifest.task)
        self.top_k = int(params.get("top_k", 5))

    def run(self, requests: list[Feeds]) -> list[Answer]:
        return [self._one(feeds) for feeds in requests]

    def _one(self, feeds: Feeds) -> Answer:
        raw, sizes = feeds[self.task.answer_from], feeds[wire.IMAGE_SIZE]
        asked = wire.TOP_K_INPUT
        top_k = feeds[asked].reshape(-1) if asked in feeds else np.full(len(raw), self.top_k)
        if (top_k < 1).any():
            return UsageError(f"{asked} must be at least 1, got {int(top_k.min())}")
        rows = [wire.encode(answers.answer(self.task, raw[k], post.Context(
            (int(sizes[k][0]), int(sizes[k][1])), self.manifest.grid, self.manifest.labels, int(top_k[k]))))
            for k in range(len(raw))]
        return wire.stack(rows)


STAGES = {PREPROCESS: Preprocess, MODEL: Model, POSTPROCESS: Postprocess}


class TritonPythonModel:
    """The Python-backend entry point (initialize / execute / finalize), the same for every stage."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / str(args["model_version"])
        self.inputs = [i["name"] for i in config["input"]]
        self.stage = STAGES[params[STAGE]](folder, params)

    def execute(self, requests):
        import triton_python_backend_utils as pb  # exists only inside Triton's Python backend

        feeds = [{name: tensor.as_numpy() for name in self.inputs
                  if (tensor := pb.get_input_tensor_by_name(request, name)) is not None} for request in requests]
        try:
            answers = self.stage.run(feeds)
        except Exception as exc:  # noqa: BLE001 - a bug in a stage fails its requests, never the server
            answers = [BeitDeployError(f"{type(exc).__name__}: {describe(exc)}")] * len(requests)
        return [pb.InferenceResponse(error=pb.TritonError(str(a))) if isinstance(a, BaseException) else
                pb.InferenceResponse([pb.Tensor(name, value) for name, value in a.items()]) for a in answers]

    def finalize(self) -> None:
        getattr(self.stage, "close", lambda: None)()
