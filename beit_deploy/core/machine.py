"""Facts about this machine, said beside every number we measure: CPU model and cores, GPU, OS, Python and
package versions. One place, read by the export (manifest versions), the benchmark, the serving load test and
gpu-check. Standard library only; torch is asked (lazily) for the GPU and its threads where it is installed.
"""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path

# The packages whose versions an artifact records (manifest.versions)
ARTIFACT_PACKAGES = ("beit-deploy", "torch", "transformers", "onnx", "onnxruntime", "onnxscript")
NOT_INSTALLED = "not installed"


def versions(packages=ARTIFACT_PACKAGES) -> dict[str, str]:
    """Installed version of each package (distribution name), or "not installed"."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = NOT_INSTALLED
    return found


def module_version(module: str) -> str:
    """A module's own `__version__` (importing it), or "missing (<why>)": for packages whose distribution name
    varies with the build (tensorrt, tensorrt-cu12, ...)."""
    try:
        return importlib.import_module(module).__version__
    except Exception as exc:  # noqa: BLE001 - report any failure to import as "missing"
        return f"missing ({type(exc).__name__})"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` says."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU flags of a native bf16 matrix unit: Intel AMX tiles, or AVX-512 BF16 dot products (Cooper Lake, Zen 4+)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16() -> str | None:
    """The CPU's native bf16 instruction set ("amx_bf16" or "avx512_bf16", from /proc/cpuinfo), None without.

    Without one, torch emulates bf16 matmuls through fp32 and they run slower than fp32 itself."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return next((flag for flag in BF16_FLAGS if flag in flags), None)
    except OSError:
        pass
    return None


def physical_cores() -> int:
    """Physical cores this process may use (Linux: distinct core ids of the allowed CPUs)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        cores, cpu, phys = set(), None, "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            cpu = int(value) if key == "processor" else cpu
            phys = value if key == "physical id" else phys
            if key == "core id" and cpu in allowed:
                cores.add((phys, value))
        return max(1, len(cores)) if cores else max(1, len(allowed))
    except OSError:
        return max(1, len(allowed))


def machine(device: str = "cpu") -> dict:
    """CPU model and cores, GPU (when measuring on CUDA), OS, Python, package versions and torch's threads."""
    info = {"cpu": cpu_model(), "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "gpu": None,
            "versions": versions(), "torch_threads": None}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info
