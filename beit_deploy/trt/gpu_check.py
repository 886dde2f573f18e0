"""`make gpu-check` (`python -m beit_deploy.trt.gpu_check`): what a GPU machine can prove, said up front.

Parts, each run only where it can (the first lines of the log say which, and why not the others):
1. environment: GPU, driver, CUDA, torch, transformers, TensorRT, ONNX Runtime and its providers;
2. tests: `pytest -m "gpu or tensorrt" tests/trt/test_gpu.py` (GPU tests need CUDA, TensorRT tests TensorRT);
3. attention: transformers' own eager vs SDPA attention, CUDA fp16, beit-base-patch16-224 with random weights,
   batch 1/4/16/32, as the transformers docs' table: ms/iter, speedup, peak memory, memory saved;
4. baked: beit-deploy's baked model (constant bias, the exporter's bake form) against both, same batches;
5. parity on CUDA: baked vs eager, fp32 with TF32 off (max rel error) and fp16 (cosine, max rel error);
6. TensorRT: where TensorRT is installed, a like-for-like row (fp16 engine of the same model, inputs already on
   the GPU, same timing loop), for each attention form the installed TensorRT parses.

Timing, for every row alike: `ITERS` calls after `WARMUP`, each followed by torch.cuda.synchronize(), wall time.
Memory: torch.cuda.max_memory_allocated() over the timed calls (weights included); the TensorRT row adds the
engine's own activation memory. Sized for well under 8 minutes on one H100/H200 (tests cut off at
TEST_TIMEOUT_S; a part that would start past BUDGET_S is skipped, saying so). Writes gpu-check.log,
gpu-check.json and pytest-gpu.xml to $GPU_CHECK_OUT (default gpu-check-out/). Exit 1 if a test or a parity
check failed. On a machine without CUDA it says so and runs what it can (the tests, which then skip).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from ..core.machine import module_version
from ..core.manifest import ATTENTION_MIN_TENSORRT, FUSED
from ..core.precisions import PRECISIONS

TEST_FILE = Path("tests") / "trt" / "test_gpu.py"
TEST_TIMEOUT_S, BUDGET_S = 300, 420
BATCHES, WARMUP, ITERS = (1, 4, 16, 32), 10, 30
BENCH_MODEL, RESOLUTION = "beit-base-patch16-224", (224, 224)
# the export's parity thresholds (core/precisions.py), for the baked model on CUDA
PARITY = {"fp32_rel": PRECISIONS["fp32"].thresholds["rel"], "fp16_cosine": PRECISIONS["fp16"].thresholds["cosine"]}
FUSED_FROM = ATTENTION_MIN_TENSORRT[FUSED]  # the first TensorRT whose ONNX parser reads the Attention op


class Log:
    """Prints lines to stdout and appends them to the log file."""

    def __init__(self, path: Path):
        self.file = path.open("w")
        self.start = time.perf_counter()

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def environment() -> dict:
    """GPU, driver, CUDA and package versions; ONNX Runtime's providers."""
    import torch

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        env["driver"] = None
    for module in ("tensorrt", "onnxruntime", "onnx", "transformers", "polygraphy", "onnxscript", "onnx_ir"):
        env[module] = module_version(module)
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        env["onnxruntime_providers"] = []
    return env


def plan(env: dict, checkout: Path | None) -> dict[str, str | None]:
    """Part -> None (runs here) or the reason it cannot. The first lines of the log."""
    cuda = None if env["cuda_available"] else "no CUDA GPU (torch.cuda.is_available() is False)"
    trt = None if importlib.util.find_spec("tensorrt") else "TensorRT is not installed (pip install tensorrt)"
    tests = None if checkout else f"no beit-deploy checkout with {TEST_FILE} here: run from a clone"
    gpu_tests = tests or cuda
    return {"GPU tests (fp16 baked vs eager on CUDA, ONNX Runtime CUDA provider)": gpu_tests,
            "TensorRT tests (build, run, CUDA graphs, inspect)": gpu_tests or trt,
            "eager vs SDPA attention table (CUDA fp16)": cuda,
            "baked model vs eager and SDPA": cuda,
            "parity on CUDA (baked vs eager, fp32 and fp16)": cuda,
            "TensorRT row (like for like)": cuda or trt}


