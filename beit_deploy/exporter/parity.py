"""Parity of an ONNX graph against the eager transformers model: the figures, and the pass/fail verdict.

Inputs: the sample photos preprocessed by transformers' own `BeitImageProcessorPil` with the export's settings
(as one batch, and the first photo alone), plus seeded random pixels, so batch 1 and batch > 1 both run.
Figures per output: max |diff|, max |diff| / max |ref| ("rel"), mean |diff|, the lowest per-sample cosine
similarity; for classification the top-1 agreement.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core import precisions
from ..core.manifest import Preprocessing, TensorSpec
from ..runtime import answers
from ..runtime.preprocess import DEFAULT_MAX_PIXELS

# The sample photos of a beit-deploy checkout (samples/images); an installed wheel has none.
CHECKOUT_IMAGES = Path(__file__).resolve().parents[2] / "samples" / "images"
NO_PHOTOS = "no sample photos (a checkout's samples/images): pass --images DIR or set BEIT_DEPLOY_IMAGES"

# Per precision, from the precision table (core/precisions.py): the limits `measure` judges a graph by; and the
# bounds of engines whose build loosened their graph's precision (tf32: `build --tf32`).
THRESHOLDS = {p.name: dict(p.thresholds) for p in precisions.PRECISIONS.values()} | {
    name: dict(row["thresholds"]) for name, row in precisions.LOOSENED.items()}


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    rel: float
    mean_abs: float
    cosine: float
    top1: float | None = None  # fraction of samples whose top-1 matches (classification)
    top1_flips: int = 0  # samples whose top-1 differs
    top1_ties: int = 0  # of those, flips where the reference's own top-2 gap is below fp16 resolution


@dataclass(frozen=True)
class Parity:
    precision: str
    samples: int
    outputs: tuple[OutputParity, ...]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"precision": self.precision, "samples": self.samples, "passed": self.passed,
                "thresholds": THRESHOLDS[self.precision], "failures": list(self.failures),
                "outputs": [asdict(o) for o in self.outputs]}

    def summary(self) -> str:
        parts = [f"{o.name}: rel {o.rel:.2e}, cosine {o.cosine:.6f}"
                 + (f", top-1 {o.top1:.0%}" if o.top1 is not None else "") for o in self.outputs]
        return f"{self.precision} vs eager on {self.samples} samples: " + "; ".join(parts) + \
            ("" if self.passed else f" -- FAILED: {'; '.join(self.failures)}")


def sample_images(folder: Path | None = None) -> list[Path]:
    """The photos in `folder`, sorted; default: the folder in $BEIT_DEPLOY_IMAGES, else a checkout's
    samples/images. [] when there is none (callers say NO_PHOTOS and carry on with random inputs)."""
    from ..runtime.preprocess import IMAGE_SUFFIXES

    env = os.environ.get("BEIT_DEPLOY_IMAGES")
    folder = Path(folder) if folder else Path(env) if env else CHECKOUT_IMAGES
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def readable_photos(photos: list[Path], who: str) -> tuple[list[Path], tuple[str, ...]]:
    """(the photos that decode, one line per photo that does not: its ImageError), each said on stderr: a
    crafted or broken photo is that photo's failure, not the check's."""
    from ..core.progress import say
    from ..runtime.preprocess import ImageError, open_image

    good, bad = [], []
    for photo in photos:
        try:
            open_image(photo)
            good.append(photo)
        except ImageError as exc:
            say(f"{who}: leaving out {exc}")
            bad.append(str(exc))
    return good, tuple(bad)


def reference_processor(preprocessing: Preprocessing):
    """transformers' own BeitImageProcessorPil configured with these settings (the ground truth)."""
    from transformers import BeitImageProcessorPil

    p = preprocessing
    return BeitImageProcessorPil(
        size={"height": p.size[0], "width": p.size[1]}, resample=p.resample, rescale_factor=p.rescale_factor,
        image_mean=list(p.image_mean), image_std=list(p.image_std), do_center_crop=p.crop_size is not None,
        crop_size={"height": p.crop_size[0], "width": p.crop_size[1]} if p.crop_size else None)


