import pytest

from arch_compare.models import PRESETS, ModelConfig, get_preset


@pytest.mark.parametrize("change, field", [
    ({"num_kv_heads": 3}, "num_kv_heads"),
    ({"d_model": 0}, "d_model"),
    ({"norm": "batchnorm"}, "norm"),
    ({"mlp_activation": "tanh"}, "mlp_activation"),
    ({"num_encoder_layers": 2}, "num_encoder_layers"),
    ({"position": "relative"}, "position"),
    ({"tie_embeddings": False, "scale_decoder_outputs": True}, "scale_decoder_outputs"),
])
def test_invalid_values_name_their_field(change, field):
    with pytest.raises(ValueError, match=field):
        PRESETS["llama-tiny"].replace(**change)


def test_encoder_decoder_needs_encoder_layers():
    with pytest.raises(ValueError, match="num_encoder_layers"):
        PRESETS["t5-tiny"].replace(num_encoder_layers=0)


def test_config_round_trips_through_dict():
    for config in PRESETS.values():
        assert ModelConfig.from_dict(config.to_dict()) == config


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict({**PRESETS["t5-tiny"].to_dict(), "bogus": 1})


def test_unknown_preset_suggests_close_names():
    with pytest.raises(KeyError, match="llama2-7b"):
        get_preset("llama2-7")
