"""What a predictor gives per input, and `predict` in terms of `predict_each`: shared by the in-process runner
(BeitRunner) and the Triton client (BeitTritonClient), so code moves between the two without change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..core.errors import BeitDeployError
from .postprocess import Result
from .preprocess import ImageLike, is_batch


@dataclass(frozen=True, eq=False)
class Prediction:
    """One input of `predict_each`: its name and either a result or the error that stopped it. `rgb` is the
    photo as the model saw it before resizing (H, W, 3), for overlays."""

    image: str
    result: Result | None = None
    error: BeitDeployError | None = None
    rgb: np.ndarray | None = field(default=None, repr=False)


class Predictor:
    """Subclasses define `predict_each`; `predict` follows from it."""

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5):
        """One image -> one result; a list -> a list of results (classification: top-k classes; segmentation:
        label map at the image's size; masked image modeling: visual token per patch; features: embedding).
        A bad image raises its error; use `predict_each` to carry on past it."""
        results = []
        for p in self.predict_each(images if is_batch(images) else [images], top_k):
            if p.error is not None:
                raise p.error
            results.append(p.result)
        return results if is_batch(images) else results[0]

    def predict_each(self, images: Sequence[ImageLike], top_k: int = 5, keep_rgb: bool = False
                     ) -> Iterator[Prediction]:
        raise NotImplementedError
