"""The Python-backend stages, run inside Triton: preprocess, model (ONNX Runtime) and postprocess.

Each generated `model.py` imports `TritonPythonModel` from here; config.pbtxt's `beit_deploy.stage` parameter
says which stage it is, and the manifest.json beside model.py gives every setting. The stages themselves work
on numpy dicts (one per request), so they are tested without a server; only `TritonPythonModel` touches
`triton_python_backend_utils`, which exists only inside Triton's Python backend.

Every stage can be called directly (Triton exposes an ensemble's steps as models of their own), so each checks
its own inputs (count, shape, dtype, sizes within the pixel limit) and fails only the offending request, as
a request error (HTTP 400, one line). A request's images either all succeed or the request fails with the first
error; any exception while decoding one image is that request's error, and other requests in the same dynamic
batch are not affected. After a large answer the stage hands freed memory back to the system (malloc_trim).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from pathlib import Path

import numpy as np

from ..core import precisions, tasks
from ..core.errors import BeitDeployError, UsageError, describe
from ..core.heap import trim_heap
from ..core.manifest import read_manifest
from ..runtime import answers, postprocess as post, wire
from ..runtime.backends import OnnxRuntimeBackend
from ..runtime.preprocess import DEFAULT_MAX_PIXELS, prepare
from .configs import MODEL, POSTPROCESS, PREPROCESS, STAGE

Feeds = dict[str, np.ndarray]
Answer = dict[str, np.ndarray] | BaseException
MAX_PIXELS = DEFAULT_MAX_PIXELS  # the server's pixel limit per image, as the runner's default
_BASE64 = re.compile(rb"(?:data:image/[A-Za-z0-9.+-]+;base64,)?([A-Za-z0-9+/]+={0,2})")
_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")
_LIMIT = re.compile(r"above the limit of \S+ megapixels.*")
_TRIM_PIXELS = 8_000_000  # batches with more image pixels than this are followed by malloc_trim


class RequestError(UsageError):
    """A request's own inputs are wrong: Triton answers it with INVALID_ARG (HTTP 400)."""


def _check(feeds: Feeds, name: str, dtype: str, dims: tuple[int, ...], rows: int | None = None) -> np.ndarray:
    """feeds[name], checked to be (n, *dims) of `dtype` (-1: any length), n = `rows` when given."""
    value = feeds.get(name)
    if value is None:
        raise RequestError(f"the request has no {name} input")
    kind = "object" if dtype == "bytes" else dtype
    if value.dtype.name != kind or value.ndim != len(dims) + 1 or any(
            d != -1 and d != n for d, n in zip(dims, value.shape[1:])) or (rows is not None and len(value) != rows):
        want = ", ".join(["n" if rows is None else str(rows)] + ["any" if d == -1 else str(d) for d in dims])
        raise RequestError(f"{name} must be {dtype} of shape [{want}], got {value.dtype.name} "
                           f"{list(value.shape)}")
    return value


def _image_error(exc: BaseException, name: str) -> RequestError:
    """A decode failure as the client should read it: no Python reprs, and the server's pixel limit is not
    something the client can raise."""
    text = _REPR.sub("the data", describe(exc, 300))
    if _LIMIT.search(text):
        text = _LIMIT.sub(f"above this server's limit of {MAX_PIXELS / 1e6:g} megapixels: send a smaller image",
                          text)
    return RequestError(text if name in text else f"'{name}': {text}")


class Preprocess:
    """IMAGE (n, 1) encoded bytes (or base64 text, as JSON clients send them) -> the graph's inputs (pixel
    values; no patch masked) and IMAGE_SIZE (n, 2)."""

    def __init__(self, folder: Path, params: dict[str, str]):
        self.manifest = read_manifest(folder)

    def run(self, requests: list[Feeds]) -> list[Answer]:
        return [self._one(feeds) for feeds in requests]

    def _one(self, feeds: Feeds) -> Answer:
        try:
            blobs = _check(feeds, wire.IMAGE, "bytes", (1,)).reshape(-1)
        except RequestError as exc:
            return exc
        images = []
        for k, blob in enumerate(blobs):  # each image resized as soon as it is decoded: no full-size copies kept
            name = f"image {k}" if len(blobs) > 1 else "image"
            try:
                images.append(prepare(_image_bytes(blob), self.manifest.preprocessing, MAX_PIXELS, name=name))
            except Exception as exc:  # noqa: BLE001 - any decoder failure is this request's, never the batch's
                return _image_error(exc, name)
        pixels = np.stack([i.pixels for i in images])
        extras = {s.name: np.zeros((len(images), *s.shape[1:]), dtype=bool) for s in self.manifest.inputs[1:]}
        return {self.manifest.inputs[0].name: pixels, **extras,
                wire.IMAGE_SIZE: np.array([i.size for i in images], dtype=np.int64)}


