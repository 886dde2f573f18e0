"""beit-deploy: BEiT from eager PyTorch to production inference, with parity proven at every step.

Importing the package is light (numpy, Pillow): torch, transformers, TensorRT and tritonclient load only where used.
"""

import warnings as _warnings

from .core.errors import BeitDeployError
from .runtime.runner import BeitRunner
from .runtime.triton_client import BeitTritonClient

__version__ = "0.1.0"
__all__ = ["BeitDeployError", "BeitRunner", "BeitTRTRunner", "BeitTritonClient", "__version__"]


class BeitTRTRunner(BeitRunner):
    """The runner's first name (it runs ONNX Runtime graphs as well as TensorRT engines: `BeitRunner`), kept
    working unchanged, with the deprecated `parity()`."""

    def parity(self, images=None, reference=None):
        """Deprecated: `beit_deploy.proof.verify.parity_report(folder)` or `beit-deploy verify FOLDER` give the same
        report. Parity of this runner's export folder against the eager model (needs the export extra)."""
        _warnings.warn("BeitTRTRunner.parity() is deprecated: use beit_deploy.proof.verify.parity_report(folder) or "
                       "`beit-deploy verify FOLDER`", DeprecationWarning, stacklevel=2)
        from .proof.verify import parity_report

        return parity_report(self.path if self.path.is_dir() else self.path.parent, images=images,
                             reference=reference)
