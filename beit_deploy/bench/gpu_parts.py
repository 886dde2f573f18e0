"""gpu_check's measuring parts: the model, parity on the device, the docs' two tables (seed_tables), the
TensorRT rows, and the tables in the log. Each part returns its rows, or says why it was skipped or failed."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path

from .seed_tables import DRY_RUN, EAGER, TableSettings

BENCH_MODEL = "beit-base-patch16-224"
TRT_PROFILE = (1, 16, 32)


def settings_for(cuda: bool) -> TableSettings:
    """The docs' settings on a GPU; the dry run's (tiny model, a few iterations) on CPU."""
    return TableSettings() if cuda else DRY_RUN


def part(log, name: str, reason: str | None, measure) -> dict:
    """{"skipped": why} where the plan or the time budget says so, else measure()'s result, or {"error": ...}
    (logged; the other parts still run)."""
    reason = reason or log.budget_spent()
    if reason:
        return {"skipped": reason}
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - one part failing must not lose the others
        log(f"{name} failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def model_spec(settings: TableSettings, work: Path):
    """beit-base-patch16-224's architecture with random weights (no network needed) on a GPU; for the dry run
    a tiny classification model saved under `work` (read back through the real loading code)."""
    from ..exporter.loading import ModelSpec

    if settings.device == "cuda":
        return ModelSpec(BENCH_MODEL, random_weights=True)
    folder = work / "tiny-beit"
    if not folder.is_dir():
        import transformers

        from ..exporter.loading import model_class, random_model

        config = transformers.BeitConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=16, layer_scale_init_value=0.1, use_relative_position_bias=True, initializer_range=0.1,
            use_absolute_position_embeddings=False, architectures=["BeitForImageClassification"], num_labels=10)
        random_model(model_class("classification"), config, 0).save_pretrained(folder)
    return ModelSpec(str(folder))


def torch_parts(log, report: dict, steps: dict, settings: TableSettings, work: Path) -> bool:
    """Parity, the inference table and the training table into `report`; True if parity or a part failed."""
    from . import seed_tables

    master = None

    def model():
        nonlocal master
        if master is None:
            from ..exporter.loading import load_model

            master = load_model(model_spec(settings, work)).model.eval()  # stays on the CPU: every row copies it
        return master

    report["settings"] = {**asdict(settings), "model": BENCH_MODEL if settings.device == "cuda" else "tiny (dry run)"}
    report["parity"] = part(log, "parity", steps["parity"], lambda: parity_on(model(), settings))
    if "passed" in report["parity"]:
        log("parity (batch 8, random inputs): " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                           for k, v in report["parity"].items()))
    report["inference"] = part(log, "inference table", steps["inference"],
                               lambda: {"rows": seed_tables.inference_rows(model(), settings)})
    report["training"] = part(log, "training table", steps["training"],
                              lambda: {"rows": seed_tables.training_rows(model(), settings)})
    return not report["parity"].get("passed", True) or any("error" in report[k] for k in ("parity", "inference",
                                                                                           "training"))


def parity_on(model, settings: TableSettings) -> dict:
    """Baked vs eager (both fp32, TF32 off), batch 8 random inputs at the inference resolution, on the device:
    fp32 max rel and the baked model in fp16 (cosine, max rel against the fp32 eager reference), judged by the
    export's own thresholds (exporter.parity.THRESHOLDS)."""
    import copy

    import torch

    from ..exporter.bake import bake
    from ..exporter.parity import THRESHOLDS

    device, resolution = settings.device, settings.resolution
    baked = bake(copy.deepcopy(model), resolution).to(device)  # a copy: .to() would move the shared weights
    eager = copy.deepcopy(model).to(device)
    eager.set_attn_implementation(EAGER)
    x = torch.randn(8, 3, *resolution, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad(), tf32_off():
        ref = eager(pixel_values=x).logits.double()
        got32 = baked(pixel_values=x).logits.double()
        got16 = copy.deepcopy(baked).half()(pixel_values=x.half()).logits.double()
    rel = lambda a: float((a - ref).abs().max() / ref.abs().max())  # noqa: E731
    cosine = float(torch.nn.functional.cosine_similarity(got16, ref, dim=1).min())
    result: dict = {"fp32_rel": rel(got32), "fp16_rel": rel(got16), "fp16_cosine": cosine}
    result["passed"] = result["fp32_rel"] <= THRESHOLDS["fp32"]["rel"] and cosine >= THRESHOLDS["fp16"]["cosine"]
    return result


@contextlib.contextmanager
def tf32_off():
    """TF32 off for torch's CUDA matmuls and convolutions inside the block, as they were after it (the tables
    that follow time fp32 with torch's settings, not parity's)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tensorrt_rows(log, settings: TableSettings, work: Path) -> dict:
    """Engines of the same model per dtype and attention form this TensorRT parses (profile TRT_PROFILE, one
    timing cache for all), timed like the torch rows. Most useful first: fp16 (the docs') decomposed, fp16 fused,
    then fp32; the time budget is checked before each export, build and batch size. What could not run here (the
    budget, an attention form this TensorRT cannot parse) goes under "skipped"; an export, build or timing that
    failed goes under "errors" (which fail the check)."""
    import tensorrt

    from ..core.manifest import ATTENTION_MIN_TENSORRT, DECOMPOSED, FUSED

    version = tuple(int(p) for p in tensorrt.__version__.split(".")[:2])
    forms = [DECOMPOSED] + ([FUSED] if version >= ATTENTION_MIN_TENSORRT[FUSED] else [])
    result: dict = {"tensorrt": tensorrt.__version__, "rows": [], "skipped": {}, "errors": {}}
    if FUSED not in forms:
        need = ".".join(map(str, ATTENTION_MIN_TENSORRT[FUSED]))
        result["skipped"][FUSED] = f"TensorRT {tensorrt.__version__} < {need} does not parse the ONNX Attention op"
    exports: dict[str, Path | None] = {}
    for dtype in settings.dtypes:
        for form in forms:
            name = f"tensorrt {form} {dtype}"
            if form not in exports:
                spent = log.budget_spent()
                if spent:
                    result["skipped"][name] = spent
                    continue
                exports[form] = _attempt(log, result["errors"], f"tensorrt {form} export",
                                         lambda: _export(settings, work, form))
            if exports[form] is None:
                result["skipped"][name] = f"its export failed (errors: tensorrt {form} export)"
                continue
            result["rows"] += _attempt(log, result["errors"], name, lambda: _engine_rows(
                log, settings, exports[form], form, dtype, work, result["skipped"])) or []
    return result


def _attempt(log, errors: dict, name: str, make):
    """make(), or None with its failure logged and recorded as errors[name] (the other engines still run)."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - recorded; the other engines may still run
        errors[name] = f"{type(exc).__name__}: {exc}"
        log(f"{name} failed: {errors[name]}")
        return None


def _export(settings: TableSettings, work: Path, form: str) -> Path:
    from ..exporter.pipeline import ExportOptions, export

    options = ExportOptions(resolutions=(settings.resolution,), fp16=True, out_dir=work / form, attention=form)
    return export(model_spec(settings, work), options)[0].folder


def _engine_rows(log, settings: TableSettings, folder: Path, form: str, dtype: str, work: Path,
                 skipped: dict) -> list[dict]:
    """One engine's rows: built (after a budget check), then each batch size timed (each after one)."""
    import torch

    from ..core.manifest import read_manifest
    from ..runtime.tensorrt_backend import TensorRTBackend
    from ..trt.build import BuildOptions, build
    from .seed_tables import time_calls

    name, rows = f"tensorrt {form}", []
    spent = log.budget_spent()
    if spent:
        skipped[f"{name} {dtype}"] = spent
        return rows
    options = BuildOptions(precision=dtype, batch=TRT_PROFILE, out_dir=work / f"engines-{form}-{dtype}",
                           timing_cache=work / "timing.cache")
    engine = build(folder, options)[0]
    with TensorRTBackend(engine, read_manifest(folder)) as backend:
        weights_mb = engine.stat().st_size / 2**20  # the engine's weights live outside torch's allocator
        for batch in settings.batches:
            spent = log.budget_spent()
            if spent:
                skipped[f"{name} {dtype} batch {batch}"] = spent
                continue
            feeds = {"pixel_values": torch.randn(batch, 3, *settings.resolution, device="cuda")}
            row = asdict(time_calls(lambda: backend.run_torch(feeds), settings, name, batch, settings.iters))
            row["peak_memory_mb"] = (row["peak_memory_mb"] or 0) + weights_mb
            rows.append({"dtype": dtype, **row})
    return rows


def log_tables(log, report: dict, settings: TableSettings) -> None:
    """The docs' two tables as markdown in the log, each part's skip reason where it has no rows."""
    from .seed_tables import inference_tables, training_table

    for key in ("training", "inference", "tensorrt"):
        if "rows" not in report.get(key, {}):
            log(f"\n{key}: {report.get(key, {}).get('skipped') or report.get(key, {}).get('error')}")
    if "rows" in report.get("training", {}):
        log("")
        for line in training_table(report["training"]["rows"], settings):
            log(line)
    trt_rows = report.get("tensorrt", {}).get("rows", [])
    others = {}
    for row in trt_rows:
        others.setdefault(row["backend"], []).append(row)
    if "rows" in report.get("inference", {}):
        for line in inference_tables(report["inference"]["rows"], settings, others):
            log(line)
    for what, why in report.get("tensorrt", {}).get("skipped", {}).items() if isinstance(
            report.get("tensorrt", {}).get("skipped"), dict) else ():
        log(f"{what}: skipped ({why})")
    for what, why in report.get("tensorrt", {}).get("errors", {}).items():
        log(f"{what}: FAILED ({why})")
