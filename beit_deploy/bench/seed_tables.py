"""The transformers BEiT docs' two SDPA tables (the seed), measured again where `gpu_check` runs, with
beit-deploy's baked-bias model (and, in gpu_check, TensorRT engines) beside them.

The docs measured microsoft/beit-base-patch16-224 in float16 on an RTX 2060:
- training: 50 steps, batch 2, image 1048x640 (H x W), eager vs SDPA: seconds per batch, peak memory, saving;
- inference: batch 1/4/16/32: seconds per iteration, its confidence interval, memory, speedup, memory saved.

Here, every row alike: the model alone on the device (one model resident at a time, so its peak memory is its
own: torch.cuda.max_memory_allocated over the timed calls, weights included), `warmup` untimed calls, then each
timed call synchronised; statistics by the bench harness (`report.summarise`: median seconds, and the 95 %
confidence interval of the mean as a % of the median). A training step is the docs' benchmark step: forward in
train mode, loss = logits.sum(), backward, zero_grad (no optimiser step, so weights never change). Speedup and
memory saving are the docs' definitions: eager / other (x; training: as a %, eager / other - 1) and
(eager - other) / other. The baked model is the export's model (the relative position bias a constant of the
resolution); in training its bias is a constant, so it is not learned. Rows run for fp16 (the docs') and fp32.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from ..core.backends import BACKENDS, MODEL
from .report import Measurement, summarise
from .worker import seconds_of

# the docs' two rows: transformers' model with its eager and its SDPA attention (the backend table's MODEL rows, not
# the autocast one)
EAGER, SDPA = ATTENTIONS = tuple(b.attention for b in BACKENDS.values() if b.opens == MODEL and b.autocast is None)
BAKED = "baked"


@dataclass(frozen=True)
class TableSettings:
    """What the two tables measure. GPU: the seed's settings; `DRY_RUN`: a tiny model's, on CPU."""

    device: str = "cuda"
    train_steps: int = 50
    train_batch: int = 2
    train_size: tuple[int, int] = (1048, 640)
    batches: tuple[int, ...] = (1, 4, 16, 32)
    resolution: tuple[int, int] = (224, 224)
    dtypes: tuple[str, ...] = ("fp16", "fp32")
    warmup: int = 10
    iters: int = 30


DRY_RUN = TableSettings(device="cpu", train_steps=3, train_size=(72, 48), batches=(1, 4), resolution=(64, 64),
                        warmup=2, iters=5)


def _dtype(name: str):
    import torch

    return {"fp16": torch.float16, "fp32": torch.float32}[name]


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def time_calls(call, settings: TableSettings, name: str, batch: int, count: int) -> Measurement:
    """`call()` `warmup` times, then `count` timed, synchronised calls -> the bench harness's Measurement."""
    import torch

    sync = _sync(settings.device)
    for _ in range(settings.warmup):
        call()
    sync()
    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = seconds_of(call, sync, count)
    peak = torch.cuda.max_memory_allocated() / 2**20 if settings.device == "cuda" else None
    return summarise(name, batch, times, peak)


def _resident(model, settings: TableSettings, dtype: str):
    """A copy of the CPU master `model` on the device in `dtype`; the device's memory freed of the last one."""
    import torch

    if settings.device == "cuda":
        torch.cuda.empty_cache()
    return copy.deepcopy(model).to(settings.device, _dtype(dtype))


def _models(master, resolution: tuple[int, int]):
    """(name, CPU model) for eager, sdpa and baked; eager and sdpa are the same model with its attention set.
    The baked model shares the master's weights: `_resident` copies before anything moves to the device."""
    from ..exporter.bake import bake

    yield from ((name, master) for name in ATTENTIONS)
    yield BAKED, bake(master, resolution)  # the bias is captured on the CPU, at this resolution


def training_rows(master, settings: TableSettings) -> list[dict]:
    """The docs' training row per dtype and model: seconds per batch, peak memory."""
    import torch

    from ..exporter.bake import eager_kwargs

    rows = []
    kwargs = eager_kwargs(master, settings.train_size)
    for dtype in settings.dtypes:
        x = torch.randn(settings.train_batch, 3, *settings.train_size, generator=torch.Generator().manual_seed(0))
        for name, cpu_model in _models(master, settings.train_size):
            model = _resident(cpu_model, settings, dtype).train()
            if name in ATTENTIONS:
                model.set_attn_implementation(name)
            pixels = x.to(settings.device, _dtype(dtype))

            def step():
                model.zero_grad(set_to_none=True)
                model(pixel_values=pixels, **({} if name == BAKED else kwargs)).logits.sum().backward()

            with torch.enable_grad():
                row = time_calls(step, settings, name, settings.train_batch, settings.train_steps)
            rows.append({"dtype": dtype, **asdict(row)})
            model = None  # freed before the next copy (the timed closure is done with it)
    return rows


