"""Benchmark settings and results, and their presentation: statistics, comparison with eager, machine, JSON
and markdown.

The markdown table follows the transformers BEiT docs' SDPA table: batch size | eager s/iter | backend s/iter |
speedup | memory eager | memory backend | saved, one table per backend.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..core import backends as table, machine as core_machine, precisions
from ..core.manifest import BIAS_MODES
from ..core.machine import cpu_model, physical_cores  # noqa: F401 - importable from here as before
from ..exporter.loading import ModelSpec

# The benchmark's rows, from the backend and precision tables: the transformers backends, ONNX Runtime on each
# graph of the export (onnxruntime-<precision's bench label> -> that precision), ONNX Runtime on two other
# graphs of the same model (ORT_FUSED: exported with one Attention op per layer; ORT_PLAIN: torch.onnx.export of the
# unmodified model), and TensorRT on an engine of the export.
ORT_ARTIFACTS = {table.bench_name(table.ONNXRUNTIME, p.bench): p.name for p in precisions.PRECISIONS.values()
                 if p.bench is not None}
ORT_FUSED, ORT_PLAIN = table.bench_name(table.ONNXRUNTIME, "fused"), table.bench_name(table.ONNXRUNTIME, "plain")
# ONNX Runtime on the fp32 graph exported with each bias storage forced (onnxruntime-gathered, -materialised): the
# price of one beside the other in one run (the export picks one by size; that row equals `onnxruntime`)
ORT_BIAS = {table.bench_name(table.ONNXRUNTIME, mode): mode for mode in BIAS_MODES}
TORCH_BACKENDS = table.names(opens=table.MODEL)
BACKENDS = (*TORCH_BACKENDS, *ORT_ARTIFACTS, ORT_FUSED, ORT_PLAIN, *ORT_BIAS, table.TENSORRT.name)
BASELINE = table.EAGER.name
# autocast rows (eager-bf16) only when asked: they need a CPU with native bf16
DEFAULT_BACKENDS = (*(n for n in TORCH_BACKENDS if table.backend(n).autocast is None),
                    *(n for n, p in ORT_ARTIFACTS.items()
                                      if p in precisions.names(making=precisions.FLOAT)), table.TENSORRT.name)
E2E_OURS, E2E_TRANSFORMERS = "beit-deploy runner", "transformers"


# Where each backend's inputs live while it is timed, so that the rows compare like with like.
INPUTS_POLICY = ("made once per batch size before timing; torch and TensorRT backends get them already on the "
                 "device (no host-to-device copy is timed; TensorRT times its enqueue and a sync of its stream), "
                 "ONNX Runtime gets numpy arrays on the host (its CPU session reads them in place)")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "beit-deploy" / "bench"


@dataclass(frozen=True)
class BenchSettings:
    """What to measure. `resolution` None: the model's native one."""

    spec: ModelSpec
    resolution: tuple[int, int] | None = None
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    batch_sizes: tuple[int, ...] = (1, 4, 16, 32)
    device: str = "cpu"
    dtype: str = precisions.REFERENCE  # of the torch backends (a float precision); the graphs carry their own
    iters: int = 10
    warmup: int = 2
    end_to_end: bool = True
    cache_dir: Path = field(default_factory=default_cache)
    images: Path | None = None  # photos for the end-to-end row and the export's parity check
    export: Path | None = None  # an export's resolution folder to measure instead of a cached export of `spec`


@dataclass(frozen=True)
class Measurement:
    """One backend at one batch size. Speedup and memory saved are against eager at the same batch size."""

    backend: str
    batch_size: int
    seconds_per_iter: float  # median
    min_seconds_per_iter: float  # the best iteration: the least disturbed by other load on the machine
    ci_percent: float | None  # half-width of the 95 % confidence interval of the mean, % of the median
    images_per_second: float
    peak_memory_mb: float | None  # MiB (2**20 bytes), the JSON key kept from the first reports
    iterations: int
    speedup: float | None = None
    memory_saved_percent: float | None = None


@dataclass(frozen=True)
class Skipped:
    backend: str
    reason: str
    batch_size: int | None = None  # None: the whole backend


@dataclass(frozen=True)
class BenchReport:
    machine: dict
    settings: dict
    results: tuple[Measurement, ...]
    end_to_end: tuple[Measurement, ...]
    skipped: tuple[Skipped, ...]

    def to_dict(self) -> dict:
        return {"machine": self.machine, "settings": self.settings,
                "results": [asdict(r) for r in self.results], "end_to_end": [asdict(r) for r in self.end_to_end],
                "skipped": [asdict(s) for s in self.skipped]}



# two-sided 95 % Student t quantiles by degrees of freedom (1..30); 1.96 beyond
_T95 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13, 2.12, 2.11,
        2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04)


def summarise(backend: str, batch: int, times: list[float], peak_mb: float | None) -> Measurement:
    """Median seconds per iteration, with the 95 % CI half-width of the mean as a % of the median (None for 1)."""
    median = statistics.median(times)
    ci = None
    if len(times) > 1:
        t = _T95[len(times) - 2] if len(times) - 1 <= len(_T95) else 1.96
        ci = 100 * t * statistics.stdev(times) / len(times) ** 0.5 / median
    return Measurement(backend, batch, median, min(times), ci, batch / median, peak_mb, len(times))


