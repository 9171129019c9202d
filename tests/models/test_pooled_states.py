"""`pooled_states` against transformers: the mean of its final hidden states over the prompt.

The same random float32 checkpoints as the logit parity tests (`hf_references`), exported by
`save_hf_checkpoint` and read back by transformers: decoder-only models are compared with the
last entry of `hidden_states` (after the final norm: GPT-2's ln_f, LLaMA's RMSNorm),
encoder-decoder models with the encoder's `last_hidden_state`, each averaged over the rows' real
prompt tokens.
"""

import numpy as np
import pytest
import torch

import arch_compare
from tests.models.hf_references import TOLERANCE, load_reference_model, make_batch

PROMPT_TAIL = 9  # the second decoder-only row's prompt ends this many tokens early


def hf_pooled(model: torch.nn.Module, batch: dict[str, np.ndarray], real: np.ndarray
              ) -> np.ndarray:
    """transformers' final hidden states averaged over `real` [b, l] positions -> [b, d]."""
    with torch.no_grad():
        if "encoder_input_tokens" in batch:
            inputs = torch.from_numpy(batch["encoder_input_tokens"].astype(np.int64))
            states = model.get_encoder()(input_ids=inputs,
                                         attention_mask=(inputs != 0).long()).last_hidden_state
        else:
            tokens = torch.from_numpy(batch["decoder_input_tokens"].astype(np.int64))
            states = model(input_ids=tokens, output_hidden_states=True).hidden_states[-1]
    states = states.numpy().astype(np.float64)  # [b, l, d]
    return (states * real[..., None]).sum(axis=1) / real.sum(axis=1, keepdims=True)


def test_pooled_states_match_transformers(reference, tmp_path):
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    # transformers reads the weights as our export writes them.
    arch_compare.save_hf_checkpoint(model, params, tmp_path)
    hf_model = load_reference_model(tmp_path, reference.case.encoder_decoder)
    batch = make_batch(reference.case.encoder_decoder)
    if reference.case.encoder_decoder:
        real = batch["encoder_input_tokens"] != 0  # make_batch pads the second row's tail
    else:
        # The prompt is what the converter marks as the prefix; the rest (targets) is ignored.
        length = batch["decoder_input_tokens"].shape[1]
        prompt_lengths = np.array([length, length - PROMPT_TAIL])
        real = np.arange(length)[None, :] < prompt_lengths[:, None]
        batch["decoder_causal_attention"] = real.astype(np.int32)
    assert not real.all()  # the padding / targets must be left out to pass
    ours = np.asarray(model.pooled_states(params, batch))
    expected = hf_pooled(hf_model, batch, real)
    assert ours.shape == (2, model.config.d_model)
    diff = float(np.max(np.abs(ours - expected)))
    print(f"{reference.name}: max |diff| {diff:.2e}, max |state| {np.abs(expected).max():.2f}")
    assert diff <= TOLERANCE
    # Averaging over every token instead would be caught: the rows differ measurably.
    everything = hf_pooled(hf_model, batch, np.ones_like(real))
    assert np.max(np.abs(everything - expected)) > 100 * TOLERANCE


def test_packed_batches_are_refused(reference_for):
    model, params = arch_compare.load_hf_checkpoint(reference_for("gpt2").directory)
    batch = make_batch(False)
    batch["decoder_causal_attention"] = np.ones_like(batch["decoder_input_tokens"])
    batch["decoder_segment_ids"] = np.ones_like(batch["decoder_input_tokens"])
    with pytest.raises(ValueError, match="unpacked.*decoder_segment_ids"):
        model.pooled_states(params, batch)
