"""The preference-optimisation step (DPO, IPO) and the reference scores it reads.

A batch holds `b` pairs: `{"chosen": Batch, "rejected": Batch, "reference_chosen_logps": [b],
"reference_rejected_logps": [b]}`, the two answers as the model's ordinary feature-converted
batches (each padded to its own length) and the frozen reference's summed answer
log-probabilities, computed once by `reference_logps` and stored with the data, so a step runs
the policy only.

The loss is the mean over the global batch's pairs: per-pair losses are summed over
microbatches (and devices) and divided by the pair count, so splitting a batch does not change
the step. Rows whose loss weights are all 0 (padding rows that fill a last batch) are not pairs
and count nowhere. Recipes (LoRA, frozen weights, L2-SP) act exactly as in `steps.make_train_step`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from arch_compare.models.model import BaseModel
from arch_compare.preference.objective import (PreferenceConfig, preference_loss,
                                               sequence_logps)
from arch_compare.trainer.recipes import FULL, StepRecipe, l2sp_gradient, l2sp_penalty
from arch_compare.trainer.steps import Batch, TrainState, _split_microbatches

PairBatch = dict[str, Any]
# Per-pair metrics of `preference_loss`, reported as means over the global batch.
PAIR_METRICS = ("reward_chosen", "reward_rejected", "reward_margin", "preference_accuracy",
                "logps_chosen", "logps_rejected")


def reference_logps(model: BaseModel, params, batch: PairBatch) -> tuple[jax.Array, jax.Array]:
    """(chosen [b], rejected [b]) summed answer log-probabilities under `params` (the frozen
    reference), for `batch["chosen"]` and `batch["rejected"]`; jit it to score a data set."""
    chosen, _ = sequence_logps(model, params, batch["chosen"])
    rejected, _ = sequence_logps(model, params, batch["rejected"])
    return chosen, rejected


def pair_sums(model: BaseModel, config: PreferenceConfig, params, batch: PairBatch,
              dropout_rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """Summed loss and metrics over one (micro)batch's pairs, and their count."""
    keys = (None, None) if dropout_rng is None else (
        jax.random.fold_in(dropout_rng, 0), jax.random.fold_in(dropout_rng, 1))
    chosen, chosen_tokens = sequence_logps(model, params, batch["chosen"], keys[0])  # [b] each
    rejected, rejected_tokens = sequence_logps(model, params, batch["rejected"], keys[1])
    losses, metrics = preference_loss(
        config, chosen, rejected, batch["reference_chosen_logps"].astype(jnp.float32),
        batch["reference_rejected_logps"].astype(jnp.float32), chosen_tokens, rejected_tokens)
    # Padding rows (all loss weights 0, which fill a data set's last batch) are no pair: their
    # rewards are 0 and DPO's loss there is log 2, which must not count.
    real = ((chosen_tokens > 0) & (rejected_tokens > 0)).astype(jnp.float32)  # [b]
    sums = {name: jnp.sum(metrics[name] * real) for name in PAIR_METRICS}
    return {"loss_sum": jnp.sum(losses * real), "pairs": jnp.sum(real), **sums}


def make_preference_step(model: BaseModel, optimizer: optax.GradientTransformation,
                         schedule: optax.Schedule, config: PreferenceConfig,
                         microbatches: int = 1, recipe: StepRecipe = FULL):
    """`step(state, batch) -> (state, metrics)`, or `step(state, batch, anchor)` when `recipe`
    has an L2-SP penalty; jit it with the run's shardings. `optimizer` is that of the
    trainable weights only."""

    def sums_and_grads(trainable, frozen, batch, rng):
        def summed_loss(t):
            sums = pair_sums(model, config, recipe.join(frozen, t), batch, rng)
            return sums["loss_sum"], sums
        (_, sums), grads = jax.value_and_grad(summed_loss, has_aux=True)(trainable)
        return sums, grads

    def step(state: TrainState, batch: PairBatch, anchor: Any = None):
        if recipe.has_anchor != (anchor is not None):
            raise ValueError("preference step: pass the L2-SP anchor exactly when the recipe "
                             "has a penalty")
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
            indices = None if rng is None else jnp.arange(microbatches)
            shapes = jax.eval_shape(sums_and_grads, trainable, frozen,
                                    jax.tree.map(lambda x: x[0], micro), rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (sums, grads), _ = jax.lax.scan(accumulate, zeros, (micro, indices))
        pairs = jnp.maximum(sums["pairs"], 1.0)
        grads = jax.tree.map(lambda g: g / pairs, grads)
        extra = {}
        if anchor is not None:
            # After the normalisation: the penalty is per step, not per pair or microbatch.
            _, anchored = recipe.split(anchor)
            extra["l2sp_penalty"] = l2sp_penalty(trainable, anchored, recipe.l2sp_weight)
            grads = jax.tree.map(jnp.add, grads,
                                 l2sp_gradient(trainable, anchored, recipe.l2sp_weight))
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        params = recipe.join(frozen, optax.apply_updates(trainable, updates))
        metrics = {"loss": sums["loss_sum"] / pairs, "pairs": sums["pairs"],
                   **{name: sums[name] / pairs for name in PAIR_METRICS},
                   "grad_norm": optax.global_norm(grads),
                   "learning_rate": schedule(state.step), **extra}
        return TrainState(state.step + 1, params, opt_state), metrics

    return step
