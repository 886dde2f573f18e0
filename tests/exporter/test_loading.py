import json
import os
import subprocess
import sys

import pytest
import torch

from beit_deploy.core.errors import ModelLoadError, UsageError
from beit_deploy.exporter.loading import ModelSpec, load_model
from conftest import tiny_model


def test_local_folder_loads_the_saved_weights(tiny_dir):
    folder = tiny_dir("classification")
    loaded = load_model(ModelSpec(str(folder)))
    reference = tiny_model("classification")
    assert loaded.source == "local" and loaded.weights == "pretrained" and loaded.task == "classification"
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.labels[2] == "rocket"
    assert loaded.preprocessing.size == (64, 64) and loaded.preprocessing.resample == 2


def test_local_folder_preprocessing_is_read(tiny_dir):
    loaded = load_model(ModelSpec(str(tiny_dir("segmentation", resample=3))))
    assert loaded.preprocessing.resample == 3 and loaded.task == "segmentation"


@pytest.mark.slow  # builds a full-size beit-base twice
def test_random_weights_are_seeded_and_exercise_every_path():
    a = load_model(ModelSpec("beit-base-patch16-224-pt22k", random_weights=True, seed=3))
    b = load_model(ModelSpec("beit-base-patch16-224-pt22k", random_weights=True, seed=3))
    assert a.weights == "random" and a.task == "masked-image-modeling"
    table = a.model.beit.shared_position_bias.relative_position_bias_table
    assert table.abs().min() > 0 or table.std() > 0.5
    lambdas = a.model.beit.layers[0].lambda_1
    assert not torch.allclose(lambdas, torch.full_like(lambdas, 0.1))
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


def test_unknown_model_suggests_names():
    with pytest.raises(UsageError, match="did you mean beit-base-patch16-224"):
        load_model(ModelSpec("beit-bse-patch16-224"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(ModelSpec(str(tmp_path)))


def test_missing_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_model(ModelSpec(str(tmp_path / "nope")))


def test_not_a_beit_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(UsageError, match="not BEiT"):
        load_model(ModelSpec(str(tmp_path)))


def test_broken_weights(tiny_dir, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_dir("classification"), tmp_path / "broken")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not be loaded.*--random-weights"):
        load_model(ModelSpec(str(folder)))


def test_unreachable_hub_names_the_way_forward(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "beit_deploy", "export", "--model", "beit-base-patch16-224"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--random-weights" in errors[0] and "local folder" in errors[0]
    assert "Traceback" not in result.stderr
