"""Shared fixtures: tiny BEiT models with randomised bias tables and layer scales, saved and exported.

Tiny means 4 layers, hidden 32, 2 heads, 64x64 native: every code path of the real models, in seconds.
Models are written with `save_pretrained` so tests go through the real loading code.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=16, layer_scale_init_value=0.1, use_mean_pooling=True, hidden_act="gelu",
            use_absolute_position_embeddings=False, out_indices=[1, 2, 3, 4], pool_scales=[1, 2, 3, 6],
            initializer_range=0.1)  # larger than HF's 0.02 so attention (and its bias) matters
TASK_CONFIG = {
    "classification": dict(architectures=["BeitForImageClassification"], use_relative_position_bias=True,
                           id2label={0: "cat", 1: "dog", 2: "rocket", 3: "coffee", 4: "camera"}),
    "segmentation": dict(architectures=["BeitForSemanticSegmentation"], use_relative_position_bias=True,
                         use_auxiliary_head=True, id2label={i: f"class{i}" for i in range(5)}),
    "masked-image-modeling": dict(architectures=["BeitForMaskedImageModeling"], vocab_size=50,
                                  use_shared_relative_position_bias=True, use_mask_token=True),
    # both bias kinds at once: transformers sums them
    "features": dict(architectures=["BeitModel"], use_relative_position_bias=True,
                     use_shared_relative_position_bias=True),
}
TASKS = tuple(TASK_CONFIG)


def tiny_model(task: str, seed: int = 0):
    """An eager tiny model for `task` with non-zero bias tables and layer scales."""
    import transformers

    from beit_deploy.exporter.loading import model_class, random_model

    config = transformers.BeitConfig(**TINY, **TASK_CONFIG[task])
    return random_model(model_class(task), config, seed).eval()


def save_tiny(folder: Path, task: str, resample: int = 2, seed: int = 0) -> Path:
    """A save_pretrained folder (config, safetensors weights, preprocessor config) of a tiny model."""
    from transformers import BeitImageProcessorPil

    tiny_model(task, seed).save_pretrained(folder)
    BeitImageProcessorPil(size={"height": 64, "width": 64}, resample=resample, image_mean=[0.5] * 3,
                          image_std=[0.5] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny_dir(task) -> save_pretrained folder of that task's tiny model (cached per session)."""
    @functools.cache
    def make(task: str, resample: int = 2) -> Path:
        return save_tiny(tmp_path_factory.mktemp(f"tiny-{task}-{resample}") / f"tiny-{task}", task, resample)
    return make


@pytest.fixture(scope="session")
def tiny_export(tiny_dir, tmp_path_factory):
    """tiny_export(task, resolution=(64, 64), fp16=False) -> resolution folder of an export (cached)."""
    from beit_deploy.exporter.pipeline import ExportOptions, export
    from beit_deploy.exporter.loading import ModelSpec

    @functools.cache
    def make(task: str, resolution: tuple[int, int] = (64, 64), fp16: bool = False, resample: int = 2) -> Path:
        out = tmp_path_factory.mktemp("export")
        options = ExportOptions(resolutions=(resolution,), fp16=fp16, out_dir=out)
        return export(ModelSpec(str(tiny_dir(task, resample))), options)[0].folder
    return make
