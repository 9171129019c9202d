"""DPO, cDPO, rDPO and IPO losses and their gradients equal TRL 1.16's on the same weights.

The policy and a frozen reference (other random weights) are tiny random transformers models
(tests/models/hf_references.py); ours are loaded from the same directories with
`load_hf_checkpoint`. TRL's side runs `DPOTrainer.compute_ref_log_probs` and
`DPOTrainer._compute_loss` themselves (called on a stand-in for the trainer that carries only the
settings they read, so no data set or tokenizer is needed), on TRL's batch layout: chosen rows
then rejected rows, `input_ids` with a `completion_mask`.

- GPT-2: TRL's own fused LM head (`add_fused_lm_head`, as `DPOTrainer.__init__` installs it)
  computes the log-probabilities, forward and backward.
- T5 v1.1: TRL 1.16's DPO has no encoder-decoder path (its fused head patches causal LMs only).
  A small adapter gives `_compute_loss` what the fused head would: per-token log-probabilities of
  `input_ids[:, 1:]` from transformers' T5, the prompt on the encoder side. Everything after the
  log-probabilities is TRL's code.

Conservative DPO (label smoothing in the sigmoid loss) is not a TRL 1.16 loss; it is checked
against its definition over TRL's sigmoid loss: `(1 - e) * loss(pair) + e * loss(flipped pair)`.
Gradients are compared on every weight, mapped to transformers' names by the checkpoint tables
(`params_to_hf`: the export path, linear in the weights, so it maps gradients too).
"""

from __future__ import annotations

import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.utils import add_fused_lm_head

from arch_compare import load_hf_checkpoint
from arch_compare.models.hf.checkpoint import params_to_hf
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.trainer.preference_steps import pair_sums, reference_logps
from tests.models.hf_references import VOCAB, assert_untied_t5, load_reference_model
from tests.preference.token_pairs import PAD, make_pairs, pair_batch, padded

TOLERANCE = 1e-5
# (prompt, chosen, rejected) lengths: every batch has padding, answers of unequal lengths.
LENGTHS = [(3, 4, 6), (6, 2, 3), (2, 7, 1)]


# ------------------------------------------------------------------------------------------------
# TRL's batches and model adapters


