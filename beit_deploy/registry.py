"""The microsoft/beit-* checkpoints: architecture and preprocessing for each, so they can be built offline.

Facts from the hub configs (see shared REFERENCE §1). `config_kwargs()` gives the keyword arguments of a
`transformers.BeitConfig`; `preprocessing()` the image processor settings the checkpoint ships with.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

TASKS = ("classification", "segmentation", "masked-image-modeling", "features")

# transformers class name per task, and back (architectures[0] in config.json).
TASK_CLASSES = {
    "classification": "BeitForImageClassification",
    "segmentation": "BeitForSemanticSegmentation",
    "masked-image-modeling": "BeitForMaskedImageModeling",
    "features": "BeitModel",
}

_SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
_OUT_INDICES = {"base": [3, 5, 7, 11], "large": [7, 11, 15, 23]}

PIL_BILINEAR, PIL_BICUBIC = 2, 3


@dataclass(frozen=True)
class Preprocessing:
    """BEiT image preprocessing: resize to (height, width), rescale, normalise, optional centre crop."""

    size: tuple[int, int]
    resample: int = PIL_BILINEAR
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_size: tuple[int, int] | None = None

    def at_resolution(self, resolution: tuple[int, int]) -> "Preprocessing":
        """The same settings, resizing (or cropping) to an export resolution instead of the native one."""
        if self.crop_size is not None:
            return Preprocessing(self.size, self.resample, self.rescale_factor, self.image_mean, self.image_std,
                                 tuple(resolution))
        return Preprocessing(tuple(resolution), self.resample, self.rescale_factor, self.image_mean, self.image_std)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "resample": self.resample, "rescale_factor": self.rescale_factor,
                "image_mean": list(self.image_mean), "image_std": list(self.image_std),
                "crop_size": list(self.crop_size) if self.crop_size else None}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(tuple(d["size"]), int(d["resample"]), float(d["rescale_factor"]), tuple(d["image_mean"]),
                   tuple(d["image_std"]), tuple(d["crop_size"]) if d.get("crop_size") else None)


@dataclass(frozen=True)
class Checkpoint:
    """One registered checkpoint: `microsoft/<name>` on the hub."""

    name: str
    task: str
    resolution: int
    size: str
    num_labels: int
    resample: int = PIL_BILINEAR

    @property
    def hub_id(self) -> str:
        return f"microsoft/{self.name}"

    @property
    def shared_bias(self) -> bool:
        return self.task == "masked-image-modeling"

    def config_kwargs(self) -> dict:
        """Keyword arguments of `transformers.BeitConfig` for this architecture."""
        kwargs = dict(_SIZES[self.size], image_size=self.resolution, patch_size=16, num_channels=3,
                      hidden_act="gelu", layer_norm_eps=1e-12, use_absolute_position_embeddings=False,
                      use_mean_pooling=True, layer_scale_init_value=0.1,
                      use_relative_position_bias=not self.shared_bias,
                      use_shared_relative_position_bias=self.shared_bias,
                      use_mask_token=self.shared_bias, architectures=[TASK_CLASSES[self.task]])
        if self.task == "masked-image-modeling":
            kwargs["vocab_size"] = self.num_labels
        else:
            kwargs["num_labels"] = self.num_labels
        if self.task == "segmentation":
            from .palette import ADE20K_CLASSES  # the label set of the ADE checkpoints, known without weights

            kwargs.update(out_indices=_OUT_INDICES[self.size], use_auxiliary_head=True,
                          id2label=dict(enumerate(ADE20K_CLASSES)))
        return kwargs

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(size=(self.resolution, self.resolution), resample=self.resample)


CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in [
    Checkpoint("beit-base-patch16-224-pt22k", "masked-image-modeling", 224, "base", 8192),
    Checkpoint("beit-large-patch16-224-pt22k", "masked-image-modeling", 224, "large", 8192),
    Checkpoint("beit-base-patch16-224-pt22k-ft22k", "classification", 224, "base", 21841),
    Checkpoint("beit-large-patch16-224-pt22k-ft22k", "classification", 224, "large", 21841),
    Checkpoint("beit-base-patch16-224", "classification", 224, "base", 1000),
    Checkpoint("beit-base-patch16-384", "classification", 384, "base", 1000),
    Checkpoint("beit-large-patch16-224", "classification", 224, "large", 1000),
    Checkpoint("beit-large-patch16-384", "classification", 384, "large", 1000),
    Checkpoint("beit-large-patch16-512", "classification", 512, "large", 1000),
    # resample=3 (bicubic) for ADE is inferred from the conversion script, not read from the hub.
    Checkpoint("beit-base-finetuned-ade-640-640", "segmentation", 640, "base", 150, PIL_BICUBIC),
    Checkpoint("beit-large-finetuned-ade-640-640", "segmentation", 640, "large", 150, PIL_BICUBIC),
]}


def lookup(name: str) -> Checkpoint | None:
    """The registered checkpoint for a short name or its `microsoft/` hub id, else None."""
    return CHECKPOINTS.get(name.removeprefix("microsoft/"))


def nearest_names(name: str, n: int = 3) -> list[str]:
    """Registered names closest to a mistyped one, best first."""
    return difflib.get_close_matches(name.removeprefix("microsoft/"), list(CHECKPOINTS), n=n, cutoff=0.4)
