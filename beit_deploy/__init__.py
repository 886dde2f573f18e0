"""beit-deploy: BEiT from eager PyTorch to production inference, with parity proven at every step.

Importing the package is light (numpy, Pillow): torch, transformers, TensorRT and tritonclient load only where used.
"""

from .core.errors import BeitDeployError
from .runtime.runner import BeitTRTRunner
from .runtime.triton_client import BeitTritonClient

__version__ = "0.1.0"
__all__ = ["BeitDeployError", "BeitTRTRunner", "BeitTritonClient", "__version__"]
