import pytest
import torch

from beit_deploy.exporter import attention, bake
from conftest import TASKS, tiny_model

RESOLUTIONS = [(64, 64), (96, 96), (80, 48)]  # native, larger square, non-square


def _inputs(model, resolution, batch=3):
    torch.manual_seed(1)
    x = torch.randn(batch, 3, *resolution)
    if type(model).__name__ == "BeitForMaskedImageModeling":
        return x, {"bool_masked_pos": torch.rand(batch, resolution[0] * resolution[1] // 256) < 0.4}
    return x, {}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("mode", [bake.MATERIALISED, bake.GATHERED])
def test_baked_model_matches_the_original(task, resolution, mode):
    model = tiny_model(task)
    baked = bake.bake(model, resolution, mode)
    x, kwargs = _inputs(model, resolution)
    with torch.no_grad():
        ref, got = model(x, **kwargs), baked(x, **kwargs)
    for name in ("logits", "last_hidden_state", "pooler_output"):
        if name in ref and ref[name] is not None:
            err = (ref[name] - got[name]).abs().max() / ref[name].abs().max()
            assert err < 1e-6, (name, float(err))


def test_captured_bias_is_the_shared_plus_per_layer_sum():
    model = tiny_model("features")  # has both a shared and per-layer tables
    biases = bake.capture_biases(model, (80, 48))
    window = (5, 3)
    shared = model.shared_position_bias(window, dim_size=16)
    for layer, bias in zip(model.layers, biases):
        expected = layer.relative_position_bias(window, False, dim_size=16) + shared
        assert bias.shape == (1, 2, 16, 16)
        assert torch.equal(bias, expected)
        assert bias.abs().max() > 0.1  # randomised tables: a missing bias would show


def test_baked_model_without_bias_would_differ():
    """The parity above is meaningful: dropping the bias changes the outputs a lot."""
    model = tiny_model("classification")
    baked = bake.bake(model, (64, 64))
    for layer in baked.beit.layers:
        layer.attention.bias = None
    x, _ = _inputs(model, (64, 64))
    with torch.no_grad():
        ref = model(x).logits
        assert (ref - baked(x).logits).abs().max() / ref.abs().max() > 1e-3  # 10x the fp32 threshold


def test_table_round_trip_is_exact():
    model = tiny_model("classification")
    bias = bake.capture_biases(model, (96, 64))[0]
    index = bake._shared_index(model.config, (96, 64))
    table = attention.table_from_bias(bias, index)
    assert table.shape == ((2 * 6 - 1) * (2 * 4 - 1) + 3, 2)
    assert torch.equal(table[index].reshape(25, 25, 2).permute(2, 0, 1).unsqueeze(0), bias)


@pytest.mark.parametrize("size, bins", [((20, 20), 3), ((20, 20), 6), ((7, 5), (3, 2)), ((6, 6), 1)])
def test_fixed_adaptive_pool_matches_torch(size, bins):
    x = torch.randn(2, 4, *size)
    expected = torch.nn.AdaptiveAvgPool2d(bins)(x)
    assert torch.allclose(bake.FixedAdaptiveAvgPool(size, bins)(x), expected, atol=1e-6)


def test_bias_mode_by_size():
    import transformers

    from beit_deploy.core.registry import lookup

    def config(name):
        return transformers.BeitConfig(**lookup(name).config_kwargs())
    assert bake.choose_bias_mode(config("beit-base-patch16-224"), (224, 224)) == bake.MATERIALISED
    assert bake.choose_bias_mode(config("beit-large-patch16-512"), (512, 512)) == bake.GATHERED
    assert bake.bias_bytes(config("beit-base-patch16-224"), (224, 224)) == 12 * 12 * 197 ** 2 * 4


@pytest.mark.parametrize("resolution", [(64, 64), (96, 80)])
def test_absolute_position_embeddings_like_dit(resolution, tmp_path):
    """microsoft/dit-* style: absolute position embeddings, no relative bias, cls pooling with a final norm."""
    import onnxruntime as ort
    import transformers

    from beit_deploy.exporter import onnx_graph
    from beit_deploy.exporter.loading import random_model
    from conftest import TINY

    config = transformers.BeitConfig(**{**TINY, "use_absolute_position_embeddings": True, "use_mean_pooling": False,
                                        "architectures": ["BeitModel"]})
    model = random_model(transformers.BeitModel, config, 0).eval()
    with torch.no_grad():
        model.embeddings.position_embeddings.normal_()
    baked = bake.bake(model, resolution)
    x, _ = _inputs(model, resolution)
    with torch.no_grad():
        ref, got = model(x, **bake.eager_kwargs(model, resolution)), baked(x)
    assert (ref.last_hidden_state - got.last_hidden_state).abs().max() < 1e-5
    path = onnx_graph.onnx_from_model(baked, "features", resolution, tmp_path / "m.onnx")
    out = ort.InferenceSession(str(path)).run(["pooler_output"], {"pixel_values": x.numpy()})[0]
    assert abs(out - ref.pooler_output.numpy()).max() < 1e-4
    assert bake.eager_kwargs(model, resolution) == ({} if resolution == (64, 64) else {"interpolate_pos_encoding": True})


def test_export_of_a_dit_like_folder_at_another_size(tmp_path):
    import transformers

    from beit_deploy.exporter.pipeline import ExportOptions, export
    from beit_deploy.exporter.loading import ModelSpec, random_model
    from conftest import TINY

    config = transformers.BeitConfig(**{**TINY, "use_absolute_position_embeddings": True,
                                        "architectures": ["BeitForImageClassification"], "num_labels": 4})
    random_model(transformers.BeitForImageClassification, config, 0).save_pretrained(tmp_path / "dit-like")
    result = export(ModelSpec(str(tmp_path / "dit-like")), ExportOptions(resolutions=((96, 80),), out_dir=tmp_path))
    assert result[0].manifest.parity["fp32"]["passed"]
