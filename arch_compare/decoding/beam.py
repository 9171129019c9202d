"""Beam search over `model.decode_step`, in the t5x / transformers style.

Each example keeps `k` alive beams and the `k` best finished hypotheses. A step extends every alive
beam by every token, keeps the 2k best extensions (at most k of them end in EOS, so k alive beams
always remain), moves those ending in EOS into the finished set with their length-normalised
score, and keeps the k best others alive. An example stops once no alive beam can still beat its
worst finished hypothesis: alive log-probabilities only fall, so the bound below is exact and
stopping early never changes the result. At `max_new_tokens` the alive beams are finished too.

The prompt is prefilled once per example; its cache is then copied to the example's k beams.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from arch_compare.decoding.config import DecodeConfig, Knobs, length_penalty
from arch_compare.models.decode_cache import DecodeCache
from arch_compare.models.model import BaseModel, Params

# Stands for "no hypothesis": finite, so arithmetic on it stays NaN-free, and far below any real
# summed log-probability.
NO_SCORE = -1e9


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Beams:
    step: jax.Array  # [] int32: tokens generated so far by every alive beam
    alive_tokens: jax.Array  # [b, k, n]
    alive_log_prob: jax.Array  # [b, k]
    finished_tokens: jax.Array  # [b, k, n]: pad after EOS
    finished_scores: jax.Array  # [b, k]: length-normalised; NO_SCORE for empty places
    finished_lengths: jax.Array  # [b, k]
    cache: DecodeCache  # rows b * k, beam-major within each example


def _gather(values: jax.Array, index: jax.Array) -> jax.Array:
    """values [b, m, ...], index [b, j] -> values[b, index[b, j], ...]: [b, j, ...]."""
    index = index.reshape(index.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1)


def _best(scores: jax.Array, count: int, *others: jax.Array) -> tuple[jax.Array, ...]:
    """The `count` highest scores [b, m] -> [b, count] and the matching rows of `others`."""
    best, index = jax.lax.top_k(scores, count)
    return (best, *(_gather(values, index) for values in others))


def _repeat_rows(cache: DecodeCache, beams: int) -> DecodeCache:
    """Each example's cache row repeated `beams` times, next to each other: rows b -> b * k.
    A broadcast, not a gather by index, so rows split over devices stay where they are."""
    repeat = lambda x, axis: jnp.repeat(x, beams, axis=axis)
    layers = jax.tree.map(lambda x: repeat(x, 1), cache.layers)  # axis 0 is layers
    mask = None if cache.encoder_mask is None else repeat(cache.encoder_mask, 0)
    return dataclasses.replace(cache, layers=layers, start=repeat(cache.start, 0),
                               encoder_mask=mask)


def _reorder_beams(cache: DecodeCache, parent: jax.Array) -> DecodeCache:
    """The self-attention keys/values of beam `parent[b, j]` of example b into beam j [b, k].
    Indexing within each example (not over all b * k rows) keeps the gather on the devices that
    hold the example; only self-attention differs between an example's beams."""
    batch_size, beams = parent.shape

    def move(x: jax.Array) -> jax.Array:  # [layers, b * k, ...]
        by_example = x.reshape(x.shape[0], batch_size, beams, *x.shape[2:])
        index = parent.reshape(1, batch_size, beams, *(1,) * (x.ndim - 2))
        return jnp.take_along_axis(by_example, index, axis=2).reshape(x.shape)

    self_kv = jax.tree.map(move, cache.layers.self_attention)
    return dataclasses.replace(
        cache, layers=dataclasses.replace(cache.layers, self_attention=self_kv))


