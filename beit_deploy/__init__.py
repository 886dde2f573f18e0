"""beit-deploy: BEiT from eager PyTorch to production inference, with parity proven at every step.

Importing the package is light: the runner (numpy, Pillow) loads on first use of `BeitTRTRunner` or
`BeitTritonClient`, so that `python -m beit_deploy.bench.gpu_check` reports even on a bare Python; torch,
transformers, TensorRT and tritonclient load only where used.
"""

from .core.errors import BeitDeployError

__version__ = "0.1.0"
__all__ = ["BeitDeployError", "BeitTRTRunner", "BeitTritonClient", "__version__"]


def __getattr__(name: str):
    if name == "BeitTRTRunner":
        from .runtime.runner import BeitTRTRunner

        return BeitTRTRunner
    if name == "BeitTritonClient":
        from .runtime.triton_client import BeitTritonClient

        return BeitTritonClient
    raise AttributeError(f"module 'beit_deploy' has no attribute {name!r}")
