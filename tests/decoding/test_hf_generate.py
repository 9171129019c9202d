"""Greedy decoding equals transformers' `generate(do_sample=False)` on the same random weights.

The references are the tiny HF models of `tests.models.hf_references`, written to disk and read
back by both sides. HF's generation is pinned to plain greedy search: no minimum length, no
repetition or length penalties, the same EOS id, padding after EOS.
"""

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

import arch_compare
from arch_compare.decoding.search import DecodeConfig, generate
from tests.models.hf_references import VOCAB, build_reference

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 40]]
NUM_TOKENS = 8
PAD = 0  # HF's filler after EOS (ours is the model's pad_id): rows are compared up to EOS


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa", "t5-v1.0", "t5-v1.1"])
def pair(request, tmp_path_factory):
    """(HF reference, our model, our params) from one checkpoint directory."""
    reference = build_reference(request.param, tmp_path_factory.mktemp(request.param))
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    return reference, model, params


def hf_greedy(reference, eos_id: int) -> np.ndarray:
    """HF greedy tokens [b, n] after each prompt, PAD after EOS. Decoder-only prompts are
    left-padded with an attention mask (HF derives positions from it); encoder inputs are
    right-padded."""
    encoder_decoder = reference.case.encoder_decoder
    width = max(map(len, PROMPTS))
    ids = np.zeros((len(PROMPTS), width), np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(PROMPTS):
        columns = slice(0, len(prompt)) if encoder_decoder else slice(width - len(prompt), width)
        ids[row, columns], mask[row, columns] = prompt, 1
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=NUM_TOKENS, min_new_tokens=0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0,
        eos_token_id=eos_id, pad_token_id=PAD, decoder_start_token_id=0)
    with torch.no_grad():
        out = reference.model.generate(input_ids=torch.from_numpy(ids),
                                       attention_mask=torch.from_numpy(mask),
                                       generation_config=config).numpy()
    generated = out[:, 1:] if encoder_decoder else out[:, width:]  # drop start token / prompt
    # HF stops once every row has ended; pad to the full length.
    return np.pad(generated, ((0, 0), (0, NUM_TOKENS - generated.shape[1])),
                  constant_values=PAD)


def ours(pair, **decode) -> tuple[np.ndarray, np.ndarray]:
    _, model, params = pair
    out = generate(model, params, PROMPTS, DecodeConfig(max_new_tokens=NUM_TOKENS, **decode))
    return np.asarray(out.tokens), np.asarray(out.lengths)


def test_greedy_equals_transformers(pair):
    reference, _, _ = pair
    tokens, lengths = ours(pair, ignore_eos=True)
    # HF's EOS is a token our run never produced, so neither side stops early.
    unused = int(np.setdiff1d(np.arange(2, VOCAB), tokens)[0])
    np.testing.assert_array_equal(tokens, hf_greedy(reference, eos_id=unused))
    assert list(lengths) == [NUM_TOKENS] * len(PROMPTS)


def test_greedy_stops_at_eos_like_transformers(pair):
    """Make a token the free run produces mid-way the EOS: both sides stop at it, per row,
    and pad after it."""
    reference, _, _ = pair
    free, _ = ours(pair, ignore_eos=True)
    eos_id = int(free[0, 3])
    tokens, lengths = ours(pair, eos_id=eos_id)
    assert lengths[0] <= 4 and tokens[0, lengths[0] - 1] == eos_id
    hf_tokens = hf_greedy(reference, eos_id)
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(tokens[row, :length], hf_tokens[row, :length])
        assert np.all(hf_tokens[row, length:] == PAD), (row, hf_tokens[row])
