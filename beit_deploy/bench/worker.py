"""One benchmark backend in its own process, so each backend's peak memory is its own.

The parent (`run.py`) starts one worker per backend with multiprocessing's spawn context and a Pipe, then
drives all workers round-robin, one timed iteration at a time, so that every backend sees the same machine
load (the parent interleaves; a worker never times more than it is asked to). Messages, all plain tuples:

  worker -> parent  ("ready", info) | ("error", message)
  parent -> worker  ("run", batch_size, iterations)  -> ("times", [seconds, ...]) | ("error", message)
  parent -> worker  ("peak",)  -> ("peak", megabytes)   (and resets the CUDA peak counter)
  parent -> worker  ("stop",)

A job is a plain dict (made by `run._jobs`): kind (what the backend opens, core.backends: "model" for
transformers, "onnx" for ONNX Runtime, "engine" for TensorRT; or "e2e-runner", "e2e-transformers"), device,
dtype, inputs [(name, shape with "batch", dtype)], and what the kind needs.
ONNX Runtime workers never import torch, so their peak RSS is ONNX Runtime's alone.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from ..core import backends, precisions
from ..core.errors import describe
from ..core.machine import physical_cores
from ..core.manifest import TensorSpec
from ..core.progress import chatty, say, status_gib

E2E_RUNNER, E2E_TRANSFORMERS = "e2e-runner", "e2e-transformers"  # job kinds of the end-to-end rows

AUTOCAST_COSINE = 0.9999  # eager under autocast (bf16) against eager fp32, per output, lowest over the samples


def ort_session_options(threads: int | None = None, spinning: bool = True):
    """ONNX Runtime CPU options for inference: all graph optimisations, sequential execution, one intra-op
    thread per physical core (hyper-threads only contend for the same FMA units on GEMM-bound BEiT).
    `spinning`: threads busy-wait between ops (ORT's default): 2-5 % faster on an idle machine (beit-base, 2
    cores), but about 18 % slower on a machine shared with other busy processes, where they burn its cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.log_severity_level = 2 if chatty() else 3  # ORT's warnings only with -v
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def serve(conn, job: dict) -> None:
    """Worker entry point: load the backend, answer commands until "stop" (or the parent goes away)."""
    try:
        runner = _load(job)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a skip reason
        conn.send(("error", _reason(exc)))
        return
    conn.send(("ready", {}))
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        if command[0] == "stop":
            return
        if command[0] == "peak":
            conn.send(("peak", _peak_mb(job)))
            continue
        _, batch, iterations = command
        try:
            conn.send(("times", _time(runner, batch, iterations, job)))
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory at one batch size
            conn.send(("error", _reason(exc)))


def seconds_of(call, sync, count: int) -> list[float]:
    """Seconds of each of `count` calls of `call()`, each followed by `sync()` (CUDA's synchronize, or nothing):
    the one timing loop of the bench workers and the seed tables."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _time(runner, batch: int, iterations: int, job: dict) -> list[float]:
    """Seconds of each of `iterations` calls of `runner` on one fixed batch (synchronised on CUDA)."""
    return seconds_of(runner(batch), _cuda_sync(job), iterations)


def _load(job: dict):
    """A function batch_size -> (no-argument call running one iteration on a batch of that size)."""
    return _LOADERS[job["kind"]](job)


def random_feeds(inputs, batch: int) -> dict[str, np.ndarray]:
    """Seeded feeds of `batch` images for a job's inputs [(name, shape, dtype)] (exporter.parity.random_feeds)."""
    from ..exporter.parity import random_feeds as seeded

    return seeded([TensorSpec(name, tuple(shape), dtype) for name, shape, dtype in inputs], batch)


def _torch_runner(job: dict):
    import torch

    from ..exporter.loading import ModelSpec, load_model

    torch.set_grad_enabled(False)
    model = load_model(ModelSpec(**job["spec"])).model
    model.set_attn_implementation(job["attention"])
    dtype = getattr(torch, precisions.precision(job["dtype"]).torch_dtype)
    model = model.to(job["device"], dtype).eval()

    def runner(batch):
        feeds = {k: torch.from_numpy(v).to(job["device"]) for k, v in random_feeds(job["inputs"], batch).items()}
        feeds = {k: v.to(dtype) if v.is_floating_point() else v for k, v in feeds.items()}
        return lambda: model(**feeds)
    return runner


