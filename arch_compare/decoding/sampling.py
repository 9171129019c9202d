"""Greedy and sampled decoding: one token per row per step, chosen from the next-token logits.

The loop is a `jax.lax.while_loop` over `model.decode_step`, so it compiles once and stops as soon
as every row has produced EOS. Rows that finished keep stepping with the others (their outputs are
discarded and their tokens are padding): the batch moves in lockstep through one cache index.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from arch_compare.decoding.config import DecodeConfig, Knobs, length_penalty
from arch_compare.models.decode_cache import DecodeCache
from arch_compare.models.model import BaseModel, Params


def filter_logits(logits: jax.Array, knobs: Knobs) -> jax.Array:
    """Temperature, then top-k, then top-p (transformers' order); removed tokens get -inf.

    logits: [b, v] -> [b, v] float32. top_k=0 and top_p=1 switch their filter off; a token tied
    with the last one kept is kept too.
    """
    logits = logits.astype(jnp.float32) / knobs.temperature
    vocab = logits.shape[-1]
    ranked = -jnp.sort(-logits, axis=-1)  # [b, v], most likely first
    rank = jnp.arange(vocab)  # [v]
    in_top_k = rank < jnp.where(knobs.top_k > 0, knobs.top_k, vocab)
    # Top-p renormalises over what top-k kept, then keeps a token while the mass of the tokens
    # ranked above it is still short of p (so the most likely token always stays).
    probs = jax.nn.softmax(jnp.where(in_top_k, ranked, -jnp.inf), axis=-1)  # [b, v]
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    # p = 1 must keep everything even where float32 cumsums reach 1 early.
    in_top_p = (mass_above < knobs.top_p) | (knobs.top_p >= 1)
    threshold = jnp.min(jnp.where(in_top_k & in_top_p, ranked, jnp.inf), axis=-1,
                        keepdims=True)  # [b, 1]: the least likely logit kept
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def first_max(logits: jax.Array) -> jax.Array:
    """logits: [b, v] -> [b], the first index of each row's maximum (NaN counts as the maximum),
    as `jnp.argmax` defines it. Written as two plain reductions: XLA:CPU runs argmax's
    (value, index) reduction several times slower than a max and a min over [b, v] (7 ms of a
    ~75 ms decode step for GPT-2's vocabulary at batch 64)."""
    top = jnp.max(logits, axis=-1, keepdims=True)  # [b, 1]
    vocab = logits.shape[-1]
    hit = (logits == top) | jnp.isnan(logits)  # [b, v]
    return jnp.min(jnp.where(hit, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def _greedy(logits: jax.Array, key: jax.Array, knobs: Knobs) -> jax.Array:
    return first_max(logits)


def _sample(logits: jax.Array, key: jax.Array, knobs: Knobs) -> jax.Array:
    return jax.random.categorical(key, filter_logits(logits, knobs), axis=-1)


# method -> (logits [b, v], key, knobs) -> tokens [b]
TOKEN_CHOICES: dict[str, Callable[[jax.Array, jax.Array, Knobs], jax.Array]] = {
    "greedy": _greedy,
    "sample": _sample,
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _State:
    step: jax.Array  # [] int32: tokens chosen so far
    tokens: jax.Array  # [b, n]: pad after EOS and after `step`
    chosen: jax.Array  # [b]: the last choice, also for finished rows (a valid id to feed on)
    log_prob: jax.Array  # [b] float32: summed log-probabilities, EOS included
    lengths: jax.Array  # [b] int32, EOS included
    done: jax.Array  # [b] bool: EOS produced
    cache: DecodeCache


def sample_search(model: BaseModel, params: Params, prompts: jax.Array, lengths: jax.Array,
                  config: DecodeConfig, knobs: Knobs, pad_id: int,
                  constrain: Callable[[DecodeCache], DecodeCache] = lambda cache: cache
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """prompts: [b, p] left-padded, lengths: [b] -> (tokens [b, n], lengths [b], scores [b]).

    `constrain` pins the cache's sharding each step (`placement.constrain_cache`)."""
    choose = TOKEN_CHOICES[config.method]
    num_tokens = config.max_new_tokens
    batch_size = prompts.shape[0]
    # Split once here: inside the loop, slicing the stacked layers would copy every weight on
    # every step.
    params = model.decoding_params(params)
    # The first token comes from the prompt's logits; each further one costs a decode step.
    logits, cache = model.prefill(params, prompts, lengths, num_tokens - 1)
    # One array per layer: the steps update them in place (see `DecodeCache`).
    cache = constrain(cache.per_layer())

    def add_token(state: _State, logits: jax.Array) -> _State:
        chosen = choose(logits, jax.random.fold_in(knobs.key, state.step), knobs)  # [b]
        # Scores use the model's own distribution, whatever filters chose the token; only the
        # chosen token's log-probability is formed, not the whole [b, v] log-softmax.
        logits = logits.astype(jnp.float32)
        chosen_logit = jnp.take_along_axis(logits, chosen[:, None], axis=-1)[:, 0]  # [b]
        chosen_log_prob = chosen_logit - jax.nn.logsumexp(logits, axis=-1)
        live = ~state.done
        token = jnp.where(live, chosen, pad_id)
        return _State(
            step=state.step + 1, tokens=state.tokens.at[:, state.step].set(token),
            chosen=chosen, log_prob=state.log_prob + jnp.where(live, chosen_log_prob, 0.0),
            lengths=state.lengths + live, done=state.done | (live & (chosen == knobs.eos_id)),
            cache=state.cache)

    def unfinished(state: _State) -> jax.Array:
        return (state.step < num_tokens) & ~jnp.all(state.done)

    def next_token(state: _State) -> _State:
        logits, cache = model.decode_step(params, state.cache, state.chosen)
        return add_token(dataclasses.replace(state, cache=constrain(cache)), logits)

    start = _State(
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.full((batch_size, num_tokens), pad_id, jnp.int32),
        chosen=jnp.zeros((batch_size,), jnp.int32),
        log_prob=jnp.zeros((batch_size,), jnp.float32),
        lengths=jnp.zeros((batch_size,), jnp.int32),
        done=jnp.zeros((batch_size,), bool), cache=cache)
    final = jax.lax.while_loop(unfinished, next_token, add_token(start, logits))
    scores = final.log_prob / length_penalty(final.lengths, knobs.length_penalty)
    return final.tokens, final.lengths, scores