def compare(results: list[Measurement]) -> list[Measurement]:
    """Each measurement with its speedup and memory saved against eager at the same batch size."""
    base = {r.batch_size: r for r in results if r.backend == BASELINE}
    out = []
    for r in results:
        ref = base.get(r.batch_size)
        if ref is None:
            out.append(r)
            continue
        saved = None
        if ref.peak_memory_mb and r.peak_memory_mb is not None:
            saved = 100 * (ref.peak_memory_mb - r.peak_memory_mb) / ref.peak_memory_mb
        out.append(replace(r, speedup=ref.seconds_per_iter / r.seconds_per_iter, memory_saved_percent=saved))
    return out


def machine(device: str) -> dict:
    """CPU model and cores, GPU (when benchmarking on CUDA), OS, Python and package versions (core.machine)."""
    return core_machine.machine(device)


def settings_dict(settings: BenchSettings, info: dict) -> dict:
    s = settings
    return {"model": s.spec.model, "weights": "random" if s.spec.random_weights else "pretrained",
            "seed": s.spec.seed if s.spec.random_weights else None, "device": s.device, "dtype": s.dtype,
            "batch_sizes": sorted(set(s.batch_sizes)), "iters": s.iters, "warmup": s.warmup,
            "timing": "median of per-iteration wall time; backends interleaved round-robin, each in its own process",
            "memory": ("CUDA: torch max allocated (None where torch does not allocate)" if s.device == "cuda"
                       else "CPU: peak RSS (VmHWM) of the backend's process"),
            "ort_session": "bench.worker.ort_session_options(): ORT_ENABLE_ALL, sequential, threads = physical cores",
            "inputs": INPUTS_POLICY} | info


def machine_line(m: dict) -> str:
    v = m["versions"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"{m['cpu']} ({m['physical_cores']} cores, {m['logical_cpus']} logical){gpu}; torch {v.get('torch')}, "
            f"transformers {v.get('transformers')}, onnxruntime {v.get('onnxruntime')}, Python {m['python']}")


WIDE_INTERVAL_PERCENT = 10.0


def load_lines(report: BenchReport) -> list[str]:
    """The load average before and after the run and, when the machine was busier than its cores and some
    interval is wider than ±WIDE_INTERVAL_PERCENT, a warning saying so (ratios within one run still compare)."""
    before, after = report.settings.get("load_average_1min") or (None, None)
    if before is None or after is None:
        return []
    lines = [f"Load: 1-min load average {before:.1f} before the run, {after:.1f} after.", ""]
    widest = max((r.ci_percent or 0.0 for r in (*report.results, *report.end_to_end)), default=0.0)
    if max(before, after) > (report.machine.get("physical_cores") or 1) and widest > WIDE_INTERVAL_PERCENT:
        lines += [f"**Warning**: the machine was busy (load {max(before, after):.1f} on "
                  f"{report.machine.get('physical_cores')} cores) and some 95 % intervals reach ±{widest:.0f}%: "
                  "absolute times are inflated and noisy; compare ratios within this run only.", ""]
    return lines


def to_markdown(report: BenchReport) -> str:
    """Machine and settings, one doc-style table per backend against eager, end to end, skipped backends."""
    s = report.settings
    lines = [f"**{s['model']}** ({s['weights']} weights) at {s['resolution'][0]}x{s['resolution'][1]}, "
             f"{s['device']}, torch dtype {s['dtype']}, {s['iters']} iterations after {s['warmup']} warm-up",
             "", f"Machine: {machine_line(report.machine)}", ""] + load_lines(report)
    base = {r.batch_size: r for r in report.results if r.backend == BASELINE}
    for backend in dict.fromkeys(r.backend for r in report.results if r.backend != BASELINE):
        lines += [f"#### {backend}", "",
                  f"| batch size | eager s/iter | {backend} s/iter | speedup | memory eager (MiB) | "
                  f"memory {backend} (MiB) | memory saved |", "|---|---|---|---|---|---|---|"]
        for r in (r for r in report.results if r.backend == backend):
            ref = base.get(r.batch_size)
            lines.append(f"| {r.batch_size} | {_secs(ref)} | {_secs(r)} | {_x(r.speedup)} | {_mb(ref)} | {_mb(r)} | "
                         f"{_pct(r.memory_saved_percent)} |")
        lines.append("")
    if report.end_to_end:
        lines += ["#### end to end (preprocess + inference + postprocess of the sample photos)", "",
                  "| pipeline | photos | s/call | images/s |", "|---|---|---|---|"]
        lines += [f"| {r.backend} | {r.batch_size} | {_secs(r)} | {r.images_per_second:.2f} |"
                  for r in report.end_to_end]
        lines.append("")
    if report.skipped:
        lines += ["Skipped:", ""] + [f"- {k.backend}{f' (batch {k.batch_size})' if k.batch_size else ''}: {k.reason}"
                                     for k in report.skipped] + [""]
    return "\n".join(lines)


def _secs(r: Measurement | None) -> str:
    if r is None:
        return "-"
    ci = f" ±{r.ci_percent:.0f}%" if r.ci_percent is not None else ""
    return f"{r.seconds_per_iter:.4f}{ci}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mb(r: Measurement | None) -> str:
    return "-" if r is None or r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"