def reference_pixels(images: list[Path], preprocessing: Preprocessing,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(N, 3, H, W) float32 from transformers' BeitImageProcessorPil with these settings (the ground truth), fed
    each photo as the runner reads it: turned upright by its EXIF orientation (which transformers ignores) and
    refused above `max_pixels`, so a sideways phone photo compares models, not EXIF handling. The one eager-side
    preprocessing: export parity and `verify` both use it."""
    from ..runtime.preprocess import open_image

    upright = [open_image(path, max_pixels=max_pixels)[1] for path in images]
    return np.asarray(reference_processor(preprocessing)(images=upright, return_tensors="np")["pixel_values"],
                      dtype=np.float32)


def eager_outputs(model, names, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    from .bake import eager_kwargs

    extra = eager_kwargs(model, feeds["pixel_values"].shape[2:])
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, **extra)
    return {name: out[name].float().numpy() for name in names}


def measure(precision: str, task: str, refs: list[dict], gots: list[dict]) -> Parity:
    """Compare outputs batch by batch; verdict against THRESHOLDS[precision]."""
    stats, failures = [], []
    for name in refs[0]:
        ref = np.concatenate([r[name].reshape(len(r[name]), -1) for r in refs]).astype(np.float64)
        got = np.concatenate([g[name].reshape(len(g[name]), -1) for g in gots]).astype(np.float64)
        stat = _stats(name, task, ref, got)
        stats.append(stat)
        failures += [f"{name} {metric}: {detail}" for metric, detail in threshold_failures(precision, stat)]
    return Parity(precision, sum(len(r[next(iter(r))]) for r in refs), tuple(stats), tuple(failures))


def _stats(name: str, task: str, ref: np.ndarray, got: np.ndarray) -> OutputParity:
    diff = np.abs(ref - got)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = float(np.min(np.sum(ref * got, axis=1) / np.maximum(norms, 1e-30)))
    top1, flips, ties = answers.of(task).top1_flips(ref, got) or (None, 0, 0)
    return OutputParity(name, float(diff.max()), float(diff.max() / max(np.abs(ref).max(), 1e-30)),
                        float(diff.mean()), cosine, top1, flips, ties)


def threshold_failures(precision: str, s) -> list[tuple[str, str]]:
    """(metric, detail) for every THRESHOLDS[precision] limit that figures `s` (an OutputParity or anything with
    its rel, cosine, top1, top1_flips and top1_ties) break."""
    limits = THRESHOLDS.get(precision, {})
    fails = []
    if "rel" in limits and not s.rel <= limits["rel"]:
        fails.append(("rel", f"{s.rel:.2e} > {limits['rel']:.0e}"))
    if "cosine" in limits and not s.cosine >= limits["cosine"]:
        fails.append(("cosine", f"{s.cosine:.6f} < {limits['cosine']}"))
    # A flip where the reference's own top-2 gap is below fp16's resolution is a tie, not a failure.
    if s.top1 is not None and "top1" in limits and s.top1_flips > s.top1_ties:
        fails.append(("top1", f"differs on {s.top1_flips - s.top1_ties} sample(s) ({s.top1_ties} tie(s) below "
                              "fp16 resolution allowed)"))
    return fails


def parity_feeds(input_specs: list[TensorSpec], pixels: np.ndarray, random: int = 2, seed: int = 0
                 ) -> list[dict[str, np.ndarray]]:
    """Feeds for a parity check: the photos (N, 3, H, W) as one batch and the first alone (batch > 1 and batch 1),
    then one batch of `random` seeded uniform [-1, 1) images (0: none); (B, patches) masks where the graph takes
    them."""
    rng = np.random.default_rng(seed)
    stacks = [pixels, pixels[:1]] if len(pixels) else []
    if random > 0:
        stacks.append(random_feeds(input_specs, random, rng)["pixel_values"])
    return [{"pixel_values": stack, **_masks(input_specs, len(stack), rng)} for stack in stacks]


def random_feeds(input_specs: list[TensorSpec], batch: int, rng: np.random.Generator | int = 0,
                 mask_fraction: float = 0.4) -> dict[str, np.ndarray]:
    """Seeded feeds for `batch` images: pixel values uniform in [-1, 1) (batch, C, H, W) float32, and for a
    bool_masked_pos input (batch, patches) about `mask_fraction` of the patches masked."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    shape = [d for d in input_specs[0].shape[1:]]
    pixels = rng.uniform(-1, 1, size=(batch, *shape)).astype(np.float32)
    return {input_specs[0].name: pixels, **_masks(input_specs, batch, rng, mask_fraction)}


def _masks(input_specs: list[TensorSpec], batch: int, rng: np.random.Generator, fraction: float = 0.4) -> dict:
    return {spec.name: rng.random((batch, spec.shape[1])) < fraction for spec in input_specs[1:]}


def agreement(task: str, ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Decision-level agreement of two outputs with the same shape (batch first), from the task's answer kind
    (runtime/answers.py): classification logits (B, C): "top1" (same argmax) and "top5" (same top-5 set, order
    ignored) as fractions of samples; segmentation logits (B, C, h, w): "pixels", the fraction of label-map pixels
    that agree. Other tasks: {} (features or token logits, judged by the numeric figures)."""
    return answers.of(task).agreement(ref, got)
