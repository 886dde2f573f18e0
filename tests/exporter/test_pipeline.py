import json

import pytest

from beit_deploy.exporter import parity
from beit_deploy.core.errors import ParityError, UsageError
from beit_deploy.exporter.pipeline import ExportOptions, check_resolution, export, parse_resolution
from beit_deploy.exporter.loading import ModelSpec
from beit_deploy.core.manifest import read_manifest
from conftest import TASKS


@pytest.mark.parametrize("task", TASKS)
def test_manifest_describes_the_export(task, tiny_export):
    folder = tiny_export(task, (80, 48), fp16=True)
    manifest = read_manifest(folder)
    raw = json.loads((folder / "manifest.json").read_text())
    for key in ("model", "source", "weights", "task", "resolution", "inputs", "outputs", "preprocessing",
                "labels", "artifacts", "parity", "versions"):
        assert key in raw, key
    assert manifest.task == task and manifest.resolution == (80, 48)
    assert manifest.weights["kind"] == "pretrained" and manifest.weights["seed"] is None
    assert manifest.source["kind"] == "local"
    assert len(manifest.weights["sha256"]) == 64 and manifest.runs[-1]["artifacts"] == list(manifest.artifacts)
    assert manifest.artifacts == {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}
    assert all((folder / f).is_file() for f in manifest.artifacts.values())
    assert manifest.inputs[0].shape == ("batch", 3, 80, 48)
    assert manifest.preprocessing.size == (80, 48)
    assert all(manifest.parity[p]["passed"] for p in ("fp32", "fp16"))
    assert manifest.parity["fp32"]["outputs"][0]["rel"] <= 1e-4
    assert manifest.parity["fp16"]["outputs"][0]["cosine"] >= 0.999
    assert manifest.parity["fp32"]["samples"] == 5 + 1 + 2  # photos, first photo alone, random
    assert set(raw["versions"]) >= {"torch", "transformers", "onnx", "onnxruntime", "beit-deploy"}


def test_expected_outputs_per_task(tiny_export):
    shapes = {t: {o.name: o.shape for o in read_manifest(tiny_export(t, (80, 48), fp16=True)).outputs}
              for t in TASKS}
    assert shapes["classification"] == {"logits": ("batch", 5)}
    assert shapes["segmentation"] == {"logits": ("batch", 5, 20, 12)}  # 1/4 resolution
    assert shapes["masked-image-modeling"] == {"logits": ("batch", 15, 50)}
    assert shapes["features"] == {"last_hidden_state": ("batch", 16, 32), "pooler_output": ("batch", 32)}
    mim = read_manifest(tiny_export("masked-image-modeling", (80, 48), fp16=True))
    assert [i.name for i in mim.inputs] == ["pixel_values", "bool_masked_pos"]


def test_random_weights_are_recorded(tmp_path, monkeypatch):
    from beit_deploy.core import registry

    # the registered beit-base architecture, shrunk: the same path (registry -> seeded random weights), in 1 s
    monkeypatch.setitem(registry._SIZES, "base", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64))
    results = export(ModelSpec("beit-base-patch16-224", random_weights=True, seed=7),
                     ExportOptions(resolutions=((32, 32),), out_dir=tmp_path))
    manifest = results[0].manifest
    assert {k: manifest.weights[k] for k in ("kind", "seed")} == {"kind": "random", "seed": 7}
    assert manifest.source == {"kind": "registry", "model": "beit-base-patch16-224"}
    assert results[0].folder == tmp_path / "beit-base-patch16-224" / "32x32"


def test_several_resolutions_give_one_folder_each(tiny_dir, tmp_path):
    results = export(ModelSpec(str(tiny_dir("classification"))),
                     ExportOptions(resolutions=((64, 64), (32, 96)), out_dir=tmp_path))
    assert sorted(p.name for p in (tmp_path / "tiny-classification").iterdir()) == ["32x96", "64x64"]
    assert [r.manifest.resolution for r in results] == [(64, 64), (32, 96)]


def test_failed_export_leaves_nothing_and_keeps_the_earlier_one(tiny_dir, tmp_path, monkeypatch):
    spec, options = ModelSpec(str(tiny_dir("classification"))), ExportOptions(out_dir=tmp_path)
    folder = export(spec, options)[0].folder
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setitem(parity.THRESHOLDS, "fp32", {"rel": 0.0})  # nothing can pass
    with pytest.raises(ParityError, match="nothing was written"):
        export(spec, options)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == ["64x64"]  # no temporary folders left
    with pytest.raises(ParityError):
        export(spec, ExportOptions(out_dir=tmp_path / "fresh"))
    assert not (tmp_path / "fresh" / "tiny-classification").exists()


@pytest.mark.parametrize("text, expected", [("224", (224, 224)), ("320x192", (320, 192)), (" 64X32 ", (64, 32))])
def test_parse_resolution(text, expected):
    assert parse_resolution(text) == expected


@pytest.mark.parametrize("text", ["abc", "224x", "-16", "16x16x16", ""])
def test_parse_resolution_rejects(text):
    with pytest.raises(UsageError, match="not N or HxW"):
        parse_resolution(text)


@pytest.mark.parametrize("resolution", [(100, 100), (0, 16), (224, 200)])
def test_resolution_must_be_whole_patches(resolution):
    with pytest.raises(UsageError, match="multiples of 16"):
        check_resolution(resolution, 16)
