"""Sampling, beam search and scoring on tiny random models of both architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_compare.decoding import placement, search
from arch_compare.decoding.config import DecodeConfig
from arch_compare.decoding.sampling import TOKEN_CHOICES, filter_logits
from arch_compare.decoding.search import generate, score
from tests.decoding.test_cached_decoding import (NUM_STEPS, PROMPTS, jitted, lively_model,
                                                 uncached_logits)

# The cached-decoding tests' shapes, so programs compiled there are reused here.
NUM_TOKENS = NUM_STEPS + 1
MODELS = ["llama-tiny", "ul2-tiny"]  # one per architecture (t5-tiny's outputs barely vary)
BEAMS = 4


def run(name, **decode):
    model, params = lively_model(name)
    out = generate(model, params, PROMPTS, DecodeConfig(max_new_tokens=NUM_TOKENS, **decode))
    return tuple(np.asarray(value) for value in out)


# A handcrafted next-token distribution: probabilities 0.5, 0.3, 0.1, 0.06, 0.04.
PROBS = np.array([0.5, 0.3, 0.1, 0.06, 0.04])
LOGITS = jnp.log(jnp.asarray(PROBS, jnp.float32))[None]  # [1, 5]


@pytest.mark.parametrize("settings, allowed", [
    (dict(top_k=2), {0, 1}),
    (dict(top_k=4), {0, 1, 2, 3}),
    (dict(top_p=0.7), {0, 1}),  # 0.5 < 0.7 before token 1; 0.8 >= 0.7 before token 2
    (dict(top_p=0.85), {0, 1, 2}),
    (dict(top_p=0.3), {0}),  # the most likely token always stays
    # top-k first, then top-p over the renormalised rest (transformers' order): within the top
    # 3 the mass before token 2 is 0.8 / 0.9 = 0.89, so p = 0.85 drops it here.
    (dict(top_k=3, top_p=0.85), {0, 1}),
    (dict(top_k=3, top_p=0.9), {0, 1, 2}),
    (dict(temperature=0.5, top_k=3), {0, 1, 2}),
])
def test_filters_keep_exactly_the_allowed_tokens(settings, allowed):
    knobs = DecodeConfig(max_new_tokens=1, method="sample", **settings).knobs(model_eos_id=0)
    filtered = np.asarray(filter_logits(LOGITS, knobs))[0]
    assert set(np.flatnonzero(np.isfinite(filtered))) == allowed
    # What is kept keeps its tempered relative probabilities.
    kept = sorted(allowed)
    tempered = PROBS[kept] ** (1 / settings.get("temperature", 1.0))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(filtered))[kept],
                               tempered / tempered.sum(), rtol=1e-5)

    # And sampling never leaves the allowed set (while reaching all of it).
    sample = TOKEN_CHOICES["sample"]
    draws = sample(jnp.broadcast_to(LOGITS, (4000, 5)), jax.random.key(0), knobs)
    assert set(np.unique(draws).tolist()) == allowed


@pytest.mark.parametrize("name", MODELS)
def test_top_k_one_sampling_equals_greedy(name):
    greedy = run(name, ignore_eos=True)
    sampled = run(name, method="sample", top_k=1, temperature=0.7, seed=5, ignore_eos=True)
    np.testing.assert_array_equal(sampled[0], greedy[0])


def test_same_seed_same_samples_other_seed_other_samples():
    first = run("llama-tiny", method="sample", seed=11, ignore_eos=True)
    again = run("llama-tiny", method="sample", seed=11, ignore_eos=True)
    other = run("llama-tiny", method="sample", seed=12, ignore_eos=True)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], run("llama-tiny", ignore_eos=True)[0])  # not greedy


def test_search_compiles_once_per_shape():
    """Seeds and sampling settings are arrays in the compiled program, not constants."""
    model, _ = lively_model("llama-tiny")
    for seed, temperature, top_p in [(1, 0.5, 0.9), (2, 1.5, 1.0), (3, 1.0, 0.5)]:
        run("llama-tiny", method="sample", seed=seed, temperature=temperature, top_p=top_p)
    program = search._compiled(model, ("generate", DecodeConfig(NUM_TOKENS, method="sample")),
                               placement.single_device_mesh())
    assert program._cache_size() == 1


@pytest.mark.parametrize("name", MODELS)
def test_one_beam_equals_greedy(name):
    np.testing.assert_array_equal(run(name, method="beam", ignore_eos=True)[0],
                                  run(name, ignore_eos=True)[0])
    # With EOS: without a length penalty a finished hypothesis beats every longer one it
    # outranked, so one beam stops where greedy does.
    eos_id = int(run(name, ignore_eos=True)[0][0, 2])
    beam = run(name, method="beam", eos_id=eos_id, length_penalty=0.0)
    greedy = run(name, eos_id=eos_id, length_penalty=0.0)
    for got, want in zip(beam, greedy):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert greedy[1][0] <= 3


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_scores_at_least_greedy(name, alpha):
    """Not a theorem of beam search, but expected on any ordinary model; the scores are the
    same length-normalised sums, so a lower beam score would mean a broken search."""
    eos_id = int(run(name, ignore_eos=True)[0][1, 4])  # let some hypotheses finish early
    greedy = run(name, eos_id=eos_id, length_penalty=alpha)
    beam = run(name, method="beam", num_beams=BEAMS, eos_id=eos_id, length_penalty=alpha)
    assert np.all(beam[2] >= greedy[2] - 1e-5), (beam[2], greedy[2])
    assert np.any(beam[2] > greedy[2] + 1e-3)  # and the search does find better sequences


@pytest.mark.parametrize("method, extra", [("greedy", {}), ("beam", {"num_beams": BEAMS})])
def test_eos_stops_a_sequence_and_pads_after_it(method, extra):
    model, _ = lively_model("ul2-tiny")
    eos_id = int(run("ul2-tiny", ignore_eos=True)[0][0, 2])
    tokens, lengths, _ = run("ul2-tiny", method=method, eos_id=eos_id, length_penalty=0.0,
                             **extra)
    assert np.any(lengths < NUM_TOKENS)
    for row, length in zip(tokens, lengths):
        assert eos_id not in row[:length - 1]
        if length < NUM_TOKENS:
            assert row[length - 1] == eos_id
            assert np.all(row[length:] == model.config.pad_id)


@pytest.mark.parametrize("name", MODELS)
def test_beam_score_is_the_normalised_log_probability_of_its_tokens(name):
    """Re-score the beam's output with the uncached model: same number, so the search's
    bookkeeping (parents, cache reordering, lengths) is consistent."""
    alpha = 0.7
    model, params = lively_model(name)
    tokens, lengths, scores = run(name, method="beam", num_beams=BEAMS, length_penalty=alpha,
                                  ignore_eos=True)
    logits = uncached_logits(model, params, PROMPTS, tokens[:, :-1])  # [b, n, v]: predict tokens
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    picked = np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]  # [b, n]
    np.testing.assert_allclose(scores, picked.sum(-1) / lengths ** alpha, atol=1e-4)


def independent_score(logits, targets, weights):
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return (picked * weights).sum(-1)


@pytest.mark.parametrize("name", ["gpt2-tiny", "ul2-tiny"])
def test_score_sums_target_log_likelihoods(name):
    model, params = lively_model(name)
    rng = np.random.default_rng(3)
    # The shapes `uncached_logits` uses, so its compiled model.logits is reused.
    length = NUM_TOKENS if model.config.is_encoder_decoder else 7 + NUM_STEPS
    targets = rng.integers(2, 500, size=(3, length)).astype(np.int32)
    weights = np.ones((3, length), np.float32)
    if model.config.is_encoder_decoder:
        weights[1, 5:] = 0  # padded targets
        batch = {"encoder_input_tokens": rng.integers(2, 500, size=(3, 7)).astype(np.int32)}
    else:
        weights[:, :3] = 0  # a prefix LM: no loss on the inputs
        batch = {}
    batch["decoder_input_tokens"] = np.concatenate(
        [np.full((3, 1), model.config.decoder_start_id, np.int32), targets[:, :-1]], axis=1)
    expected = independent_score(jitted(model)[0](params, batch), targets, weights)
    batch.update(decoder_target_tokens=targets, decoder_loss_weights=weights,
                 inputs_pretokenized=np.array([b"a", b"b", b"c"]))  # text is ignored
    np.testing.assert_allclose(np.asarray(score(model, params, batch)), expected, rtol=1e-5)


def test_eos_outside_the_vocabulary_is_refused():
    model, params = lively_model("llama-tiny")
    with pytest.raises(ValueError, match=r"DecodeConfig.eos_id=512 .*\[0, 512\)"):
        generate(model, params, PROMPTS, DecodeConfig(max_new_tokens=2, eos_id=512))


def test_score_names_missing_features():
    model, params = lively_model("gpt2-tiny")
    with pytest.raises(KeyError, match="decoder_loss_weights"):
        score(model, params, {"decoder_input_tokens": np.ones((1, 3), np.int32),
                              "decoder_target_tokens": np.ones((1, 3), np.int32)})
