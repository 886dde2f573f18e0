"""Class names known offline: packaged ImageNet-1k/22k lists, the registry's label sets, and exports of a
registered checkpoint with random weights that show names (marked as such) instead of LABEL_n."""

from __future__ import annotations

import pytest

from pathlib import Path

from beit_deploy.core import labels, registry

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_packaged_label_sets():
    one_k, big = labels.label_set("imagenet-1k"), labels.label_set("imagenet-22k")
    assert len(one_k) == 1000 and one_k[0] == "tench, Tinca tinca" and one_k[999].startswith("toilet tissue")
    assert len(big) == 21841 and big[:2] == ("organism, being", "benthos")
    assert labels.synsets("imagenet-1k")[0] == "n01440764"
    with pytest.raises(KeyError):
        labels.label_set("nope")


@pytest.mark.parametrize("name, label_set, first", [
    ("beit-base-patch16-224", "imagenet-1k", "tench, Tinca tinca"),
    ("beit-large-patch16-512", "imagenet-1k", "tench, Tinca tinca"),
    ("beit-base-patch16-224-pt22k-ft22k", "imagenet-22k", "organism, being"),
    ("beit-base-finetuned-ade-640-640", "ade20k", "wall"),
    ("beit-base-patch16-224-pt22k", None, None),
])
def test_every_registered_checkpoint_knows_its_classes(name, label_set, first):
    checkpoint = registry.lookup(name)
    assert checkpoint.label_set == label_set
    names = checkpoint.config_kwargs().get("id2label", {})
    assert (names.get(0) if names else None) == first
    if names:
        assert len(names) == checkpoint.num_labels


def shrunk(monkeypatch):
    monkeypatch.setitem(registry._SIZES, "base", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64))


def test_a_random_weight_export_of_a_registered_classifier_has_imagenet_names(tmp_path, monkeypatch):
    from beit_deploy.exporter.loading import ModelSpec
    from beit_deploy.exporter.pipeline import ExportOptions, export
    from beit_deploy import BeitTRTRunner

    shrunk(monkeypatch)
    result = export(ModelSpec("beit-base-patch16-224", random_weights=True),
                    ExportOptions(resolutions=((32, 32),), out_dir=tmp_path))[0]
    manifest = result.manifest
    assert manifest.labels[0] == "tench, Tinca tinca" and len(manifest.labels) == 1000
    assert manifest.labels_from["set"] == "imagenet-1k" and "random" in manifest.labels_from["note"]
    with BeitTRTRunner(result.folder) as runner:
        top = runner.predict(str(ROOT / "samples/images/rocket.jpg"), top_k=3).to_dict()["top_k"]
    assert not any(entry["label"].startswith("LABEL_") for entry in top)


def test_a_model_without_names_keeps_transformers_placeholders(tiny_dir, tmp_path):
    """A config without id2label: transformers' LABEL_<n>, from the model's config (no labels_from)."""
    import json

    from beit_deploy.exporter.loading import ModelSpec, load_model

    folder = tmp_path / "nameless"
    import shutil

    shutil.copytree(tiny_dir("classification"), folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("id2label"), config.pop("label2id")
    config["num_labels"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(ModelSpec(str(folder), random_weights=True))
    assert loaded.labels == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"} and loaded.labels_from == {}