def _model_runner(job: dict):
    """transformers itself: as it is, or under torch's CPU autocast when the backend's row asks for it."""
    return _autocast_runner(job) if job.get("autocast") else _torch_runner(job)


def _autocast_runner(job: dict):
    """The eager model under torch's CPU autocast to job["autocast"] (bf16: matmuls and convs in bf16, LayerNorm
    and Softmax in fp32), parity-checked first: its output's cosine against the same model in fp32 on two seeded
    images must reach AUTOCAST_COSINE, or the backend is refused (and the bench says why)."""
    import torch

    dtype, name = getattr(torch, job["autocast"]), job["autocast"]
    runner = _torch_runner(job | {"dtype": precisions.REFERENCE})
    reference = runner(2)()
    with torch.autocast("cpu", dtype=dtype):
        candidate = runner(2)()
    cosine = min(_cosine(a, b) for a, b in zip(_floats(reference), _floats(candidate)))
    if cosine < AUTOCAST_COSINE:
        raise RuntimeError(f"{name} autocast misses parity: cosine {cosine:.6f} < {AUTOCAST_COSINE} against fp32")
    say(f"{name} autocast: cosine {cosine:.6f} against fp32 eager on 2 seeded images (needs >= {AUTOCAST_COSINE})")

    def timed(batch):
        call = runner(batch)

        def once():
            with torch.autocast("cpu", dtype=dtype):
                return call()
        return once
    return timed


def _floats(output) -> list:
    """Each float output of a transformers ModelOutput as (batch, -1)."""
    return [v.double().reshape(len(v), -1) for v in output.values()
            if hasattr(v, "is_floating_point") and v.is_floating_point()]


def _cosine(a, b) -> float:
    """The lowest per-sample cosine similarity of two (batch, -1) tensors."""
    import torch

    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


def _ort_runner(job: dict):
    import onnxruntime as ort

    from ..runtime.backends import OnnxRuntimeBackend

    providers = ["CUDAExecutionProvider"] if job["device"] == "cuda" else ["CPUExecutionProvider"]
    if providers[0] not in ort.get_available_providers():
        raise RuntimeError(f"this onnxruntime build has no {providers[0]}")
    backend = OnnxRuntimeBackend(job["path"], providers=providers, options=ort_session_options())

    def runner(batch):
        feeds = random_feeds(job["inputs"], batch)
        return lambda: backend.run(feeds)
    return runner


def _trt_runner(job: dict):
    """TensorRT on inputs already on the GPU (like the torch backends): one timed call is the enqueue and the
    sync of the backend's stream, with outputs left on the device (report.INPUTS_POLICY)."""
    import torch

    from ..core.manifest import read_manifest
    from ..runtime.tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend(job["path"], read_manifest(job["folder"]))

    def runner(batch):
        feeds = {k: torch.from_numpy(v).to("cuda") for k, v in random_feeds(job["inputs"], batch).items()}
        return lambda: backend.run_torch(feeds)
    return runner


def _e2e_runner(job: dict):
    """beit-deploy's runner: preprocess + inference + postprocess of the sample photos in one predict call."""
    from ..runtime.runner import BeitRunner

    runner = BeitRunner(job["folder"])
    photos = _photos(job)
    return lambda _batch: (lambda: runner.predict(photos))


def _e2e_transformers(job: dict):
    """transformers' way: BeitImageProcessorPil + the model (default attention) + task post-processing."""
    import torch

    from ..exporter.loading import ModelSpec, load_model
    from ..exporter.parity import reference_processor
    from ..runtime import answers

    torch.set_grad_enabled(False)
    loaded = load_model(ModelSpec(**job["spec"]))
    model, proc = loaded.model.to(job["device"]), reference_processor(loaded.preprocessing)
    photos = _photos(job)
    post = answers.of(loaded.task).reference

    def once():
        pixels = proc(images=photos, return_tensors="pt")["pixel_values"].to(job["device"])
        return post(model(pixel_values=pixels), proc, loaded.labels, photos)
    return lambda _batch: once


