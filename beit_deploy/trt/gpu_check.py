"""`python -m beit_deploy.gpu_check` (or `make gpu-check`): what a GPU machine has, and what works on it.

1. Prints the environment: GPU (name, compute capability, memory), driver, CUDA, torch, TensorRT, ONNX Runtime
   and its providers.
2. Runs the GPU-marked tests (`pytest -m "gpu or tensorrt" tests/test_gpu.py`): fp16 baked model vs eager on
   CUDA, engine build + TensorRT backend parity where TensorRT exists, ONNX Runtime's CUDA EP where present.
3. Benchmarks eager transformers vs the baked model on CUDA in fp16: beit-base-patch16-224 with random weights
   (no network needed), batch 1/8/32, timed with CUDA events.

Writes `gpu-check.log`, `gpu-check.json` and `pytest-gpu.xml` to $GPU_CHECK_OUT (default gpu-check-out/).
Sized for about 5 minutes on one H100; the tests are cut off after TEST_TIMEOUT_S. Exit 1 if a test failed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

# The GPU tests live in a beit-deploy checkout (tests/test_gpu.py); an installed wheel has none.
CHECKOUT = Path(__file__).resolve().parents[2]
TEST_TIMEOUT_S = 330
BATCHES = (1, 8, 32)
BENCH_MODEL = "beit-base-patch16-224"


class Log:
    """Prints lines to stdout and appends them to the log file."""

    def __init__(self, path: Path):
        self.file = path.open("w")

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception as exc:  # noqa: BLE001 - report any failure to import as "missing"
        return f"missing ({type(exc).__name__})"


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
        env[module] = _version(module)
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        env["onnxruntime_providers"] = []
    return env


def run_tests(log: Log, out: Path) -> dict:
    """The GPU-marked tests in a subprocess; counts from the JUnit XML, the output into the log."""
    if not (CHECKOUT / "tests" / "test_gpu.py").is_file():
        log(f"tests skipped: no beit-deploy checkout at {CHECKOUT} (tests/test_gpu.py); run from a clone")
        return {"exit_code": 0, "skipped_all": "no checkout with tests/test_gpu.py"}
    junit = out / "pytest-gpu.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-v", "-rsP", "-p", "no:cacheprovider",
               f"--junitxml={junit}", "tests/test_gpu.py"]
    log("$ " + " ".join(command))
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=CHECKOUT, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"{exc.stdout or ''}{exc.stderr or ''}\nTIMED OUT after {TEST_TIMEOUT_S} s", -1
    for line in (output.decode() if isinstance(output, bytes) else output).splitlines():
        log(line)
    result = {"exit_code": code, "seconds": round(time.perf_counter() - start, 1)}
    if junit.is_file():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        result["skip_reasons"] = sorted({s.get("message", "") for s in suite.iter("skipped")})
    return result


def _time_ms(model, x, iters: int, warmup: int) -> float:
    """Mean milliseconds per forward of `model(x)`, timed with CUDA events after `warmup` runs."""
    import torch

    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            model(x)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def benchmark(log: Log, iters: int = 20, warmup: int = 5) -> dict:
    """Eager vs baked, fp16 on CUDA, beit-base@224 random weights: ms per batch and images/s."""
    import torch

    from ..exporter.bake import bake
    from ..exporter.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec(BENCH_MODEL, random_weights=True))
    baked = bake(loaded.model, (224, 224)).half().cuda().eval()
    eager = loaded.model.half().cuda().eval()
    result = {"model": BENCH_MODEL, "dtype": "float16", "iters": iters, "warmup": warmup,
              "attn_implementation": getattr(loaded.model.config, "_attn_implementation", None), "rows": []}
    with torch.no_grad():
        x = torch.randn(8, 3, 224, 224, device="cuda", dtype=torch.float16)
        a, b = eager(x).logits.float(), baked(x).logits.float()
        result["cosine_baked_vs_eager"] = float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())
    log(f"benchmark {BENCH_MODEL} fp16 (random weights; baked vs eager min cosine "
        f"{result['cosine_baked_vs_eager']:.6f}; eager attention: {result['attn_implementation']})")
    log(f"{'batch':>5} {'eager ms':>9} {'baked ms':>9} {'eager img/s':>11} {'baked img/s':>11} {'speed-up':>8}")
    for batch in BATCHES:
        x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16)
        eager_ms, baked_ms = _time_ms(eager, x, iters, warmup), _time_ms(baked, x, iters, warmup)
        row = {"batch": batch, "eager_ms": round(eager_ms, 3), "baked_ms": round(baked_ms, 3),
               "eager_img_s": round(batch * 1000 / eager_ms, 1), "baked_img_s": round(batch * 1000 / baked_ms, 1)}
        result["rows"].append(row)
        log(f"{batch:>5} {eager_ms:>9.2f} {baked_ms:>9.2f} {row['eager_img_s']:>11.1f} {row['baked_img_s']:>11.1f} "
            f"{eager_ms / baked_ms:>7.2f}x")
    return result


def main() -> int:
    out = Path(os.environ.get("GPU_CHECK_OUT", "gpu-check-out"))
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu-check.log")
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment()}
    log("environment:")
    for key, value in report["environment"].items():
        log(f"  {key}: {value}")
    report["tests"] = run_tests(log, out)
    if report["environment"]["cuda_available"]:
        try:
            report["benchmark"] = benchmark(log)
        except Exception as exc:  # noqa: BLE001 - record it; the tests' results still count
            report["benchmark"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"benchmark failed: {type(exc).__name__}: {exc}")
    else:
        report["benchmark"] = {"skipped": "no CUDA GPU: torch.cuda.is_available() is False"}
        log("benchmark skipped: no CUDA GPU")
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    tests = report["tests"]
    failed = tests["exit_code"] != 0 or tests.get("failures", 0) or tests.get("errors", 0)
    log(f"tests: {tests.get('tests')} run, {tests.get('failures')} failed, {tests.get('errors')} errors, "
        f"{tests.get('skipped')} skipped; results in {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
