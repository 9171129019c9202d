"""The preference-optimisation step (DPO, IPO) and the reference scores it reads.

A batch holds `b` pairs: `{"chosen": Batch, "rejected": Batch, "reference_chosen_logps": [b],
"reference_rejected_logps": [b]}`, the two answers as the model's ordinary feature-converted
batches (each padded to its own length) and the frozen reference's summed answer
log-probabilities, computed once by `reference_logps` and stored with the data, so a step runs
the policy only.

The loss is the mean over the global batch's pairs: per-pair losses are summed over
microbatches (and devices) and divided by the pair count, so splitting a batch does not change
the step. Rows whose loss weights are all 0 (padding rows that fill a last batch) are not pairs
and count nowhere. The step is `steps.make_step` on this objective, so microbatches and recipes
(LoRA, frozen weights, L2-SP) act exactly as in the token step.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from arch_compare.models.model import BaseModel
from arch_compare.preference.objective import (PreferenceConfig, preference_loss,
                                               sequence_logps)
from arch_compare.trainer.recipes import FULL, StepRecipe
from arch_compare.trainer.steps import StepObjective, make_step

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


def _pair_metrics(sums: dict[str, jax.Array], pairs: jax.Array) -> dict[str, jax.Array]:
    return {"loss": sums["loss_sum"] / pairs, "pairs": sums["pairs"],
            **{name: sums[name] / pairs for name in PAIR_METRICS}}


def preference_objective(model: BaseModel, config: PreferenceConfig) -> StepObjective:
    """The mean preference loss over the global batch's pairs (`pair_sums`)."""
    return StepObjective(sums=functools.partial(pair_sums, model, config), count="pairs",
                         metrics=_pair_metrics, name="preference_step")


def make_preference_step(model: BaseModel, optimizer: optax.GradientTransformation,
                         schedule: optax.Schedule, config: PreferenceConfig,
                         microbatches: int = 1, recipe: StepRecipe = FULL):
    """`step(state, batch) -> (state, metrics)`, or `step(state, batch, anchor)` when `recipe`
    has an L2-SP penalty; see `steps.make_step`. Metrics: loss, pairs, the means of
    `PAIR_METRICS`, grad_norm, learning_rate (and l2sp_penalty)."""
    return make_step(preference_objective(model, config), optimizer, schedule, microbatches,
                     recipe)