def find_checkout() -> Path | None:
    """The beit-deploy checkout whose tests to run: the working directory, else the one this module is in."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (folder / TEST_FILE).is_file():
            return folder
    return None


def run_tests(log: Log, out: Path, checkout: Path) -> dict:
    """The GPU-marked tests in a subprocess; counts from the JUnit XML, the output into the log."""
    junit = out / "pytest-gpu.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-v", "-rsP", "-p", "no:cacheprovider",
               f"--junitxml={junit.resolve()}", str(TEST_FILE)]
    log("$ " + " ".join(command))
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"{exc.stdout or ''}{exc.stderr or ''}\nTIMED OUT after {TEST_TIMEOUT_S} s", -1
    for line in (output.decode() if isinstance(output, bytes) else output).splitlines():
        log(line)
    result: dict = {"exit_code": code, "seconds": round(time.perf_counter() - start, 1)}
    if junit.is_file():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        result["skip_reasons"] = sorted({s.get("message", "") for s in suite.iter("skipped")})
    return result


def timed(call, device: str) -> tuple[float, float | None]:
    """(ms per call, peak MB or None off CUDA) of `call()` over ITERS calls after WARMUP, each synchronised."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(WARMUP):
        call()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(ITERS):
        call()
        sync()
    ms = (time.perf_counter() - start) * 1000 / ITERS
    return ms, torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def attention_table(log: Log, spec=None, resolution: tuple[int, int] = RESOLUTION, batches=BATCHES,
                    device: str = "cuda") -> dict:
    """Parity, then eager vs SDPA (transformers) and the baked model in fp16, per batch size, on `device`.
    `spec`: the model (default BENCH_MODEL with random weights); the tests run it on CPU with a tiny one."""
    import torch

    from ..exporter.bake import bake
    from ..exporter.loading import ModelSpec, load_model

    spec = spec or ModelSpec(BENCH_MODEL, random_weights=True)
    torch.set_grad_enabled(False)
    model = load_model(spec).model.eval()
    baked = bake(model, resolution)  # captures the bias on CPU, before the model moves
    model, baked = model.to(device), baked.to(device)
    parity = parity_on(model, baked, resolution, device)
    log("parity (batch 8, random inputs): " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in parity.items()))
    model, baked = model.half(), baked.half()
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, *resolution, device=device, dtype=torch.float16)
        row: dict = {"batch": batch}
        for name in ("eager", "sdpa"):
            model.set_attn_implementation(name)
            row[name] = timed(lambda: model(pixel_values=x), device)
        row["baked"] = timed(lambda: baked(pixel_values=x), device)
        rows.append(row)
    model = baked = None  # freed before the next part (the timing lambdas above are done with them)
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"model": spec.model, "weights": "random" if spec.random_weights else "pretrained", "dtype": "float16",
            "device": device, "warmup": WARMUP, "iters": ITERS, "rows": rows, "parity": parity}


def parity_on(model, baked, resolution: tuple[int, int], device: str) -> dict:
    """Baked vs eager (both fp32), batch 8 random inputs: fp32 with TF32 off (max rel), and the baked model in
    fp16 (cosine, max rel against the fp32 eager reference); `passed` against PARITY. Leaves `baked` in fp16."""
    import torch

    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    x = torch.randn(8, 3, *resolution, generator=torch.Generator().manual_seed(0)).to(device)
    model.set_attn_implementation("eager")
    ref = model(pixel_values=x).logits.double()
    got32 = baked(pixel_values=x).logits.double()
    got16 = baked.half()(pixel_values=x.half()).logits.double()
    rel = lambda a: float((a - ref).abs().max() / ref.abs().max())  # noqa: E731
    cosine = float(torch.nn.functional.cosine_similarity(got16, ref, dim=1).min())
    result: dict = {"fp32_rel": rel(got32), "fp16_rel": rel(got16), "fp16_cosine": cosine}
    result["passed"] = result["fp32_rel"] <= PARITY["fp32_rel"] and cosine >= PARITY["fp16_cosine"]
    return result


def tensorrt_rows(log: Log, work: Path) -> dict:
    """fp16 engines of the same model (each attention form this TensorRT parses), timed like the torch rows."""
    import tensorrt
    import torch

    from ..core.manifest import read_manifest
    from ..exporter.bake import DECOMPOSED, FUSED
    from ..exporter.loading import ModelSpec
    from ..exporter.pipeline import ExportOptions, export
    from ..runtime.tensorrt_backend import TensorRTBackend
    from .build import BuildOptions, build

    version = tuple(int(p) for p in tensorrt.__version__.split(".")[:2])
    forms = [DECOMPOSED] + ([FUSED] if version >= FUSED_FROM else [])
    result: dict = {"tensorrt": tensorrt.__version__, "forms": {}}
    if FUSED not in forms:
        log(f"TensorRT {tensorrt.__version__} < 10.14 does not parse the ONNX Attention op: decomposed form only")
    for form in forms:
        if log.elapsed() > BUDGET_S:
            result["forms"][form] = {"skipped": f"time budget ({BUDGET_S} s) spent"}
            continue
        options = ExportOptions(resolutions=(RESOLUTION,), fp16=True, out_dir=work / form, attention=form)
        folder = export(ModelSpec(BENCH_MODEL, random_weights=True), options)[0].folder
        engine = build(folder, BuildOptions(precision="fp16", batch=(1, 16, 32), out_dir=work / f"engines-{form}"))[0]
        rows = []
        with TensorRTBackend(engine, read_manifest(folder)) as backend:
            extra = backend.device_memory_bytes / 2**20  # TensorRT's activations, outside torch
            for batch in BATCHES:
                feeds = {"pixel_values": torch.randn(batch, 3, *RESOLUTION, device="cuda")}
                ms, peak = timed(lambda: backend.run_torch(feeds), "cuda")
                rows.append({"batch": batch, "tensorrt": (ms, (peak or 0) + extra)})
        result["forms"][form] = {"engine": str(engine), "rows": rows}
    return result


