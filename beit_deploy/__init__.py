"""beit-deploy: BEiT from eager PyTorch to production inference, with parity proven at every step.

Importing the package is light: the runner (numpy, Pillow, ONNX Runtime) loads on first use of `BeitRunner`,
`BeitTRTRunner` or `BeitTritonClient`, so that `python -m beit_deploy.bench.gpu_check` reports even on a bare
Python; torch, transformers, TensorRT and tritonclient load only where used.
"""

import warnings as _warnings

from .core.errors import BeitDeployError

__version__ = "0.1.0"
__all__ = ["BeitDeployError", "BeitRunner", "BeitTRTRunner", "BeitTritonClient", "__version__"]


def _beit_trt_runner():
    from .runtime.runner import BeitRunner

    class BeitTRTRunner(BeitRunner):
        """The runner's first name (it runs ONNX Runtime graphs as well as TensorRT engines: `BeitRunner`), kept
        working unchanged, with the deprecated `parity()`."""

        def parity(self, images=None, reference=None):
            """Deprecated: `beit_deploy.proof.verify.parity_report(folder)` or `beit-deploy verify FOLDER` give the
            same report. Parity of this runner's export folder against the eager model (needs the export extra)."""
            _warnings.warn("BeitTRTRunner.parity() is deprecated: use beit_deploy.proof.verify.parity_report(folder) "
                           "or `beit-deploy verify FOLDER`", DeprecationWarning, stacklevel=2)
            from .proof.verify import parity_report

            return parity_report(self.path if self.path.is_dir() else self.path.parent, images=images,
                                 reference=reference)

    BeitTRTRunner.__module__, BeitTRTRunner.__qualname__ = __name__, "BeitTRTRunner"
    return BeitTRTRunner


def _runner():
    from .runtime.runner import BeitRunner

    return BeitRunner


def _triton_client():
    from .runtime.triton_client import BeitTritonClient

    return BeitTritonClient


_LAZY = {"BeitRunner": _runner, "BeitTRTRunner": _beit_trt_runner, "BeitTritonClient": _triton_client}


def __getattr__(name: str):
    """The public classes, imported on first use and then kept here (one class object each)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = _LAZY[name]()
    return value
