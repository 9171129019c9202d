"""Loss, metrics and the training step, with gradient accumulation over microbatches.

One step serves every objective (`make_step`): a `StepObjective` says what a (micro)batch sums
(its loss and the count the loss is a mean over), and the step splits the batch into
microbatches, accumulates the sums and their gradients, divides by the global batch's count,
applies the recipe and the optimizer. Summing before dividing means that splitting a batch into
microbatches, or over devices, does not change the step.

The token objective (`make_train_step`) is the cross-entropy summed over
`decoder_loss_weights` (zero on prompts and padding), a mean over the weighted tokens; the
preference objective (`trainer.preference_steps`) is a mean over pairs.

A `recipes.StepRecipe` says which weights train (gradients and optimizer state exist for those
only), whether an L2-SP penalty toward an anchor is added, and the dropout key of each step; the
default (`recipes.FULL`) trains every weight with nothing added, and its program is the one this
module compiled before recipes existed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from arch_compare.models.model import BaseModel
from arch_compare.trainer.recipes import FULL, StepRecipe, l2sp_gradient, l2sp_penalty

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


def weighted_sums(model: BaseModel, params, batch: Batch, dropout_rng: jax.Array | None = None
                  ) -> dict[str, jax.Array]:
    """Summed loss, correct predictions and weight of one (micro)batch (with dropout when a key
    is given: only models with adapters take one)."""
    logits = (model.logits(params, batch) if dropout_rng is None else
              model.logits(params, batch, dropout_rng=dropout_rng)).astype(jnp.float32)  # [b, l, v]
    targets = batch["decoder_target_tokens"]  # [b, l]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)  # [b, l]
    losses, correct = cross_entropy_and_correct(logits, targets)  # [b, l] each
    return {"loss_sum": jnp.sum(losses * weights), "correct": jnp.sum(correct * weights),
            "weight": jnp.sum(weights)}


def _split_microbatches(batch: Batch, microbatches: int) -> Batch:
    def split(x):  # [b, ...] -> [microbatches, b / microbatches, ...]
        return x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:])
    return jax.tree.map(split, batch)


@dataclasses.dataclass(frozen=True)
class StepObjective:
    """What a training step minimises.

    sums: `(params, batch, dropout_rng or None) -> sums` over one (micro)batch; the step
      differentiates `sums["loss_sum"]` and adds every entry up over microbatches.
    count: the entry of `sums` the loss is a mean over (weighted tokens, pairs); the summed
      gradients are divided by the global batch's count (at least 1).
    metrics: `(sums, count) -> metrics` reported for the global batch, `count` as divided by;
      the step adds `grad_norm`, `learning_rate` and, with L2-SP, `l2sp_penalty`.
    name: the step's name: its function's (compiled programs are `jit_<name>`) and in error
      messages.
    """

    sums: Callable[[Any, Any, jax.Array | None], dict[str, jax.Array]]
    count: str
    metrics: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]
    name: str = "step"

    def __post_init__(self):
        if not (callable(self.sums) and callable(self.metrics)):
            raise TypeError(f"StepObjective {self.name!r}: sums and metrics must be callables")
        if not (isinstance(self.count, str) and self.count):
            raise ValueError(f"StepObjective {self.name!r}: count must name an entry of the "
                             f"sums, got {self.count!r}")


def make_step(objective: StepObjective, optimizer: optax.GradientTransformation,
              schedule: optax.Schedule, microbatches: int = 1, recipe: StepRecipe = FULL):
    """`step(state, batch) -> (state, metrics)`, or `step(state, batch, anchor)` when `recipe`
    has an L2-SP penalty (`anchor`: the base weights, a tree like the params); jit it with the
    run's shardings. `optimizer` is that of the trainable weights only."""

    def sums_and_grads(trainable, frozen, batch, rng):
        def summed_loss(t):
            sums = objective.sums(recipe.join(frozen, t), batch, rng)
            return sums["loss_sum"], sums
        (_, sums), grads = jax.value_and_grad(summed_loss, has_aux=True)(trainable)
        return sums, grads

    def step(state: TrainState, batch: Any, anchor: Any = None):
        if recipe.has_anchor != (anchor is not None):
            raise ValueError(f"{objective.name}: pass the L2-SP anchor exactly when the recipe "
                             f"has a penalty")
        frozen, trainable = recipe.split(state.params)
        rng = recipe.dropout_key(state.step)  # None without dropout
        if microbatches == 1:
            sums, grads = sums_and_grads(trainable, frozen, batch, rng)
        else:
            def accumulate(carry, inputs):
                microbatch, index = inputs
                key = None if rng is None else jax.random.fold_in(rng, index)
                sums, grads = sums_and_grads(trainable, frozen, microbatch, key)
                return jax.tree.map(jnp.add, carry, (sums, grads)), None
            micro = _split_microbatches(batch, microbatches)
            # The microbatch's index only where a dropout key needs it (no extra scan input).
            indices = None if rng is None else jnp.arange(microbatches)
            shapes = jax.eval_shape(sums_and_grads, trainable, frozen,
                                    jax.tree.map(lambda x: x[0], micro), rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (sums, grads), _ = jax.lax.scan(accumulate, zeros, (micro, indices))
        count = jnp.maximum(sums[objective.count], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        extra = {}
        if anchor is not None:
            # After the normalisation: the penalty is per step, not per token, pair or
            # microbatch.
            _, anchored = recipe.split(anchor)
            extra["l2sp_penalty"] = l2sp_penalty(trainable, anchored, recipe.l2sp_weight)
            grads = jax.tree.map(jnp.add, grads,
                                 l2sp_gradient(trainable, anchored, recipe.l2sp_weight))
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        params = recipe.join(frozen, optax.apply_updates(trainable, updates))
        metrics = {**objective.metrics(sums, count), "grad_norm": optax.global_norm(grads),
                   "learning_rate": schedule(state.step), **extra}
        return TrainState(state.step + 1, params, opt_state), metrics

    step.__name__ = objective.name
    return step


def _token_metrics(sums: dict[str, jax.Array], weight: jax.Array) -> dict[str, jax.Array]:
    return {"loss": sums["loss_sum"] / weight, "accuracy": sums["correct"] / weight,
            "tokens": sums["weight"]}


def token_objective(model: BaseModel) -> StepObjective:
    """The mean cross-entropy over the global batch's weighted tokens (`weighted_sums`)."""
    return StepObjective(sums=functools.partial(weighted_sums, model), count="weight",
                         metrics=_token_metrics, name="train_step")


def make_train_step(model: BaseModel, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, microbatches: int = 1,
                    recipe: StepRecipe = FULL):
    """`train_step(state, batch) -> (state, metrics)` on the token objective, or
    `train_step(state, batch, anchor)` when `recipe` has an L2-SP penalty; see `make_step`.
    Metrics: loss, accuracy, tokens, grad_norm, learning_rate (and l2sp_penalty)."""
    return make_step(token_objective(model), optimizer, schedule, microbatches, recipe)


def make_init_state(optimizer: optax.GradientTransformation, recipe: StepRecipe = FULL):
    """`init_state(params) -> TrainState` at step 0, the optimizer state of the trainable weights
    only; jit it with the state's shardings as `out_shardings` so the optimizer state is created
    sharded, never whole on one device."""
    return lambda params: TrainState(jnp.zeros((), jnp.int32), params,
                                     optimizer.init(recipe.split(params)[1]))


def abstract_train_state(optimizer: optax.GradientTransformation, abstract_params: Any,
                         recipe: StepRecipe = FULL) -> TrainState:
    """The state's shapes and dtypes (`jax.ShapeDtypeStruct`s), without computing anything."""
    return jax.eval_shape(make_init_state(optimizer, recipe), abstract_params)


def make_eval_step(model: BaseModel):
    """`eval_step(params, batch) -> sums` of loss, correct tokens and weight."""
    return lambda params, batch: weighted_sums(model, params, batch)
