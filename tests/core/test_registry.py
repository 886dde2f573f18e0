import transformers
from click.testing import CliRunner

from beit_deploy.core import registry
from beit_deploy.cli import main


def test_registry_holds_the_eleven_checkpoints():
    assert len(registry.CHECKPOINTS) == 11
    assert {c.task for c in registry.CHECKPOINTS.values()} == {"classification", "segmentation",
                                                                "masked-image-modeling"}
    assert registry.lookup("microsoft/beit-base-patch16-384").resolution == 384


def test_every_checkpoint_builds_a_beit_config():
    for checkpoint in registry.CHECKPOINTS.values():
        config = transformers.BeitConfig(**checkpoint.config_kwargs())
        assert config.image_size == checkpoint.resolution and config.patch_size == 16
        assert config.use_shared_relative_position_bias == (checkpoint.task == "masked-image-modeling")
        assert config.use_relative_position_bias != config.use_shared_relative_position_bias
        labels = config.vocab_size if checkpoint.task == "masked-image-modeling" else config.num_labels
        assert labels == checkpoint.num_labels
    ade = transformers.BeitConfig(**registry.lookup("beit-large-finetuned-ade-640-640").config_kwargs())
    assert ade.out_indices == [7, 11, 15, 23] and ade.num_hidden_layers == 24


def test_nearest_names_for_typos():
    assert registry.nearest_names("beit-bse-patch16-224")[0] == "beit-base-patch16-224"
    assert registry.nearest_names("zzzz") == []


def test_models_command_lists_them():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    for name in registry.CHECKPOINTS:
        assert name in result.output
    assert "segmentation" in result.output and "21841" in result.output


def test_ade_checkpoints_know_their_labels():
    from beit_deploy.runtime.palette import is_ade

    config = transformers.BeitConfig(**registry.lookup("beit-base-finetuned-ade-640-640").config_kwargs())
    assert config.num_labels == 150 and is_ade(config.id2label)
    assert config.id2label[12] == "person"
