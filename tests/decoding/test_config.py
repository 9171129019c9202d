"""DecodeConfig validation and prompt packing: bad input fails early, naming the field."""

import numpy as np
import pytest

from arch_compare.decoding.config import NO_EOS, DecodeConfig, length_penalty
from arch_compare.decoding.search import left_pad


@pytest.mark.parametrize("settings, field", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(method="nucleus"), "method"),
    (dict(method="sample", temperature=0.0), "temperature"),
    (dict(method="sample", top_k=-1), "top_k"),
    (dict(method="sample", top_p=0.0), "top_p"),
    (dict(method="sample", top_p=1.5), "top_p"),
    (dict(method="beam", num_beams=0), "num_beams"),
    (dict(method="beam", num_beams=True), "num_beams"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(eos_id=-2), "eos_id"),
    (dict(eos_id=3, ignore_eos=True), "eos_id"),
    (dict(seed=-1), "seed"),
    # Settings the method would silently ignore.
    (dict(top_k=5), "top_k"),
    (dict(method="beam", num_beams=2, temperature=0.7), "temperature"),
    (dict(num_beams=4), "num_beams"),
])
def test_bad_settings_name_their_field(settings, field):
    with pytest.raises(ValueError, match=f"DecodeConfig.{field}"):
        DecodeConfig(**{"max_new_tokens": 4, **settings})


def test_static_part_drops_only_runtime_knobs():
    config = DecodeConfig(8, method="sample", temperature=0.5, top_k=3, top_p=0.9, seed=4,
                          length_penalty=0.6, eos_id=7)
    assert config.static() == DecodeConfig(8, method="sample")
    assert DecodeConfig(8, method="beam", num_beams=3).static().num_beams == 3
    assert int(config.knobs(model_eos_id=2).eos_id) == 7
    assert int(DecodeConfig(8).knobs(model_eos_id=2).eos_id) == 2
    assert int(DecodeConfig(8, ignore_eos=True).knobs(model_eos_id=2).eos_id) == NO_EOS


def test_length_penalty_is_length_to_the_alpha():
    np.testing.assert_allclose(length_penalty(np.array([1, 4, 9]), 0.5), [1, 2, 3])
    np.testing.assert_allclose(length_penalty(np.array([3, 7]), 0.0), [1, 1])


def test_left_pad_lists_and_right_padded_arrays():
    tokens, lengths = left_pad([[5, 6, 7], [8]], None, vocab_size=10)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(lengths, [3, 1])
    right = np.array([[5, 6, 7, 0], [8, 0, 0, 0]])
    same, same_lengths = left_pad(right, [3, 1], vocab_size=10)
    np.testing.assert_array_equal(same, tokens)
    np.testing.assert_array_equal(same_lengths, lengths)


@pytest.mark.parametrize("prompts, lengths, message", [
    ([[1, 2], []], None, r"prompts\[1\] is empty"),
    ([[1, 12]], None, r"prompts\[0\] has token ids outside the vocabulary \[0, 10\)"),
    ([], None, "no prompts"),
    (np.ones((2, 3), np.int32), [3, 4], "lengths"),
    (np.ones((2, 3), np.int32), [3], "lengths"),
    (np.ones((2, 3, 1), np.int32), None, r"\[batch, length\]"),
    ([[1, 2]], [2], "lengths: only for a padded array"),
])
def test_bad_prompts_are_named(prompts, lengths, message):
    with pytest.raises(ValueError, match=message):
        left_pad(prompts, lengths, vocab_size=10)
