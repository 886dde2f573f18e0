"""`BeitTritonClient`: a model served by Triton (`beit-deploy triton` + `beit-deploy serve`) with the runner's API.

    with BeitTritonClient("localhost:8000", "beit-base-patch16-224") as client:
        print(client.predict("cat.jpg").to_dict())   # the same Classification as BeitRunner.predict

Images go to the server as their encoded bytes (files as they are; PIL images and arrays as PNG), one request
per image with up to `concurrency` in flight, so the server's dynamic batcher can join them. Answers come back
as the tensors of runtime/wire.py and become the result types of runtime/postprocess.py. tritonclient (the
`serve` extra) is imported when a client is made. One client is not safe to share between threads (tritonclient's
HTTP client is not): make one per thread.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..core.errors import BeitDeployError, TritonServerError, UsageError, describe, require
from . import wire
from .predictor import Prediction, Predictor
from .preprocess import ImageError, ImageLike, load_image

PROTOCOLS = ("http", "grpc")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}  # Triton's own defaults, and `beit-deploy serve`'s
_SPELLED = {"http": "HTTP", "grpc": "gRPC"}
_PURPOSE = "talking to a Triton server"
_REFUSED = ("400", "StatusCode.INVALID_ARGUMENT")  # HTTP and gRPC statuses of a request the server refused


class BeitTritonClient(Predictor):
    """A served BEiT ensemble, ready to predict.

    url: host[:port] of the server's HTTP or gRPC endpoint (no port: 8000 for http, 8001 for grpc); a http:// or
    grpc:// prefix is allowed. model: the ensemble's name (`beit-deploy triton --served-model`, default the
    export's model name).
    concurrency: requests in flight at once. timeout: seconds to wait for one answer.
    """

    def __init__(self, url: str, model: str, protocol: str = "http", concurrency: int = 8, timeout: float = 60.0):
        if protocol not in PROTOCOLS:
            raise UsageError(f"protocol '{protocol}' is not one of {', '.join(PROTOCOLS)}")
        if concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {concurrency}")
        self.url, self.model, self.protocol = endpoint(url, protocol), model, protocol
        self.concurrency, self.timeout = concurrency, timeout
        self._tc = require(f"tritonclient.{protocol}", "serve", _PURPOSE)
        options = {"concurrency": concurrency, "network_timeout": timeout} if protocol == "http" else {}
        self._client = self._tc.InferenceServerClient(self.url, **options)
        self._params = self._parameters()

    # -- what the server says about the model -----------------------------------------------------------------
    def _parameters(self) -> dict[str, str]:
        try:
            ready = self._client.is_model_ready(self.model)
        except Exception as exc:  # connection errors come in several types (gevent, grpc)
            hint = _port_hint(self.url, self.protocol)
            raise TritonServerError(f"cannot reach a Triton server at {self.url} ({self.protocol}): "
                                    f"{describe(exc)}; is `beit-deploy serve` running there?{hint}") from exc
        if not ready:
            raise TritonServerError(f"the server at {self.url} has no ready model '{self.model}' (it serves: "
                                    f"{', '.join(self.models()) or 'nothing'}): pass one of those with --served-model")
        config = self._client.get_model_config(self.model, **self._json)
        config = config.get("config", config)  # gRPC wraps it
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        # every answer tensor but PROBABILITIES (all classes: for stock clients' classification extension)
        self._outputs = [o["name"] for o in config.get("output", []) if o["name"] != wire.PROBABILITIES]
        self._top_k_input = any(i.get("name") == wire.TOP_K_INPUT for i in config.get("input", []))
        if "task" not in params:
            raise TritonServerError(f"'{self.model}' on {self.url} is not an ensemble written by `beit-deploy "
                                    "triton` (its config has no task parameter): pass the ensemble's name")
        return params

    @property
    def _json(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def models(self) -> list[str]:
        """Names of the ready models on the server."""
        index = self._client.get_model_repository_index(**self._json)
        index = index.get("models", []) if isinstance(index, dict) else index
        return sorted(m["name"] for m in index if m.get("state") == "READY")

    @property
    def task(self) -> str:
        return self._params["task"]

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in json.loads(self._params.get("labels", "{}")).items()}

    @property
    def resolution(self) -> tuple[int, int]:
        height, width = self._params["resolution"].split("x")
        return int(height), int(width)

    def __repr__(self) -> str:
        return f"BeitTritonClient({self.url!r}, {self.model!r}, protocol={self.protocol!r}, task={self.task!r})"

    # -- predict, as BeitRunner ----------------------------------------------------------------------------
    def predict_each(self, images: Sequence[ImageLike], top_k: int = 5, keep_rgb: bool = False
                     ) -> Iterator[Prediction]:
        """One Prediction per input, in order; an image the server (or this machine) cannot read gives a
        Prediction with `error` set, and the others still run. keep_rgb: decode the photo here too (overlays)."""
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        items = list(images)
        window: list[tuple[str, ImageLike, Callable]] = []
        for item in items:
            window.append((_name(item), item, self._submit(item, top_k)))
            if len(window) >= self.concurrency:
                yield self._collect(*window.pop(0), keep_rgb)
        while window:
            yield self._collect(*window.pop(0), keep_rgb)

    def _submit(self, image: ImageLike, top_k: int) -> Callable:
        """Send one image; a function that waits for its answer (tensors) or returns the error."""
        try:
            data = _encoded(image)
        except BeitDeployError as exc:
            error = exc  # `exc` itself is unbound after the except block
            return lambda: error
        inputs = [self._input(wire.IMAGE, np.array([[data]], dtype=object), "BYTES")]
        if self._top_k_input:  # classifiers only
            inputs.append(self._input(wire.TOP_K_INPUT, np.array([[top_k]], dtype=np.int32), "INT32"))
        outputs = [self._tc.InferRequestedOutput(name) for name in self._outputs]  # binary on HTTP by default
        if self.protocol == "http":
            request = self._client.async_infer(self.model, inputs, outputs=outputs)
            return lambda: request.get_result(timeout=self.timeout)
        future = concurrent.futures.Future()
        self._client.async_infer(self.model, inputs, lambda result, error: future.set_result(error or result),
                                 outputs=outputs, client_timeout=self.timeout)
        return lambda: future.result(timeout=self.timeout + 5)

    def _input(self, name: str, value: np.ndarray, dtype: str):
        tensor = self._tc.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        return tensor

    def _collect(self, name: str, image: ImageLike, wait: Callable, keep_rgb: bool) -> Prediction:
        try:
            answer = wait()
        except Exception as exc:  # noqa: BLE001 - tritonclient raises InferenceServerException and network errors
            answer = exc
        if isinstance(answer, BeitDeployError):
            return Prediction(name, error=answer)
        if isinstance(answer, BaseException):
            message = answer.message() if hasattr(answer, "message") and callable(answer.message) else describe(answer)
            status = str(answer.status()) if hasattr(answer, "status") and callable(answer.status) else ""
            if status in _REFUSED:  # the request's own fault: the only thing it carries is the image
                return Prediction(name, error=ImageError(f"'{name}': the server could not read it: {message}"))
            return Prediction(name, error=TritonServerError(f"'{name}': the server answered: {message}"))
        row = {o: answer.as_numpy(o)[0] for o in self._outputs}
        size = (int(row[wire.IMAGE_SIZE][0]), int(row[wire.IMAGE_SIZE][1]))
        rgb = load_image(image).rgb if keep_rgb else None
        return Prediction(name, wire.decode(self.task, row, size), rgb=rgb)

    # -- server statistics ------------------------------------------------------------------------------------
    def statistics(self) -> dict[str, dict[str, int]]:
        """{model: {"inference_count", "execution_count"}} for every model on the server, since it started.
        inference_count / execution_count of a stage is its mean batch size."""
        stats = self._client.get_inference_statistics(**self._json)
        return {s["name"]: {k: int(s.get(k, 0)) for k in ("inference_count", "execution_count")}
                for s in stats.get("model_stats", [])}

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "BeitTritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def endpoint(url: str, protocol: str) -> str:
    """host:port of `url` (a scheme and a trailing slash dropped); no port: Triton's default for `protocol`."""
    hostport = url.split("://", 1)[-1].rstrip("/")
    host_end = hostport.rfind("]") + 1  # an IPv6 literal [::1] has colons of its own
    return hostport if ":" in hostport[host_end:] else f"{hostport}:{DEFAULT_PORTS[protocol]}"


def _port_hint(url: str, protocol: str) -> str:
    """' (8000 is the HTTP port: ...)' where the port is the other protocol's default; else the defaults."""
    port = url.rsplit(":", 1)[-1]
    for other, default in DEFAULT_PORTS.items():
        if other != protocol and port == str(default):
            return (f" ({port} is Triton's {_SPELLED[other]} port; {_SPELLED[protocol]} listens on "
                    f"{DEFAULT_PORTS[protocol]} unless `serve --{protocol}-port` said otherwise)")
    return f" (Triton's default ports: HTTP {DEFAULT_PORTS['http']}, gRPC {DEFAULT_PORTS['grpc']})"


def _name(image: ImageLike) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"


def _encoded(image: ImageLike) -> bytes:
    """What goes over the wire: a file's bytes as they are, encoded bytes as given, anything else as PNG."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image '{path}' does not exist")
        return path.read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(load_image(image).rgb, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