def inference_rows(master, settings: TableSettings) -> list[dict]:
    """The docs' inference table per dtype, batch size and model: seconds per iteration, peak memory."""
    import torch

    rows = []
    with torch.no_grad():
        for dtype in settings.dtypes:
            for name, cpu_model in _models(master, settings.resolution):
                model = _resident(cpu_model, settings, dtype).eval()
                if name in ATTENTIONS:
                    model.set_attn_implementation(name)
                for batch in settings.batches:
                    x = torch.randn(batch, 3, *settings.resolution, device=settings.device, dtype=_dtype(dtype))
                    row = time_calls(lambda: model(pixel_values=x), settings, name, batch, settings.iters)
                    rows.append({"dtype": dtype, **asdict(row)})
                model = None  # freed before the next copy
    return rows


def speedup(eager: float, other: float) -> float:
    return eager / other


def saving(eager: float | None, other: float | None) -> float | None:
    """The docs' memory saving: (eager - other) / other, in %."""
    return None if not eager or not other else 100 * (eager - other) / other


def training_table(rows: list[dict], settings: TableSettings) -> list[str]:
    """Markdown: the docs' training columns, one row per dtype, with the baked model beside eager and SDPA."""
    lines = [f"training: {settings.train_steps} steps, batch {settings.train_batch}, image "
             f"{settings.train_size[0]}x{settings.train_size[1]}, on {settings.device}; s/batch median (95 % CI); "
             "speedup % = eager / other - 1; memory saving % = (eager - other) / other",
             "| dtype | eager s/batch | sdpa s/batch | sdpa speedup % | baked s/batch | baked speedup % "
             "| eager peak MB | sdpa peak MB | sdpa mem saving % | baked peak MB | baked mem saving % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dtype in settings.dtypes:
        by = {r["backend"]: r for r in rows if r["dtype"] == dtype}
        if set(by) != {*ATTENTIONS, BAKED}:
            continue
        e, s, b = by[EAGER], by[SDPA], by[BAKED]
        faster = {k: _pct(100 * (speedup(e["seconds_per_iter"], o["seconds_per_iter"]) - 1)) for k, o in (("s", s),
                                                                                                      ("b", b))}
        saved = {k: _pct(saving(e["peak_memory_mb"], o["peak_memory_mb"])) for k, o in (("s", s), ("b", b))}
        lines.append(f"| {dtype} | {_s(e)} | {_s(s)} | {faster['s']} | {_s(b)} | {faster['b']} | {_mb(e)} | {_mb(s)} "
                     f"| {saved['s']} | {_mb(b)} | {saved['b']} |")
    return lines


def inference_tables(rows: list[dict], settings: TableSettings, others: dict[str, list[dict]] = {}) -> list[str]:
    """Markdown per dtype: the docs' inference columns (eager vs sdpa), then each other model (baked, and the
    TensorRT rows gpu_check passes in `others`: name -> rows) against eager and sdpa."""
    lines = []
    for dtype in settings.dtypes:
        by = {(r["backend"], r["batch_size"]): r for r in rows if r["dtype"] == dtype}
        batches = [b for b in settings.batches if (EAGER, b) in by and (SDPA, b) in by]
        size = f"{settings.resolution[0]}x{settings.resolution[1]}"
        lines += ["", f"inference, {dtype}, {size}, on {settings.device}: s/iter median over {settings.iters} after "
                  f"{settings.warmup} warm-up (CI: 95 % of the mean)",
                  "| batch | eager s/iter | eager CI | eager MB | sdpa s/iter | sdpa CI | sdpa MB | sdpa speedup "
                  "| sdpa memory saved |", "|---|---|---|---|---|---|---|---|---|"]
        for batch in batches:
            e, s = by[EAGER, batch], by[SDPA, batch]
            lines.append(f"| {batch} | {_s(e, ci=False)} | {_ci(e)} | {_mb(e)} | {_s(s, ci=False)} | {_ci(s)} "
                         f"| {_mb(s)} | {speedup(e['seconds_per_iter'], s['seconds_per_iter']):.2f}x "
                         f"| {_pct(saving(e['peak_memory_mb'], s['peak_memory_mb']))} |")
        extra = {BAKED: [r for r in rows if r["backend"] == BAKED]} | others
        for name, other in extra.items():
            got = {r["batch_size"]: r for r in other if r["dtype"] == dtype}
            if not got:
                continue
            lines += ["", f"| batch | {name} s/iter | CI | MB | vs eager | vs sdpa | memory saved vs eager |",
                      "|---|---|---|---|---|---|---|"]
            for batch in [b for b in batches if b in got]:
                o, e, s = got[batch], by[EAGER, batch], by[SDPA, batch]
                lines.append(f"| {batch} | {_s(o, ci=False)} | {_ci(o)} | {_mb(o)} "
                             f"| {speedup(e['seconds_per_iter'], o['seconds_per_iter']):.2f}x "
                             f"| {speedup(s['seconds_per_iter'], o['seconds_per_iter']):.2f}x "
                             f"| {_pct(saving(e['peak_memory_mb'], o['peak_memory_mb']))} |")
    return lines


def _s(row: dict, ci: bool = True) -> str:
    text = f"{row['seconds_per_iter']:.4f}"
    return f"{text} ({_ci(row)})" if ci else text


def _ci(row: dict) -> str:
    return "-" if row["ci_percent"] is None else f"±{row['ci_percent']:.1f}%"


def _mb(row: dict) -> str:
    return "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
