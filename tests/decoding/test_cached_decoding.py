"""KV-cached decoding computes what the uncached model computes, for every tiny preset.

The reference is `model.logits` re-run on each example's whole prefix (no cache, no left padding);
prompts of different lengths share one batch on the cached side.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from arch_compare.decoding.search import DecodeConfig, generate, left_pad
from arch_compare.models import PRESETS, build_model
from arch_compare.models.zoo import TINY_PRESETS

PROMPTS = [[17, 301, 45, 9, 260, 88, 3], [120, 7], [64, 400, 5, 31]]  # lengths 7, 2, 4
NUM_STEPS = 8
# Logits here are O(10); float32 rounding differs between the two paths by up to 1.5e-4 (T5's
# unscaled attention, measured), while a one-slot position or mask error moves them by O(1).
TOLERANCE = 5e-4


@functools.cache
def lively_model(name: str):
    """A tiny preset with every weight drawn at random (norm scales near 1), as the HF references
    do: the library's careful initialisation makes near-constant outputs, which would test
    little."""
    model = build_model(PRESETS[name])
    rng = np.random.default_rng(0)
    shapes = traverse_util.flatten_dict(model.abstract_params(), sep="/")
    drawn = {path: jnp.asarray((1.0 if path.endswith("norm/scale") else 0.0)
                               + 0.3 * rng.standard_normal(shape.shape), shape.dtype)
             for path, shape in sorted(shapes.items())}
    return model, traverse_util.unflatten_dict(drawn, sep="/")


@functools.cache
def jitted(model):
    """One compiled copy per model of the functions the tests call directly."""
    return (jax.jit(model.logits), jax.jit(model.prefill, static_argnums=3),
            jax.jit(model.decode_step))


def uncached_logits(model, params, prompts, continuations):
    """Uncached logits [b, m + 1, v] predicting each of the m continuation tokens and the one
    after: decoder-only reads prompt + continuation, encoder-decoder encodes the prompt and
    reads start + continuation. Rows are right-padded into one batch; causal attention keeps
    padding after a position from changing it, and the encoder masks its padding (id 0)."""
    batch_size, steps = continuations.shape
    longest = max(map(len, prompts))
    if model.config.is_encoder_decoder:
        inputs = np.zeros((batch_size, longest), np.int32)
        for row, prompt in enumerate(prompts):
            inputs[row, :len(prompt)] = prompt
        start = np.full((batch_size, 1), model.config.decoder_start_id)
        batch = {"encoder_input_tokens": inputs,
                 "decoder_input_tokens": np.concatenate([start, continuations], axis=1)}
        first = np.zeros(batch_size, np.int64)
    else:
        tokens = np.zeros((batch_size, longest + steps), np.int32)
        for row, prompt in enumerate(prompts):
            tokens[row, :len(prompt) + steps] = [*prompt, *continuations[row]]
        batch = {"decoder_input_tokens": tokens}
        first = np.array([len(prompt) - 1 for prompt in prompts])
    logits = np.asarray(jitted(model)[0](params, batch))
    return logits[np.arange(batch_size)[:, None], first[:, None] + np.arange(steps + 1)]


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_decode_steps_match_the_uncached_forward_pass(name):
    """prefill + decode_step (teacher-forced with fixed tokens) give the uncached logits at every
    step, for rows with different prompt lengths in one left-padded batch."""
    model, params = lively_model(name)
    _, prefill, step = jitted(model)
    prompts, lengths = left_pad(PROMPTS, None, model.config.vocab_size)
    continuations = np.random.default_rng(0).integers(2, 500, size=(len(PROMPTS), NUM_STEPS))

    logits, cache = prefill(params, prompts, lengths, NUM_STEPS)
    cached = [logits]
    for column in continuations.T:
        logits, cache = step(params, cache, jnp.asarray(column, jnp.int32))
        cached.append(logits)

    assert int(cache.index) == cache.num_slots  # every slot used, none overwritten
    expected = uncached_logits(model, params, PROMPTS, continuations)
    np.testing.assert_allclose(np.stack(cached, axis=1), expected, atol=TOLERANCE)


def uncached_greedy(model, params, prompts, num_tokens):
    """Greedy decoding by re-running `model.logits` on each whole prefix -> (tokens [b, n],
    summed log-probabilities [b])."""
    chosen = np.zeros((len(prompts), num_tokens), np.int32)
    log_prob = np.zeros(len(prompts))
    for step in range(num_tokens):
        # Tokens not chosen yet sit after the position read, so they cannot affect it.
        logits = uncached_logits(model, params, prompts, chosen[:, :-1])[:, step]  # [b, v]
        chosen[:, step] = logits.argmax(axis=-1)
        log_prob += np.take_along_axis(jax.nn.log_softmax(logits), chosen[:, step, None], 1)[:, 0]
    return chosen, log_prob


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_cached_greedy_equals_uncached_greedy(name):
    model, params = lively_model(name)
    num_tokens = NUM_STEPS + 1  # the teacher-forced test's shapes: one compiled model.logits
    config = DecodeConfig(max_new_tokens=num_tokens, ignore_eos=True, length_penalty=0.0)
    out = generate(model, params, PROMPTS, config)
    expected_tokens, expected_log_prob = uncached_greedy(model, params, PROMPTS, num_tokens)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected_tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths), [num_tokens] * len(PROMPTS))
    # length_penalty 0: the score is the plain sum of the chosen tokens' log-probabilities.
    np.testing.assert_allclose(np.asarray(out.scores), expected_log_prob, atol=TOLERANCE)
    assert len(np.unique(expected_tokens)) > 3  # the decoded text is not one repeated token


def test_padded_array_prompts_equal_list_prompts():
    model, params = lively_model("llama-tiny")
    right_padded = np.zeros((3, 9), np.int32)  # seqio's layout: real tokens first
    for row, prompt in enumerate(PROMPTS):
        right_padded[row, :len(prompt)] = prompt
    config = DecodeConfig(max_new_tokens=NUM_STEPS + 1, ignore_eos=True)
    from_lists = generate(model, params, PROMPTS, config)
    from_array = generate(model, params, right_padded, config, lengths=[7, 2, 4])
    np.testing.assert_array_equal(from_array.tokens, from_lists.tokens)


def test_encoder_runs_once_and_cross_attention_is_cached():
    """The decode step reads the encoder only through the cache: its cross-attention
    keys/values are projected at prefill, left untouched by steps, and actually used."""
    model, params = lively_model("t5-tiny")
    _, prefill, step = jitted(model)
    prompts, lengths = left_pad(PROMPTS, None, model.config.vocab_size)
    logits, cache = prefill(params, prompts, lengths, NUM_STEPS)
    cross = cache.layers.cross_attention
    cfg = model.config
    assert cross.key.shape == (cfg.num_layers, 3, cfg.num_kv_heads, 7, cfg.head_dim)
    tokens = jnp.argmax(logits, axis=-1)
    step_logits, stepped = step(params, cache, tokens)
    np.testing.assert_array_equal(stepped.layers.cross_attention.key, cross.key)
    zeroed = dataclasses.replace(cross, key=jnp.zeros_like(cross.key))
    changed, _ = step(params, dataclasses.replace(
        cache, layers=dataclasses.replace(cache.layers, cross_attention=zeroed)), tokens)
    assert np.abs(np.asarray(changed) - np.asarray(step_logits)).max() > 1e-3


def test_learned_positions_must_cover_prompt_and_new_tokens():
    model, params = lively_model("gpt2-tiny")  # max_length 256
    with pytest.raises(ValueError, match="max_length"):
        generate(model, params, [[5] * 250], DecodeConfig(max_new_tokens=8))


def test_unrolled_layers_decode_like_scanned_layers():
    """The cache's leading layers axis works without the layer scan too (cross-attention
    keys/values included)."""
    model, params = lively_model("ul2-tiny")
    unrolled = build_model(PRESETS["ul2-tiny"].replace(scan_layers=False))
    config = DecodeConfig(max_new_tokens=NUM_STEPS + 1, ignore_eos=True)
    np.testing.assert_array_equal(generate(unrolled, params, PROMPTS, config).tokens,
                                  generate(model, params, PROMPTS, config).tokens)
