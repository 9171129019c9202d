"""Loss, metrics and the training step, with gradient accumulation over microbatches.

The loss is the token-level cross-entropy summed over `decoder_loss_weights` (zero on prompts and
padding) and divided by the number of weighted tokens of the whole global batch, so splitting a
batch into microbatches, or over devices, does not change it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from arch_compare.models.model import BaseModel

Batch = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    step: jax.Array  # [] int32
    params: Any
    opt_state: Any


def cross_entropy_and_correct(logits: jax.Array, targets: jax.Array
                              ) -> tuple[jax.Array, jax.Array]:
    """logits: [b, l, v] float32; targets: [b, l] -> (cross-entropy [b, l], correct [b, l]).

    A prediction is correct when the target's logit is the row's maximum. That reuses the
    maximum the log-softmax needs anyway, where an argmax would be a second pass over the
    [b, l, v] logits (and a slow variadic reduction on XLA:CPU). It equals argmax == target
    except on exact ties for the maximum, which count as correct here.
    """
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))  # [b, l, 1]
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)  # [b, l, 1]
    log_normaliser = top + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True))
    losses = (log_normaliser - target_logit)[..., 0]
    correct = (target_logit >= top)[..., 0].astype(jnp.float32)
    return losses, correct


def weighted_sums(model: BaseModel, params, batch: Batch) -> dict[str, jax.Array]:
    """Summed loss, correct predictions and weight of one (micro)batch."""
    logits = model.logits(params, batch).astype(jnp.float32)  # [b, l, v]
    targets = batch["decoder_target_tokens"]  # [b, l]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)  # [b, l]
    losses, correct = cross_entropy_and_correct(logits, targets)  # [b, l] each
    return {"loss_sum": jnp.sum(losses * weights), "correct": jnp.sum(correct * weights),
            "weight": jnp.sum(weights)}


def _split_microbatches(batch: Batch, microbatches: int) -> Batch:
    def split(x):  # [b, ...] -> [microbatches, b / microbatches, ...]
        return x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:])
    return jax.tree.map(split, batch)


def make_train_step(model: BaseModel, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, microbatches: int = 1):
    """`train_step(state, batch) -> (state, metrics)`; jit it with the run's shardings."""

    def sums_and_grads(params, batch):
        def summed_loss(p):
            sums = weighted_sums(model, p, batch)
            return sums["loss_sum"], sums
        (_, sums), grads = jax.value_and_grad(summed_loss, has_aux=True)(params)
        return sums, grads

    def train_step(state: TrainState, batch: Batch):
        if microbatches == 1:
            sums, grads = sums_and_grads(state.params, batch)
        else:
            def accumulate(carry, microbatch):
                sums, grads = sums_and_grads(state.params, microbatch)
                return jax.tree.map(jnp.add, carry, (sums, grads)), None
            micro = _split_microbatches(batch, microbatches)
            shapes = jax.eval_shape(sums_and_grads, state.params,
                                    jax.tree.map(lambda x: x[0], micro))
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (sums, grads), _ = jax.lax.scan(accumulate, zeros, micro)
        weight = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": sums["loss_sum"] / weight, "accuracy": sums["correct"] / weight,
                   "tokens": sums["weight"], "grad_norm": optax.global_norm(grads),
                   "learning_rate": schedule(state.step)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def make_init_state(optimizer: optax.GradientTransformation):
    """`init_state(params) -> TrainState` at step 0; jit it with the state's shardings as
    `out_shardings` so the optimizer state is created sharded, never whole on one device."""
    return lambda params: TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def abstract_train_state(optimizer: optax.GradientTransformation, abstract_params: Any
                         ) -> TrainState:
    """The state's shapes and dtypes (`jax.ShapeDtypeStruct`s), without computing anything."""
    return jax.eval_shape(make_init_state(optimizer), abstract_params)


def make_eval_step(model: BaseModel):
    """`eval_step(params, batch) -> sums` of loss, correct tokens and weight."""
    return lambda params, batch: weighted_sums(model, params, batch)