def beam_search(model: BaseModel, params: Params, prompts: jax.Array, lengths: jax.Array,
                config: DecodeConfig, knobs: Knobs, pad_id: int,
                constrain: Callable[[DecodeCache], DecodeCache] = lambda cache: cache
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """prompts: [b, p] left-padded, lengths: [b] -> the best hypothesis per example:
    (tokens [b, n], lengths [b], scores [b]). `constrain` pins the cache's sharding (rows
    b * k, an example's beams next to each other, so they stay on the example's devices)."""
    batch_size, beams, num_tokens = prompts.shape[0], config.num_beams, config.max_new_tokens
    penalty = lambda length: length_penalty(length, knobs.length_penalty)

    params = model.decoding_params(params)  # once, not per step (see sample_search)
    logits, cache = model.prefill(params, prompts, lengths, num_tokens - 1)  # [b, v]
    logits = jnp.repeat(logits, beams, axis=0)  # [b * k, v]
    cache = constrain(_repeat_rows(cache, beams))

    def extend(state: _Beams, logits: jax.Array) -> _Beams:
        """logits: [b * k, v] for the alive beams' next token."""
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        vocab = log_probs.shape[-1]
        candidates = state.alive_log_prob[:, :, None] + log_probs.reshape(batch_size, beams, vocab)
        top_log_prob, top_index = jax.lax.top_k(candidates.reshape(batch_size, -1), 2 * beams)
        parent, token = top_index // vocab, top_index % vocab  # [b, 2k]
        tokens = _gather(state.alive_tokens, parent).at[:, :, state.step].set(token)  # [b, 2k, n]
        length = state.step + 1
        ends = token == knobs.eos_id

        # Finished: the k best of those kept so far and the new EOS extensions.
        new_scores = jnp.where(ends, top_log_prob / penalty(length), NO_SCORE)
        finished_scores, finished_tokens, finished_lengths = _best(
            jnp.concatenate([state.finished_scores, new_scores], axis=1), beams,
            jnp.concatenate([state.finished_tokens, tokens], axis=1),
            jnp.concatenate([state.finished_lengths, jnp.full(ends.shape, length)], axis=1))

        # Alive: the k best extensions that did not end.
        alive_log_prob, alive_tokens, alive_parent = _best(
            jnp.where(ends, NO_SCORE, top_log_prob), beams, tokens, parent)
        return _Beams(state.step + 1, alive_tokens, alive_log_prob, finished_tokens,
                      finished_scores, finished_lengths,
                      constrain(_reorder_beams(state.cache, alive_parent)))

    def unfinished(state: _Beams) -> jax.Array:
        # Best reachable score of an alive beam: its log-probability (which can only fall)
        # over the largest penalty any final length in [step + 1, n] could bring.
        largest_penalty = jnp.maximum(penalty(state.step + 1), penalty(num_tokens))
        reachable = state.alive_log_prob.max(axis=1) / largest_penalty  # [b]
        settled = state.finished_scores.min(axis=1) >= reachable  # needs k finished
        return (state.step < num_tokens) & ~jnp.all(settled)

    def next_token(state: _Beams) -> _Beams:
        last = state.alive_tokens[:, :, state.step - 1].reshape(-1)  # [b * k]
        logits, cache = model.decode_step(params, state.cache, last)
        return extend(dataclasses.replace(state, cache=cache), logits)

    no_tokens = jnp.full((batch_size, beams, num_tokens), pad_id, jnp.int32)
    # The k copies of a prompt are one hypothesis: only the first may extend at the first step.
    first_only = jnp.where(jnp.arange(beams) == 0, 0.0, NO_SCORE)
    start = _Beams(
        step=jnp.zeros((), jnp.int32), alive_tokens=no_tokens,
        alive_log_prob=jnp.broadcast_to(first_only, (batch_size, beams)),
        finished_tokens=no_tokens, finished_scores=jnp.full((batch_size, beams), NO_SCORE),
        finished_lengths=jnp.zeros((batch_size, beams), jnp.int32), cache=cache)
    final = jax.lax.while_loop(unfinished, next_token, extend(start, logits))

    # Beams alive at the length limit are finished hypotheses of length n; beams still alive
    # after an early stop cannot win and are not candidates.
    at_limit = final.step == num_tokens
    alive_scores = jnp.where(at_limit, final.alive_log_prob / penalty(num_tokens), NO_SCORE)
    scores, tokens, lengths = _best(
        jnp.concatenate([final.finished_scores, alive_scores], axis=1), 1,
        jnp.concatenate([final.finished_tokens, final.alive_tokens], axis=1),
        jnp.concatenate([final.finished_lengths,
                         jnp.full((batch_size, beams), num_tokens)], axis=1))
    return tokens[:, 0], lengths[:, 0], scores[:, 0]
