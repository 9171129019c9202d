"""DPO and its variants: a loss on pairs of answers to one prompt, against a frozen reference.

Each pair is scored by the summed log-probability of its answer tokens under the policy and
under the reference (`sequence_logps`; the reference's are computed once and stored with the
data). With `h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)`:

- 'dpo' (Rafailov et al. 2023): `-log sigmoid(beta * h)`. With `label_smoothing` e > 0 it is
  conservative DPO (cDPO): the preference label is taken to be flipped with probability e, so
  the loss is the expectation `(1 - e) * -log sigmoid(beta * h) + e * -log sigmoid(-beta * h)`.
- 'robust' (Chowdhury et al. 2024, rDPO): the unbiased estimate under the same flip noise,
  `((1 - e) * -log sigmoid(beta * h) - e * -log sigmoid(-beta * h)) / (1 - 2e)`; TRL 1.16
  applies `label_smoothing` in this form only (its 'sigmoid' loss ignores it).
- 'ipo' (Azar et al. 2023): `(h_chosen / n_chosen - h_rejected / n_rejected - 1 / (2 beta))^2`
  with each log-ratio divided by its answer's token count, as TRL does (its IPO authors'
  normalisation); `label_smoothing` must be 0.

`sequence_logps` reads the model's ordinary feature-converted batches, so one function serves
both architectures: a decoder-only model weights its prompt tokens 0, an encoder-decoder model
has the prompt on the encoder side.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from arch_compare.models.model import BaseModel
from arch_compare.trainer.steps import Batch, cross_entropy_and_correct


@dataclasses.dataclass(frozen=True)
class PairScores:
    """Per-pair quantities a loss reads, each [b]."""

    chosen_ratio: jax.Array  # policy - reference log-probability of the chosen answer
    rejected_ratio: jax.Array
    chosen_tokens: jax.Array | None  # answer lengths (IPO only)
    rejected_tokens: jax.Array | None


def _dpo(config: "PreferenceConfig", s: PairScores) -> jax.Array:
    logits = config.beta * (s.chosen_ratio - s.rejected_ratio)  # [b]
    e = config.label_smoothing
    # -log sigmoid(x) = softplus(-x): the stable form.
    return (1.0 - e) * jax.nn.softplus(-logits) + e * jax.nn.softplus(logits)


def _robust(config: "PreferenceConfig", s: PairScores) -> jax.Array:
    logits = config.beta * (s.chosen_ratio - s.rejected_ratio)  # [b]
    e = config.label_smoothing
    return ((1.0 - e) * jax.nn.softplus(-logits) - e * jax.nn.softplus(logits)) / (1.0 - 2.0 * e)


def _ipo(config: "PreferenceConfig", s: PairScores) -> jax.Array:
    if s.chosen_tokens is None or s.rejected_tokens is None:
        raise ValueError("preference_loss: loss 'ipo' normalises by answer length; pass "
                         "chosen_tokens and rejected_tokens")
    chosen = s.chosen_ratio / jnp.maximum(s.chosen_tokens, 1.0)  # [b]
    rejected = s.rejected_ratio / jnp.maximum(s.rejected_tokens, 1.0)
    return jnp.square(chosen - rejected - 1.0 / (2.0 * config.beta))


LOSSES: dict[str, Callable[["PreferenceConfig", PairScores], jax.Array]] = {
    "dpo": _dpo, "robust": _robust, "ipo": _ipo}
# Losses that read `label_smoothing`; the others require it to be 0.
SMOOTHED = ("dpo", "robust")


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
    """loss: a key of `LOSSES`; beta: the strength of the tie to the reference (> 0; IPO's
    tau); label_smoothing: the assumed probability that a pair's label is flipped, in [0, 0.5),
    for 'dpo' (cDPO) and 'robust' only."""

    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"PreferenceConfig.loss must be one of {sorted(LOSSES)}, "
                             f"got {self.loss!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta)
                and self.beta > 0):
            raise ValueError(f"PreferenceConfig.beta must be a finite number > 0, "
                             f"got {self.beta!r}")
        e = self.label_smoothing
        if not (isinstance(e, (int, float)) and 0.0 <= e < 0.5):
            raise ValueError(f"PreferenceConfig.label_smoothing must be in [0, 0.5), got {e!r}")
        if e != 0 and self.loss not in SMOOTHED:
            raise ValueError(f"PreferenceConfig.label_smoothing must be 0 for loss "
                             f"{self.loss!r} (only {', '.join(SMOOTHED)} read it), got {e!r}")


def sequence_logps(model: BaseModel, params, batch: Batch, dropout_rng: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """(summed log-probability of the weighted target tokens [b], their weighted count [b])
    for a feature-converted batch, in float32."""
    logits = (model.logits(params, batch) if dropout_rng is None else
              model.logits(params, batch, dropout_rng=dropout_rng)).astype(jnp.float32)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)  # [b, l]
    losses, _ = cross_entropy_and_correct(logits, batch["decoder_target_tokens"])  # -log p [b, l]
    return -jnp.sum(losses * weights, axis=1), jnp.sum(weights, axis=1)


def preference_loss(config: PreferenceConfig, policy_chosen: jax.Array,
                    policy_rejected: jax.Array, reference_chosen: jax.Array,
                    reference_rejected: jax.Array, chosen_tokens: jax.Array | None = None,
                    rejected_tokens: jax.Array | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss per pair [b], metrics per pair, each [b]) from summed answer log-probabilities
    [b]; `chosen_tokens` / `rejected_tokens` (answer lengths [b]) are needed for 'ipo' only.

    Rewards are DPO's implicit ones, `beta * (policy - reference)`; a pair is ranked right when
    the chosen answer's reward is the larger."""
    scores = PairScores(policy_chosen - reference_chosen, policy_rejected - reference_rejected,
                        chosen_tokens, rejected_tokens)
    losses = LOSSES[config.loss](config, scores)  # [b]
    chosen_reward = jax.lax.stop_gradient(config.beta * scores.chosen_ratio)
    rejected_reward = jax.lax.stop_gradient(config.beta * scores.rejected_ratio)
    metrics = {
        "reward_chosen": chosen_reward, "reward_rejected": rejected_reward,
        "reward_margin": chosen_reward - rejected_reward,
        "preference_accuracy": (chosen_reward > rejected_reward).astype(jnp.float32),
        "logps_chosen": jax.lax.stop_gradient(policy_chosen),
        "logps_rejected": jax.lax.stop_gradient(policy_rejected)}
    return losses, metrics
