"""Class names known offline for the registered checkpoints, so random-weight exports show names, not LABEL_n.

transformers names class n `LABEL_n` when a config has no `id2label`; a random-weight export of a registered
checkpoint has no hub config to read them from, so they come from here: ImageNet-1k for the classifiers
fine-tuned on it, ImageNet-22k for the in22k ones, ADE20K for segmentation (`registry.ADE20K_CLASSES`).
"""

# Provenance of label_sets/*.tsv.gz: made from timm 1.0.31 (PyPI, Apache-2.0), timm/data/_info/
# imagenet_synsets.txt (1,000 WordNet synsets in the order of the ImageNet-1k classifiers) and
# imagenet22k_synsets.txt (21,841 synsets, the fall11 order the BEiT in22k checkpoints score; timm's
# 'imagenet-22k'), each with its lemmas from imagenet_synset_to_lemma.txt (WordNet); one "synset<TAB>names"
# line per class, in class order, gzip-compressed with mtime 0. They match the names of the checkpoints'
# hub configs (transformers' imagenet-1k / imagenet-22k id2label files: "tench, Tinca tinca", "organism, being").

from __future__ import annotations

import functools
import gzip
from importlib import resources

LABEL_SETS = {"imagenet-1k": 1000, "imagenet-22k": 21841}


@functools.cache
def label_set(name: str) -> tuple[str, ...]:
    """The class names of a packaged label set, in class order."""
    if name not in LABEL_SETS:
        raise KeyError(f"no label set {name!r} (known: {', '.join(LABEL_SETS)})")
    data = (resources.files(__package__) / "label_sets" / f"{name}.tsv.gz").read_bytes()
    names = tuple(line.split("\t", 1)[1] for line in gzip.decompress(data).decode().splitlines())
    if len(names) != LABEL_SETS[name]:
        raise ValueError(f"label set {name} holds {len(names)} names, not {LABEL_SETS[name]}: reinstall beit-deploy")
    return names


def synsets(name: str) -> tuple[str, ...]:
    """The WordNet synset ids (n01440764, ...) of a packaged label set, in class order."""
    data = (resources.files(__package__) / "label_sets" / f"{name}.tsv.gz").read_bytes()
    return tuple(line.split("\t", 1)[0] for line in gzip.decompress(data).decode().splitlines())