def _photos(job: dict):
    from PIL import Image

    return [Image.open(path).convert("RGB") for path in job["images"]]


# the kinds whose work runs in torch: synchronised and measured through torch on CUDA
_TORCH_KINDS = (backends.MODEL, E2E_TRANSFORMERS)


def _cuda_sync(job: dict):
    if job["device"] != "cuda" or job["kind"] not in _TORCH_KINDS:
        return lambda: None
    import torch

    return torch.cuda.synchronize


def _peak_mb(job: dict) -> float | None:
    """CUDA: max allocated by torch since the last call (then reset). CPU: this process's peak RSS."""
    if job["device"] == "cuda" and job["kind"] in _TORCH_KINDS:
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak
    if job["device"] == "cuda":
        return None  # memory outside torch's allocator is not measured
    peak = status_gib("VmHWM")  # VmHWM restarts at exec; ru_maxrss would keep the parent's peak from the spawn
    if peak is not None:
        return peak * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


_LOADERS = {backends.MODEL: _model_runner, backends.ONNX: _ort_runner, backends.ENGINE: _trt_runner,
            E2E_RUNNER: _e2e_runner, E2E_TRANSFORMERS: _e2e_transformers}


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {describe(exc, 240)}"


class Workers:
    """Parent side: one worker process per job, driven round-robin (see the module docstring)."""

    def __init__(self, jobs: dict[str, dict]):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no inherited torch/ORT thread pools
        self.procs, self.conns, self.failed = {}, {}, []
        for name, job in jobs.items():
            mine, theirs = context.Pipe()
            self.procs[name] = context.Process(target=serve, args=(theirs, job), daemon=True)
            self.procs[name].start()
            self.conns[name] = mine
        for name in list(self.conns):  # all load at once; wait for each
            reply = self._ask(name, None)
            if reply[0] != "ready":
                self.failed.append((name, None, f"could not start: {reply[1]}"))
                self._drop(name)

    def measure(self, batch: int, iterations: int, warmup: int, names, advance=lambda: None
                ) -> dict[str, tuple[list[float], float | None]]:
        """backend -> (seconds of each iteration, peak MiB) at `batch` for the `names` still alive; failures go
        to `self.failed`. `advance()` is called after each backend's warm-up and each timed run (progress)."""
        live = [n for n in names if n in self.conns]
        if warmup:
            live = [n for n in live if self._run(n, batch, warmup, advance) is not None]
        times = {n: [] for n in live}
        for i in range(iterations):
            for name in live[i % len(live):] + live[:i % len(live)] if live else []:
                if name in times:
                    got = self._run(name, batch, 1, advance)
                    if got is None:
                        del times[name]
                    else:
                        times[name] += got
        return {n: (t, self._ask(n, ("peak",))[1]) for n, t in times.items()}

    def _run(self, name: str, batch: int, iterations: int, advance=lambda: None):
        reply = self._ask(name, ("run", batch, iterations))
        advance()
        if reply[0] == "times":
            return reply[1]
        self.failed.append((name, batch, reply[1]))
        if not self.procs[name].is_alive():
            self._drop(name)
        return None

    def _ask(self, name: str, command):
        try:
            if command is not None:
                self.conns[name].send(command)
            return self.conns[name].recv()
        except (EOFError, OSError, BrokenPipeError):
            self.procs[name].join(5)
            return ("error", f"the worker process died (exit code {self.procs[name].exitcode}; out of memory?)")

    def _drop(self, name: str) -> None:
        self.conns.pop(name).close()
        proc = self.procs.pop(name)
        proc.join(5)
        if proc.is_alive():
            proc.terminate()

    def close(self) -> None:
        for name in list(self.conns):
            try:
                self.conns[name].send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            self._drop(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
