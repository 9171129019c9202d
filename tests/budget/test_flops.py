"""FLOPs formulas against XLA's own count of this project's compiled models.

XLA's cost analysis counts a loop body once whatever its trip count, so the models are built with
`scan_layers=False` (each layer compiled separately) for the comparison. The models compute the
full causal score square and mask it, so the formulas are asked for the `causal="full"` convention.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

from arch_compare.budget import forward_flops, training_flops
from arch_compare.budget.flops import inference_flops_per_token
from arch_compare.models import PRESETS, build_model, get_preset

SMALL = {"d_model": 256, "num_heads": 4, "head_dim": 64, "d_ff": 1024, "vocab_size": 2048}
CASES = {  # name: (preset, overrides, input length, target length)
    "gpt2-tiny": ("gpt2-tiny", {}, 0, 128),
    "llama-tiny": ("llama-tiny", {}, 0, 128),
    "t5-tiny": ("t5-tiny", {}, 128, 64),
    "ul2-tiny": ("ul2-tiny", {}, 256, 32),
    "gpt2-small": ("gpt2-tiny", SMALL, 0, 256),
    "llama-small-gqa": ("llama-tiny", {**SMALL, "num_kv_heads": 2}, 0, 256),
    "t5-small": ("t5-tiny", SMALL, 256, 128),
    # inputs 16x longer than targets: cross-attention K/V must scale with the input length
    "ul2-small-long-inputs": ("ul2-tiny", {**SMALL, "num_layers": 3, "num_encoder_layers": 3},
                              512, 32),
}
BATCH = 2


def xla_flops(fn, *args) -> float:
    return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def abstract_batch(cfg, input_length, target_length):
    tokens = lambda length: jax.ShapeDtypeStruct((BATCH, length), jnp.int32)
    if cfg.is_encoder_decoder:
        return {"encoder_input_tokens": tokens(input_length),
                "decoder_input_tokens": tokens(target_length),
                "decoder_target_tokens": tokens(target_length)}
    length = input_length + target_length
    return {"decoder_input_tokens": tokens(length), "decoder_target_tokens": tokens(length)}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_training_step_agree_with_xla(case):
    preset, overrides, input_length, target_length = CASES[case]
    cfg = get_preset(preset, {**overrides, "scan_layers": False})
    model = build_model(cfg)
    params = model.abstract_params()
    batch = abstract_batch(cfg, input_length, target_length)

    def loss(params, batch):
        logits = model.logits(params, batch)
        targets = batch["decoder_target_tokens"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    forward = BATCH * forward_flops(cfg, input_length, target_length, causal="full").total
    step = BATCH * training_flops(cfg, input_length, target_length, causal="full")
    assert xla_flops(model.logits, params, batch) == pytest.approx(forward, rel=0.05)
    assert xla_flops(jax.grad(loss), params, batch) == pytest.approx(step, rel=0.05)


def test_causal_halving_and_remat():
    cfg = PRESETS["llama-7b"]
    full = forward_flops(cfg, 0, 2048, causal="full")
    halved = forward_flops(cfg, 0, 2048)
    assert halved.attention_scores == pytest.approx(full.attention_scores / 2)
    assert halved.mlp == full.mlp and halved.logits == full.logits
    assert training_flops(cfg, 0, 2048, remat=True) == pytest.approx(4 * halved.total)
    # the familiar 6N rule: training FLOPs per token within 10% of 6 x parameters at 2k context
    per_token = training_flops(cfg, 0, 2048) / 2048
    assert per_token == pytest.approx(6 * 6.74e9, rel=0.10)


def test_encoder_decoder_costs_split_by_length():
    cfg = PRESETS["t5.1.1-xxl"]
    long_inputs = forward_flops(cfg, 2048, 64)
    d, inner, layers = cfg.d_model, cfg.num_heads * cfg.head_dim, cfg.num_layers
    # encoder q/k/v/o on 2048 inputs, decoder self q/k/v/o on 64 targets; cross-attention q/o on
    # the 64 targets but k/v on the 2048 encoder states.
    expected = 2 * d * inner * layers * (4 * 2048 + 4 * 64 + 2 * 64 + 2 * 2048)
    assert long_inputs.attention_projections == expected
    assert long_inputs.mlp == 2 * 3 * d * cfg.d_ff * layers * (2048 + 64)
    assert long_inputs.logits == 2 * 64 * cfg.d_model * cfg.vocab_size
    per_token = inference_flops_per_token(cfg, 2048, 64)
    assert per_token == pytest.approx(long_inputs.total / 2112)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="causal"):
        forward_flops(PRESETS["gpt2-tiny"], 0, 8, causal="half")
    with pytest.raises(ValueError, match="target_length"):
        forward_flops(PRESETS["gpt2-tiny"], 0, 0)
