"""A bounded load generator for a served ensemble: N concurrent clients x M requests, one image per request.

Each client is a thread with its own `BeitTritonClient` (tritonclient's clients are not thread-safe) sending its
M requests one after another; latency is measured per request, throughput over the whole run. The server's
statistics before and after give the model stage's mean batch size (inferences / executions), i.e. what the
dynamic batcher made of the load. `in_process` measures `BeitRunner.predict` on the same images, for the
table beside it. Requests go only to the URL given (a local server in our runs) and the run always ends.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core import precisions
from ..core.errors import UsageError
from ..core.machine import cpu_model, versions
from ..runtime.runner import BeitRunner
from ..runtime.triton_client import BeitTritonClient
from .configs import MODEL, stage_names


@dataclass(frozen=True)
class LoadReport:
    """One load run: counts, wall time, images/s, latency percentiles (ms), the model stage's mean batch."""

    clients: int
    requests_per_client: int
    answered: int
    failed: int
    seconds: float
    images_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float | None
    executions: int

    def to_dict(self) -> dict:
        return asdict(self)


def run_load(url: str, model: str, images: list[bytes], clients: int = 8, requests: int = 8,
             protocol: str = "http", timeout: float = 120.0) -> LoadReport:
    """Send clients x requests single-image requests (images taken in turn) and measure them."""
    if clients < 1 or requests < 1 or not images:
        raise UsageError(f"need at least one client, one request and one image (got {clients}, {requests}, "
                         f"{len(images)})")
    with BeitTritonClient(url, model, protocol=protocol, timeout=timeout) as probe:
        before = probe.statistics().get(stage_names(model)[MODEL], {})
        latencies: list[list[float]] = [[] for _ in range(clients)]
        failures = [0] * clients
        threads = [threading.Thread(target=_client, args=(url, model, protocol, timeout, images, k, requests,
                                                          latencies[k], failures), daemon=True)
                   for k in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=timeout * requests)
        seconds = time.perf_counter() - start
        after = probe.statistics().get(stage_names(model)[MODEL], {})
    done = np.array([x for per_client in latencies for x in per_client]) * 1000
    inferences = after.get("inference_count", 0) - before.get("inference_count", 0)
    executions = after.get("execution_count", 0) - before.get("execution_count", 0)
    p50, p95, p99 = (float(np.percentile(done, q)) if len(done) else float("nan") for q in (50, 95, 99))
    return LoadReport(clients, requests, len(done), sum(failures), seconds, len(done) / seconds, p50, p95, p99,
                      inferences / executions if executions else None, executions)


def _client(url, model, protocol, timeout, images, k, requests, latencies, failures) -> None:
    with BeitTritonClient(url, model, protocol=protocol, concurrency=1, timeout=timeout) as client:
        for i in range(requests):
            image = images[(k * requests + i) % len(images)]
            start = time.perf_counter()
            prediction = next(client.predict_each([image]))
            if prediction.error is None:
                latencies.append(time.perf_counter() - start)
            else:
                failures[k] += 1


def in_process(folder: Path, images: list[bytes], count: int, batch_size: int = 8,
               precision: str = precisions.REFERENCE) -> float:
    """Images per second of `BeitRunner.predict` (ONNX Runtime, the `precision` graph) on `count` images, after
    one warm-up."""
    items = [images[i % len(images)] for i in range(count)]
    with BeitRunner(folder, precision=precision, batch_size=batch_size) as runner:
        runner.predict(items[:batch_size])
        start = time.perf_counter()
        runner.predict(items)
        return count / (time.perf_counter() - start)


def machine_line(load: float | None = None) -> str:
    """CPU, cores, the load average before the run (`load`, else now), Python and the versions that matter."""
    cpu = cpu_model()
    v = versions(("beit-deploy", "onnxruntime", "numpy", "tritonclient", "nvidia-pytriton"))
    load = load if load is not None else os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    load = f", 1-min load average {load:.1f} before the run" if load is not None else ""
    return (f"{cpu}, {os.cpu_count()} CPUs{load}, Python {platform.python_version()}; onnxruntime "
            f"{v['onnxruntime']}, numpy {v['numpy']}, tritonclient {v['tritonclient']}, Triton 2.51 from "
            f"nvidia-pytriton {v['nvidia-pytriton']}")


def to_markdown(report: LoadReport, in_process_ips: float | None, title: str, load: float | None = None,
                precision: str = precisions.REFERENCE, more: tuple = ()) -> str:
    """The run as a markdown table, with the in-process figure beside it. `more`: (precision, report,
    in_process_ips) of further runs of the same load on other graphs, as more rows of the same table."""
    rows = [f"**{title}**", "", f"Machine: {machine_line(load)}", "",
            "| path | graph | clients x requests | images/s | p50 ms | p95 ms | p99 ms | mean server batch | failed |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for graph, r, ips in ((precision, report, in_process_ips), *more):
        batch = f"{r.mean_batch:.2f}" if r.mean_batch else "-"
        rows.append(f"| Triton ensemble | {graph} | {r.clients} x {r.requests_per_client} | {r.images_per_second:.2f} "
                    f"| {r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.p99_ms:.0f} | {batch} | {r.failed} |")
        if ips is not None:
            rows.append(f"| in-process BeitRunner.predict (batch 8) | {graph} | 1 x {r.answered} | {ips:.2f} | - "
                        "| - | - | 8 | - |")
    return "\n".join(rows) + "\n"
