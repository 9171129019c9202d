"""The decoding loop's memory traffic: per-layer caches and weights, read where they lie.

Decode steps are bound by reading memory, so a copy of the cache or of a weight inside the loop
costs as much as the read itself (benchmarks/decode_throughput.py). These tests pin the layout
that avoids them: a per-layer cache gives the stacked cache's numbers, and the compiled greedy
loop copies no cache and slices no stacked weight.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_compare.decoding import sampling
from arch_compare.decoding.config import DecodeConfig
from arch_compare.decoding.search import left_pad
from tests.decoding.test_cached_decoding import PROMPTS, lively_model

STEPS = 4


@pytest.mark.parametrize("name", ["t5-tiny"])  # cross-attention too
def test_per_layer_cache_steps_like_the_stacked_one(name):
    """A decode step on `per_layer()` caches with `decoding_params` gives the stacked cache's
    logits and keys/values, and keeps the form it was given."""
    model, params = lively_model(name)
    prompts, lengths = left_pad(PROMPTS, None, model.config.vocab_size)
    logits, stacked = jax.jit(model.prefill, static_argnums=3)(params, prompts, lengths, STEPS)
    tokens = jnp.argmax(logits, axis=-1)
    step = jax.jit(model.decode_step)
    stacked_logits, stacked_next = step(params, stacked, tokens)
    layer_logits, layer_next = step(model.decoding_params(params), stacked.per_layer(), tokens)
    assert isinstance(layer_next.layers, tuple) and len(layer_next.layers) == model.config.num_layers
    assert not isinstance(stacked_next.layers, tuple)
    np.testing.assert_allclose(layer_logits, stacked_logits, atol=1e-5)
    for got, want in zip(jax.tree.leaves(layer_next.stacked()), jax.tree.leaves(stacked_next)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # The new token's keys went into slot `index` of every layer (not a no-op step).
    assert np.abs(np.asarray(layer_next.layers[-1].self_attention.key[:, :, stacked.index])).max() > 0


def _loop_body(hlo: str) -> str:
    """The text of the outermost while loop's body computation in an optimized HLO module."""
    bodies = re.findall(r"body=%([\w.\-]+)", hlo)
    assert bodies, "no while loop in the compiled search"
    texts = []
    for body in bodies:
        start = hlo.index(f"\n%{body} ")
        texts.append(hlo[start:hlo.index("\n}\n", start)])
    return max(texts, key=len)


@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny"])
def test_greedy_loop_copies_no_cache_and_slices_no_weight(name):
    model, params = lively_model(name)
    cfg = model.config
    prompts, lengths = left_pad(PROMPTS, None, cfg.vocab_size)
    config = DecodeConfig(max_new_tokens=STEPS, ignore_eos=True)
    knobs = config.knobs(cfg.eos_id)
    search = jax.jit(lambda p, t, n, k: sampling.sample_search(model, p, t, n, config, k,
                                                               cfg.pad_id))
    body = _loop_body(search.lower(params, prompts, lengths, knobs).compile().as_text())
    slots = prompts.shape[1] + STEPS - 1 if not cfg.is_encoder_decoder else STEPS
    layer_cache = f"f32[{len(PROMPTS)},{cfg.num_kv_heads},{slots},{cfg.head_dim}]"
    copies = [line for line in body.splitlines()
              if re.search(r"= f32\[[\d,]+\]\{[\d,]+\} copy\(", line)
              and (layer_cache[4:-1] in line or f"[{cfg.num_layers},{len(PROMPTS)}," in line)]
    assert not copies, "the decode loop copies its cache:\n" + "\n".join(copies)
    # Nothing is sliced out of a stacked [layers, ...] array inside the loop (the layer scan's
    # slices of weights and caches: a copy per step; writes are dynamic-update-slices).
    sliced = re.findall(r"%[\w.\-]*dynamic-slice[\w.\-]* = f32\[[\d,]+\]", body)
    assert not sliced, "the decode loop slices stacked arrays:\n" + "\n".join(sliced[:3])
    assert layer_cache in body  # the per-layer cache is what the loop carries
    # Nor is any layer's cache rearranged: the attention matmuls read [b, g, s, e] as it lies
    # (slots first, every step transposed each layer's whole keys and values).
    rearranged = f"f32[{len(PROMPTS)},{slots},{cfg.num_kv_heads},{cfg.head_dim}]"
    moved = [line for line in body.splitlines() if rearranged != layer_cache  # t5-tiny: g == s
             and f"{rearranged}{{" in line.split("=", 1)[-1][:60]]
    assert not moved, "the decode loop rearranges its cache:\n" + "\n".join(moved[:3])