def trl_inputs(pairs: list[Pair], encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """DPOTrainer's collated layout: rows [chosen..., rejected...], one padded width."""
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    prompts = [p.prompt for p in pairs] * 2
    if encoder_decoder:  # the decoder side: start token, then the answer
        prompt_parts, encoder = [[PAD] for _ in answers], prompts
    else:
        prompt_parts, encoder = prompts, None
    rows = [p + a for p, a in zip(prompt_parts, answers)]
    width = max(map(len, rows))
    as_long = lambda x: torch.from_numpy(np.asarray(x, np.int64))
    inputs = {"input_ids": as_long(padded(rows, width)),
              "attention_mask": as_long(padded([[1] * len(r) for r in rows], width)),
              "completion_mask": as_long(padded([[0] * len(p) + [1] * len(a)
                                                 for p, a in zip(prompt_parts, answers)], width))}
    if encoder is not None:
        encoder_ids = padded(encoder, max(map(len, encoder)))
        inputs["encoder_input_ids"] = as_long(encoder_ids)
        inputs["encoder_attention_mask"] = as_long(encoder_ids != PAD)
    return inputs


class T5LogProbs(torch.nn.Module):
    """What TRL's fused head returns, for an encoder-decoder model: log p(input_ids[:, t + 1])
    at position t (0 where the label is -100), plus the per-token fields its metrics read."""

    is_gradient_checkpointing = False

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # as the wrapped model: no dropout, and TRL logs under "eval"

    def forward(self, input_ids, attention_mask, encoder_input_ids, encoder_attention_mask,
                labels, fused_lm_head=True, use_cache=False):
        logits = self.model(input_ids=encoder_input_ids, attention_mask=encoder_attention_mask,
                            decoder_input_ids=input_ids[:, :-1], use_cache=False).logits
        logps = torch.log_softmax(logits.float(), dim=-1)  # [b, l - 1, v]
        targets = labels[:, 1:]
        mask = targets != -100
        picked = logps.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        return types.SimpleNamespace(
            log_probs=picked.masked_fill(~mask, 0.0),
            entropy=-(logps.exp() * logps).sum(-1).detach(),
            mean_logits=logits.mean(-1).detach(),
            is_top1=(logits.argmax(-1) == targets) & mask)


def trl_trainer(policy: torch.nn.Module, config: PreferenceConfig, loss_type: str):
    """The attributes `compute_ref_log_probs` and `_compute_loss` read, as DPOTrainer sets them
    from a DPOConfig with `precompute_ref_log_probs=True` and one loss type."""
    return types.SimpleNamespace(
        model=policy, ref_model=None, accelerator=Accelerator(cpu=True),
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        precompute_ref_logps=True, ld_alpha=None, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=config.beta,
        label_smoothing=config.label_smoothing, use_weighting=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)


def trl_models(name: str, reference_for, frozen_reference_for):
    encoder_decoder = reference_for(name).case.encoder_decoder
    # Fresh copies: the session's reference models are shared and must stay unpatched.
    policy = load_reference_model(reference_for(name).directory, encoder_decoder)
    reference = load_reference_model(frozen_reference_for(name).directory, encoder_decoder)
    if encoder_decoder:
        assert_untied_t5(policy, reference_for(name).directory)  # v1.1's own lm_head
        return T5LogProbs(policy), T5LogProbs(reference), policy
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(reference)
    return policy, reference, policy


def flipped(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same pairs with chosen and rejected swapped (the label flipped)."""
    swap = lambda x: torch.cat(x.chunk(2, dim=0)[::-1], dim=0)
    out = {key: swap(value) for key, value in inputs.items()
           if key not in ("ref_chosen_logps", "ref_rejected_logps")}
    out["ref_chosen_logps"] = inputs["ref_rejected_logps"]
    out["ref_rejected_logps"] = inputs["ref_chosen_logps"]
    return out


# (our config, TRL loss type; None: cDPO from TRL's sigmoid loss)
CASES = {
    "dpo": (PreferenceConfig("dpo", beta=0.5), "sigmoid"),
    "cdpo": (PreferenceConfig("dpo", beta=0.5, label_smoothing=0.2), None),
    "robust": (PreferenceConfig("robust", beta=0.5, label_smoothing=0.2), "robust"),
    "ipo": (PreferenceConfig("ipo", beta=1.0), "ipo"),
}


def trl_loss_and_grads(name, config, loss_type, pairs, reference_for, frozen_reference_for):
    policy, reference, hf_model = trl_models(name, reference_for, frozen_reference_for)
    encoder_decoder = reference_for(name).case.encoder_decoder
    inputs = trl_inputs(pairs, encoder_decoder)
    trainer = trl_trainer(policy, config, loss_type or "sigmoid")
    ref_chosen, ref_rejected = DPOTrainer.compute_ref_log_probs(trainer, reference, inputs)
    inputs = {**inputs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    hf_model.zero_grad()
    loss = DPOTrainer._compute_loss(trainer, policy, inputs, False)
    if loss_type is None:  # cDPO: the loss expected under a label flipped with probability e
        e = config.label_smoothing
        trainer.label_smoothing = 0.0
        clean = DPOTrainer._compute_loss(trainer, policy, inputs, False)
        flip = DPOTrainer._compute_loss(trainer, policy, flipped(inputs), False)
        loss = (1 - e) * clean + e * flip
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in hf_model.named_parameters()
             if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    return float(loss.detach()), grads, (ref_chosen.numpy(), ref_rejected.numpy()), metrics


def our_loss_and_grads(name, config, pairs, reference_for, frozen_reference_for):
    model, params = load_hf_checkpoint(reference_for(name).directory)
    _, reference_params = load_hf_checkpoint(frozen_reference_for(name).directory)
    batch = pair_batch(pairs, reference_for(name).case.encoder_decoder)
    ref_chosen, ref_rejected = jax.jit(lambda p, b: reference_logps(model, p, b))(
        reference_params, batch)
    batch = {**batch, "reference_chosen_logps": ref_chosen,
             "reference_rejected_logps": ref_rejected}

    def mean_loss(p):
        sums = pair_sums(model, config, p, batch)
        return sums["loss_sum"] / sums["pairs"], sums

    (loss, sums), grads = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(params)
    return (float(loss), params_to_hf(model, grads), (np.asarray(ref_chosen),
            np.asarray(ref_rejected)), {k: float(v) / float(sums["pairs"])
                                        for k, v in sums.items()})


# GPT-2 with every loss and T5 v1.1's DPO in `make test`; T5's other losses (a minute of
# compiling) in `make test-scale`.
@pytest.mark.parametrize("name, case", [
    *[("gpt2", case) for case in CASES],
    *[pytest.param("t5-v1.1", case, marks=() if case == "dpo" else pytest.mark.scale)
      for case in CASES]])
def test_loss_and_gradient_equal_trl(name, case, reference_for, frozen_reference_for):
    config, loss_type = CASES[case]
    pairs = make_pairs(VOCAB, LENGTHS)
    torch.manual_seed(0)
    trl_loss, trl_grads, trl_refs, trl_metrics = trl_loss_and_grads(
        name, config, loss_type, pairs, reference_for, frozen_reference_for)
    loss, grads, refs, metrics = our_loss_and_grads(name, config, pairs, reference_for,
                                                    frozen_reference_for)

    ref_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(refs, trl_refs))
    assert ref_diff < TOLERANCE
    # Every weight of ours has a gradient in torch (the tied GPT-2 head is the embedding).
    assert set(grads) <= set(trl_grads), sorted(set(grads) - set(trl_grads))
    grad_diffs = {n: float(np.max(np.abs(grads[n] - trl_grads[n]))) for n in grads}
    worst = max(grad_diffs, key=grad_diffs.get)
    largest = max(float(np.max(np.abs(g))) for g in trl_grads.values())
    print(f"{name} {case}: loss ours {loss:.6f} TRL {trl_loss:.6f} "
          f"(diff {abs(loss - trl_loss):.2e}); reference logps diff {ref_diff:.2e}; "
          f"max grad diff {grad_diffs[worst]:.2e} at {worst} over {len(grads)} tensors "
          f"(largest |grad| {largest:.3f})")
    assert loss == pytest.approx(trl_loss, abs=TOLERANCE)
    assert grad_diffs[worst] < TOLERANCE
    assert largest > 1e-3  # the gradients compared are not all ~0
    # The reference term matters: policy and reference log-probabilities differ.
    assert abs(metrics["logps_chosen"] - float(np.mean(refs[0]))) > 0.1
    if loss_type is not None:  # TRL logged these for the pairs as given
        for ours, theirs in [("reward_chosen", "rewards/chosen"),
                             ("reward_rejected", "rewards/rejected"),
                             ("reward_margin", "rewards/margins"),
                             ("preference_accuracy", "rewards/accuracies"),
                             ("logps_chosen", "logps/chosen"),
                             ("logps_rejected", "logps/rejected")]:
            assert metrics[ours] == pytest.approx(trl_metrics[theirs], abs=TOLERANCE), ours


@pytest.mark.parametrize("fields, message", [
    ({"loss": "kto"}, "PreferenceConfig.loss"),
    ({"beta": 0.0}, "PreferenceConfig.beta"),
    ({"beta": float("nan")}, "PreferenceConfig.beta"),
    ({"label_smoothing": 0.5}, "PreferenceConfig.label_smoothing"),
    ({"label_smoothing": -0.1}, "PreferenceConfig.label_smoothing"),
    ({"loss": "ipo", "label_smoothing": 0.1}, "PreferenceConfig.label_smoothing"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        PreferenceConfig(**fields)


def test_ipo_needs_answer_lengths():
    from arch_compare.preference.objective import preference_loss
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="chosen_tokens and rejected_tokens"):
        preference_loss(PreferenceConfig("ipo"), x, x, x, x)
