"""data_loader.py for an export folder: feeds for `polygraphy run <folder>/model.onnx --onnxrt
--data-loader-script <folder>/data_loader.py` (and for `polygraphy run ... --trt` on a GPU machine).

The script reads the manifest next to it at run time, so one static text serves every export: nothing of the
export (its model or folder name, which a user chooses) is ever pasted into the code. It needs numpy and
the manifest only; photos are preprocessed with `beit_deploy.preprocess` when beit-deploy is importable (photos
from $BEIT_DEPLOY_IMAGES, else beit-deploy's sample photos), otherwise it says so on stderr and feeds random
inputs only.
"""

from __future__ import annotations

from pathlib import Path

FILENAME = "data_loader.py"

TEMPLATE = '''"""Polygraphy data loader for a BEiT export by beit-deploy: it feeds what manifest.json beside it says.

    polygraphy run model.onnx --onnxrt --data-loader-script data_loader.py

load_data() yields feed dicts: the photos preprocessed as manifest.json says (one batch), then RANDOM batches of
one seeded uniform [-1, 1) image each; bool_masked_pos (about 40 % masked) where the graph takes it.
Photos: the folder in $BEIT_DEPLOY_IMAGES, else beit-deploy's sample photos; they need beit-deploy installed
(its numpy + Pillow preprocessing), without it only random inputs are fed.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RANDOM = int(os.environ.get("BEIT_DEPLOY_RANDOM", "2"))
SEED = 0


def _photos(manifest):
    """(N, 3, H, W) float32 preprocessed photos, or None (with a note on stderr) when there are none."""
    try:
        from beit_deploy.core.manifest import Preprocessing
        from beit_deploy.exporter.parity import sample_images
        from beit_deploy.runtime.preprocess import preprocess
    except ImportError:
        print("data_loader.py: beit-deploy is not importable here, so no photos: feeding random inputs only",
              file=sys.stderr)
        return None
    folder = os.environ.get("BEIT_DEPLOY_IMAGES")
    paths = sample_images(Path(folder) if folder else None)
    if not paths:
        print("data_loader.py: no photos found: feeding random inputs only", file=sys.stderr)
        return None
    return preprocess(paths, Preprocessing.from_dict(manifest["preprocessing"]))


def load_data():
    """Yield {input name: array} feed dicts matching manifest.json's inputs (batch first)."""
    manifest = json.loads((HERE / "manifest.json").read_text())
    inputs = manifest["inputs"]
    rng = np.random.default_rng(SEED)
    stacks = []
    photos = _photos(manifest)
    if photos is not None:
        stacks.append(photos)
    shape = inputs[0]["shape"][1:]
    stacks += [rng.uniform(-1, 1, size=(1, *shape)).astype(np.float32) for _ in range(RANDOM)]
    for stack in stacks:
        feeds = {inputs[0]["name"]: stack}
        for spec in inputs[1:]:
            feeds[spec["name"]] = rng.random((len(stack), spec["shape"][1])) < 0.4
        yield feeds
'''


def write_data_loader(folder: Path, manifest=None) -> Path:
    """Write data_loader.py, always the same text, into export folder `folder`. -> its path. (`manifest` is
    accepted for compatibility and not used: the script reads manifest.json when it runs.)"""
    path = Path(folder) / FILENAME
    path.write_text(TEMPLATE)
    return path
