"""`make gpu-check` (`python -m beit_deploy.bench.gpu_check`): the whole GPU proof from one call, said up front.

Parts, each run only where it can (the first lines of the log say which, and why not the others):
1. environment: GPU, driver, CUDA, packages (core.machine's facts), ONNX Runtime's providers;
2. parity on the device: baked vs eager, fp32 with TF32 off (max rel) and the baked model in fp16 (cosine);
3. the transformers BEiT docs' inference table: eager vs SDPA, batch 1/4/16/32, fp16 (the docs') and fp32, with
   the baked model beside them (seed_tables.py says exactly how each row is timed);
4. the docs' training table: 50 steps, batch 2, 1048x640, eager vs SDPA, fp16 and fp32, baked beside them;
5. tests: `pytest -m "gpu or tensorrt" tests/trt/test_gpu.py` in a subprocess (cut off at TEST_TIMEOUT_S);
6. TensorRT: engines of the same model per attention form this TensorRT parses and per dtype, timed like the
   torch rows with inputs already on the GPU (their memory: torch's peak, which holds the engine's shared
   workspace, plus the engine's own weights, counted as its file size).

With CUDA: microsoft/beit-base-patch16-224's architecture with random weights (no network needed), the docs'
settings. Without CUDA (or without torch): a dry run on CPU through the same code paths with a tiny model and a
few iterations (`seed_tables.DRY_RUN`), the CUDA and TensorRT parts skipped with their reason; `make test` runs
it. Nothing here needs polygraphy, and nothing but the running parts is imported. A part that would start past
the time budget (BUDGET_S, or $GPU_CHECK_BUDGET_S) is skipped, saying so; the TensorRT part checks before each
export, build and batch size.

Always writes gpu-check.log, gpu-check.json (plan, environment, parity, training, inference, tests, tensorrt:
each with its rows or the reason it was skipped; the TensorRT part's real failures under "errors") and, where
tests ran, pytest-gpu.xml to $GPU_CHECK_OUT (default gpu-check-out/). Exit 1 if a test or a parity check
failed, or a part failed unexpectedly (a TensorRT export, build or timing included); exit 2 for a
GPU_CHECK_BUDGET_S that is not a number of seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from ..core.errors import UsageError
from ..core.files import write_atomic

TEST_FILE = Path("tests") / "trt" / "test_gpu.py"
# A part (and in the TensorRT part, an export, build or batch size) that would start after BUDGET_S seconds is
# skipped ($GPU_CHECK_BUDGET_S changes it), so that a call on the docs' settings is meant to fit a 10-minute
# device slot. Not a guarantee: only the tests are cut off (at TEST_TIMEOUT_S); a part started just inside the
# budget runs to its end.
TEST_TIMEOUT_S, BUDGET_S = 300, 420
PARTS = {"parity": "parity on the device (baked vs eager, fp32 and fp16)",
         "inference": "the docs' inference table (eager, SDPA, baked; fp16 and fp32)",
         "training": "the docs' training table (eager, SDPA, baked; fp16 and fp32)",
         "tests": "GPU and TensorRT tests (tests/trt/test_gpu.py)",
         "tensorrt": "TensorRT rows (engines of the same model, each attention form, fp16 and fp32)"}


def budget_s() -> int:
    """The time budget in seconds: $GPU_CHECK_BUDGET_S, else BUDGET_S; UsageError for a value that is not a
    whole number of seconds above 0."""
    text = os.environ.get("GPU_CHECK_BUDGET_S", str(BUDGET_S))
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"GPU_CHECK_BUDGET_S='{text}' is not a whole number of seconds above 0: unset it (the "
                         f"default is {BUDGET_S}) or set e.g. GPU_CHECK_BUDGET_S={BUDGET_S}")
    return value


class Log:
    """Prints lines to stdout and appends them to the log file; knows how long the check has run and whether
    its time budget is spent."""

    def __init__(self, path: Path, budget: int = BUDGET_S):
        self.file = path.open("w")
        self.start = time.perf_counter()
        self.budget = budget

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def budget_spent(self) -> str | None:
        """The reason to skip what would start now, or None while within the budget."""
        spent = self.elapsed()
        return f"time budget ({self.budget} s) spent: {spent:.0f} s in" if spent > self.budget else None


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def environment() -> dict:
    """Machine facts and versions (core.machine), CUDA, GPU, driver and ONNX Runtime's providers."""
    from ..core.machine import machine, module_version

    env: dict = {"machine": machine("cpu"), "cuda_available": False, "torch": None}
    if has_module("torch"):
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if env["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                          "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    env["driver"] = _driver()
    for module in ("tensorrt", "onnxruntime", "polygraphy"):
        env[module] = module_version(module)
    env["onnxruntime_providers"] = _providers()
    return env


def _driver() -> str | None:
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None


def _providers() -> list[str]:
    try:
        import onnxruntime

        return onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        return []


def plan(env: dict, checkout: Path | None) -> dict[str, str | None]:
    """Part -> None (runs here, on the GPU or as the CPU dry run) or the reason it cannot. The log's first lines."""
    torch = None if env.get("torch") else "torch is not installed"
    models = torch or _missing("transformers")
    export = models or _missing("onnx", "onnxscript", "onnx_ir", "onnxruntime")  # the TensorRT rows export first
    cuda = torch or (None if env["cuda_available"] else "no CUDA GPU (torch.cuda.is_available() is False)")
    trt = None if has_module("tensorrt") else "TensorRT is not installed (pip install tensorrt)"
    tests = None if checkout else f"no beit-deploy checkout with {TEST_FILE} here: run from a clone"
    return {"parity": models, "inference": models, "training": models, "tests": tests or models,
            "tensorrt": cuda or trt or export}


def _missing(*modules: str) -> str | None:
    absent = [m for m in modules if not has_module(m)]
    return f"{', '.join(absent)} not installed" if absent else None


def find_checkout() -> Path | None:
    """The beit-deploy checkout whose tests to run: the working directory, else the one this module is in."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (folder / TEST_FILE).is_file():
            return folder
    return None


def run_tests(log: Log, out: Path, checkout: Path) -> dict:
    """The GPU-marked tests in a subprocess; counts from the JUnit XML (an earlier run's is removed first), the
    output into the log (as text)."""
    junit = out / "pytest-gpu.xml"
    junit.unlink(missing_ok=True)  # else a run that dies before writing it would report the earlier counts
    command = [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-v", "-rsP", "-p", "no:cacheprovider",
               f"--junitxml={junit.resolve()}", str(TEST_FILE)]
    log("$ " + " ".join(command))
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = timed_out_output(exc), -1
    for line in output.splitlines():
        log(line)
    return {"exit_code": code, "seconds": round(time.perf_counter() - start, 1), **junit_counts(junit)}


def junit_counts(junit: Path) -> dict:
    """Test counts and skip reasons from pytest's JUnit XML; {"junit": why not} where there is none to read (a
    missing, half-written or empty report)."""
    try:
        root = ElementTree.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    except (OSError, ElementTree.ParseError, AttributeError, ValueError):  # AttributeError: no testsuite
        return {"junit": "no JUnit report: pytest did not finish"}
    return {**counts, "skip_reasons": sorted({s.get("message", "") for s in suite.iter("skipped")})}


def timed_out_output(exc: subprocess.TimeoutExpired) -> str:
    """What a timed-out subprocess printed, as text (TimeoutExpired holds bytes even with text=True)."""
    text = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                   for part in (exc.stdout, exc.stderr) if part)
    return f"{text}\nTIMED OUT after {exc.timeout:.0f} s"


def main() -> int:
    try:
        budget = budget_s()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(os.environ.get("GPU_CHECK_OUT", "gpu-check-out"))
    out.mkdir(parents=True, exist_ok=True)
    with Log(out / "gpu-check.log", budget) as log:
        report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            failed = run(log, out, report)
        except Exception as exc:  # noqa: BLE001 - the report is written whatever happens
            report["error"] = f"{type(exc).__name__}: {exc}"
            log(f"gpu-check failed: {report['error']}")
            failed = True
        finally:
            report["seconds"] = round(log.elapsed(), 1)
            text = json.dumps(report, indent=2) + "\n"
            write_atomic(out / "gpu-check.json", lambda file: file.write(text.encode()))
        log(f"gpu-check: {'FAILED' if failed else 'passed'} in {log.elapsed():.0f} s; log and JSON report in {out}/")
    return 1 if failed else 0


def run(log: Log, out: Path, report: dict) -> bool:
    """Every part into `report` (rows, or the reason it was skipped); True if a test or a parity check failed,
    or a part failed unexpectedly."""
    from . import gpu_parts

    env, checkout = environment(), find_checkout()
    steps = plan(env, checkout)
    report["mode"] = "GPU" if env["cuda_available"] else ("dry run on CPU: a tiny model, a few iterations, the CUDA "
                                                          "and TensorRT parts skipped; its timings mean nothing")
    log(f"gpu-check, {report['mode']}")
    log("what runs on this machine:")
    for part, reason in steps.items():
        log(f"  {'RUNS   ' if reason is None else 'SKIPPED'} {PARTS[part]}" + (f": {reason}" if reason else ""))
    report.update(plan=steps, environment=env)
    log("environment: " + json.dumps(env))
    settings = gpu_parts.settings_for(env["cuda_available"])
    with tempfile.TemporaryDirectory() as work:
        failed = gpu_parts.torch_parts(log, report, steps, settings, Path(work))
        report["tests"] = {"skipped": steps["tests"] or log.budget_spent()}
        if report["tests"]["skipped"] is None:
            report["tests"] = tests = run_tests(log, out, checkout)
            log(f"tests: {tests['junit']}" if "junit" in tests else f"tests: {tests['tests']} run, "
                f"{tests['failures']} failed, {tests['errors']} errors, {tests['skipped']} skipped")
            failed |= bool(tests.get("exit_code") or tests.get("failures") or tests.get("errors"))
        report["tensorrt"] = gpu_parts.part(log, "tensorrt", steps["tensorrt"],
                                            lambda: gpu_parts.tensorrt_rows(log, settings, Path(work)))
        failed |= "error" in report["tensorrt"] or bool(report["tensorrt"].get("errors"))
    gpu_parts.log_tables(log, report, settings)
    return failed


if __name__ == "__main__":
    sys.exit(main())
