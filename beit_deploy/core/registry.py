"""The microsoft/beit-* checkpoints: architecture and preprocessing for each, so they can be built offline.

Facts read from the hub configs: all are patch 16, exact GELU, layer_norm_eps 1e-12, mean pooling, layer scale
0.1, mean = std = 0.5. `config_kwargs()` gives the keyword arguments of a `transformers.BeitConfig`;
`preprocessing()` the image processor settings the checkpoint ships with.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .labels import label_set as packaged_label_set
from .manifest import PIL_BICUBIC, PIL_BILINEAR, Preprocessing
from .tasks import TASKS

_SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
_OUT_INDICES = {"base": [3, 5, 7, 11], "large": [7, 11, 15, 23]}


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
        """Pre-training checkpoints (masked image modeling) share one bias table and have a mask token."""
        return TASKS[self.task].takes_mask

    @property
    def label_set(self) -> str | None:
        """The name of the classes this checkpoint scores (None: it has no class names)."""
        if TASKS[self.task].decoder:
            return "ade20k"
        if TASKS[self.task].has_labels:
            return {1000: "imagenet-1k", 21841: "imagenet-22k"}.get(self.num_labels)
        return None

    def label_names(self) -> tuple[str, ...]:
        """Its class names in class order, known offline (core.labels); () when it has none."""
        if self.label_set == "ade20k":
            return ADE20K_CLASSES
        return packaged_label_set(self.label_set) if self.label_set else ()

    def config_kwargs(self) -> dict:
        """Keyword arguments of `transformers.BeitConfig` for this architecture."""
        kwargs = dict(_SIZES[self.size], image_size=self.resolution, patch_size=16, num_channels=3,
                      hidden_act="gelu", layer_norm_eps=1e-12, use_absolute_position_embeddings=False,
                      use_mean_pooling=True, layer_scale_init_value=0.1,
                      use_relative_position_bias=not self.shared_bias,
                      use_shared_relative_position_bias=self.shared_bias,
                      use_mask_token=self.shared_bias, architectures=[TASKS[self.task].model_class])
        kwargs[TASKS[self.task].head_size_key] = self.num_labels
        if self.label_set:  # the classes are known without weights (ImageNet-1k/22k, ADE20K)
            kwargs["id2label"] = dict(enumerate(self.label_names()))
        if TASKS[self.task].decoder:
            kwargs.update(out_indices=_OUT_INDICES[self.size], use_auxiliary_head=True)
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


# The 150 ADE20K classes in the order the microsoft/beit-*-finetuned-ade-640-640 checkpoints score them.
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
    'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)