def table(log: Log, bench: dict, trt: dict | None) -> None:
    """The transformers docs' table (eager vs SDPA), then baked and TensorRT against both."""
    log(f"\n{bench['model']} ({bench['weights']} weights), {bench['device']} {bench['dtype']}, {bench['iters']} "
        f"iterations after {bench['warmup']} warm-up, each synchronised")
    log("| batch | eager ms | sdpa ms | sdpa speedup | eager MB | sdpa MB | sdpa memory saved |")
    log("|---|---|---|---|---|---|---|")
    for r in bench["rows"]:
        (e, em), (s, sm) = r["eager"], r["sdpa"]
        log(f"| {r['batch']} | {e:.2f} | {s:.2f} | {e / s:.2f}x | {_mb(em)} | {_mb(sm)} | {_saved(em, sm)} |")
    others = [("baked", {r["batch"]: r["baked"] for r in bench["rows"]})]
    for form, data in (trt or {}).get("forms", {}).items():
        if "rows" in data:
            others.append((f"tensorrt ({form})", {r["batch"]: r["tensorrt"] for r in data["rows"]}))
    for name, by_batch in others:
        log(f"\n| batch | {name} ms | vs eager | vs sdpa | {name} MB |")
        log("|---|---|---|---|---|")
        for r in bench["rows"]:
            ms, mb = by_batch[r["batch"]]
            log(f"| {r['batch']} | {ms:.2f} | {r['eager'][0] / ms:.2f}x | {r['sdpa'][0] / ms:.2f}x | {_mb(mb)} |")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _saved(eager: float | None, other: float | None) -> str:
    return "-" if not eager or other is None else f"{100 * (eager - other) / eager:.1f}%"


def main() -> int:
    out = Path(os.environ.get("GPU_CHECK_OUT", "gpu-check-out"))
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu-check.log")
    env, checkout = environment(), find_checkout()
    steps = plan(env, checkout)
    log("gpu-check: what runs on this machine")
    for part, reason in steps.items():
        log(f"  {'RUNS   ' if reason is None else 'SKIPPED'} {part}" + (f": {reason}" if reason else ""))
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "plan": steps, "environment": env}
    log("environment:")
    for key, value in env.items():
        log(f"  {key}: {value}")
    report["tests"] = run_tests(log, out, checkout) if checkout else {"skipped": steps[next(iter(steps))]}
    failed = bool(report["tests"].get("exit_code") or report["tests"].get("failures") or report["tests"].get("errors"))
    if env["cuda_available"]:
        failed |= benchmarks(log, report)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    tests = report["tests"]
    log(f"tests: {tests.get('tests')} run, {tests.get('failures')} failed, {tests.get('errors')} errors, "
        f"{tests.get('skipped')} skipped; {log.elapsed():.0f} s in all; results in {out}/")
    return 1 if failed else 0


def benchmarks(log: Log, report: dict) -> bool:
    """Parts 3-6 into `report`; True if the parity on CUDA failed."""
    try:
        report["benchmark"] = bench = attention_table(log)
    except Exception as exc:  # noqa: BLE001 - record it; the tests' results still count
        report["benchmark"] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"benchmark failed: {type(exc).__name__}: {exc}")
        return False
    trt = None
    if importlib.util.find_spec("tensorrt") is not None:
        with tempfile.TemporaryDirectory() as work:
            try:
                report["tensorrt"] = trt = tensorrt_rows(log, Path(work))
            except Exception as exc:  # noqa: BLE001
                report["tensorrt"] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"TensorRT row failed: {type(exc).__name__}: {exc}")
    table(log, bench, trt)
    return not bench["parity"]["passed"]


if __name__ == "__main__":
    sys.exit(main())