def _image_bytes(value) -> bytes:
    """One element of a TYPE_STRING tensor as the encoded image: bytes as they are, or decoded from base64 text
    (a JSON client's way of sending bytes; an optional data: URL prefix is allowed)."""
    data = value if isinstance(value, bytes) else bytes(value) if isinstance(value, (bytearray, memoryview)) \
        else str(value).encode("latin-1")
    match = _BASE64.fullmatch(data.strip())
    if match and len(match.group(1)) % 4 == 0:
        try:
            return base64.b64decode(match.group(1), validate=True)
        except (binascii.Error, ValueError):
            pass
    return data


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
        """Every well-formed request of the batch in one ONNX Runtime run; a malformed one gets its own error."""
        answers: list[Answer] = [self._checked(feeds) for feeds in requests]
        good = [k for k, a in enumerate(answers) if not isinstance(a, BaseException)]
        if not good:
            return answers
        sizes = [len(answers[k][self.inputs[0]]) for k in good]
        joined = {name: np.concatenate([answers[k][name] for k in good]) for name in self.inputs}
        try:
            outputs = self.backend.run(joined)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own types; every request gets the error
            error = BeitDeployError(f"ONNX Runtime failed on a batch of {sum(sizes)}: {describe(exc)}")
            return [error if k in good else a for k, a in enumerate(answers)]
        bounds = np.cumsum([0, *sizes])
        for k, a, b in zip(good, bounds[:-1], bounds[1:]):
            answers[k] = {name: outputs[name][a:b] for name in self.outputs}
        return answers

    def _checked(self, feeds: Feeds) -> Answer:
        """The request's inputs, each of the manifest's dtype and shape, one batch size; RequestError if not."""
        try:
            rows = len(feeds.get(self.inputs[0], ()))
            return {s.name: _check(feeds, s.name, s.dtype, tuple(s.shape[1:]), rows) for s in self.manifest.inputs}
        except RequestError as exc:
            return exc

    def close(self) -> None:
        self.backend.close()


class Postprocess:
    """The graph's answer output (n, ...), IMAGE_SIZE (n, 2), optional TOP_K (n, 1) -> the task's answer tensors
    (runtime/wire.py), through the task's answer kind (runtime/answers.py). A label map is computed in bounded
    tiles and sent in the smallest integer type, so one request's memory is about its map (1 byte a pixel) and a
    few MB."""

    def __init__(self, folder: Path, params: dict[str, str]):
        self.manifest = read_manifest(folder)
        self.task = tasks.task(self.manifest.task)
        self.spec = next(s for s in self.manifest.outputs if s.name == self.task.answer_from)
        self.top_k = int(params.get("top_k", 5))

    def run(self, requests: list[Feeds]) -> list[Answer]:
        return [self._one(feeds) for feeds in requests]

    def _one(self, feeds: Feeds) -> Answer:
        try:
            raw, sizes, top_k = self._inputs(feeds)
        except RequestError as exc:
            return exc
        rows = [wire.encode(answers.answer(self.task, raw[k], post.Context(
            (int(sizes[k][0]), int(sizes[k][1])), self.manifest.grid, self.manifest.labels, int(top_k[k]))),
            raw[k]) for k in range(len(raw))]
        return wire.stack(rows)

    def _inputs(self, feeds: Feeds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The graph's answer output, IMAGE_SIZE and TOP_K, checked: shapes and dtypes as configured, one batch
        size, each image within the server's pixel limit, top-k at least 1. RequestError otherwise."""
        raw = _check(feeds, self.spec.name, self.spec.dtype, tuple(self.spec.shape[1:]))
        sizes = _check(feeds, wire.IMAGE_SIZE, "int64", (2,), len(raw))
        if len(sizes) and (sizes.min() < 1 or (sizes[:, 0] * sizes[:, 1] > MAX_PIXELS).any()
                           or sizes.max() > MAX_PIXELS):
            raise RequestError(f"{wire.IMAGE_SIZE} must hold each image's height and width, at least 1 and at "
                               f"most {MAX_PIXELS / 1e6:g} megapixels in all; got {sizes.tolist()[:4]}")
        if wire.TOP_K_INPUT not in feeds:
            return raw, sizes, np.full(len(raw), self.top_k)
        top_k = _check(feeds, wire.TOP_K_INPUT, "int32", (1,), len(raw)).reshape(-1)
        if (top_k < 1).any():
            raise RequestError(f"{wire.TOP_K_INPUT} must be at least 1, got {int(top_k.min())}")
        return raw, sizes, top_k


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
        if _pixels(feeds) + _pixels(answers) > _TRIM_PIXELS:  # large photos: give their memory back once sent
            threading.Timer(0.5, trim_heap).start()
        return [_response(pb, a) for a in answers]

    def finalize(self) -> None:
        getattr(self.stage, "close", lambda: None)()


def _response(pb, answer: Answer):
    """A Triton response: the tensors, or the error (INVALID_ARG, HTTP 400, for the request's own fault)."""
    if not isinstance(answer, BaseException):
        return pb.InferenceResponse([pb.Tensor(name, value) for name, value in answer.items()])
    code = pb.TritonError.INVALID_ARG if isinstance(answer, UsageError) and hasattr(pb.TritonError, "INVALID_ARG") \
        else None
    text = " ".join(str(answer).split())
    return pb.InferenceResponse(error=pb.TritonError(text, code) if code is not None else pb.TritonError(text))


def _pixels(items: list) -> int:
    """Pixels of the full-size images a batch handled (from IMAGE_SIZE, where it has one)."""
    sizes = [i[wire.IMAGE_SIZE] for i in items if isinstance(i, dict) and wire.IMAGE_SIZE in i]
    return int(sum(np.prod(s.astype(np.float64), axis=-1).sum() for s in sizes))
