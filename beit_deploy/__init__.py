"""beit-deploy: BEiT from eager PyTorch to production inference, with parity proven at every step.

Importing the package is light (numpy, Pillow): torch, transformers and TensorRT load only where used.
"""

from .core.errors import BeitDeployError
from .runtime.runner import BeitTRTRunner

__version__ = "0.1.0"
__all__ = ["BeitDeployError", "BeitTRTRunner", "__version__"]
