"""Trimmed padding: batches cut to their split's widths, and training that equals full width."""

import logging

import jax
import numpy as np
import pytest

from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.trainer.data import BatchIterator, DataConfig, split_batches
from arch_compare_tasks.registry import seqio_provider
from arch_compare.trainer.widths import Trimmer, fitted_widths, needed_widths

from .conftest import TASK

LONG = {"inputs": 128, "targets": 128}  # far more room than the fixture's examples use


def _batch(lengths: dict[str, list[int]], width: int) -> dict[str, np.ndarray]:
    """Rows of ones as long as `lengths` says, zero after, for features named like converted
    ones ('decoder_target_tokens' -> the decoder's width)."""
    return {name: np.array([[1] * n + [0] * (width - n) for n in rows], np.int32)
            for name, rows in lengths.items()}


def test_needed_widths_take_the_widest_feature_of_each_sequence():
    batch = _batch({"encoder_input_tokens": [3, 5], "decoder_target_tokens": [2, 0],
                    "decoder_loss_weights": [7, 1]}, width=16)
    assert needed_widths(batch) == {"encoder": 5, "decoder": 7}


def test_fitted_widths_round_up_and_stay_within_the_full_width():
    batches = [_batch({"decoder_target_tokens": [9, 3]}, 12),
               _batch({"decoder_target_tokens": [11], "encoder_input_tokens": [1]}, 12)]
    assert fitted_widths(batches) == {"decoder": 12, "encoder": 8}  # 16 capped at 12; 1 -> 8


def test_a_batch_wider_than_fitted_passes_whole_and_is_said_once(caplog):
    trim = Trimmer({"decoder": 8})
    narrow = _batch({"decoder_target_tokens": [5, 8]}, 32)
    assert trim(narrow)["decoder_target_tokens"].shape == (2, 8)
    wide = _batch({"decoder_target_tokens": [9]}, 32)
    with caplog.at_level(logging.WARNING):
        assert trim(wide) is wide and trim(wide) is wide
    assert len([r for r in caplog.records if "full width" in r.message]) == 1


@pytest.mark.parametrize("preset", ["gpt2-tiny", "t5-tiny"])
def test_trimmed_batches_are_the_full_ones_less_all_zero_columns(preset, vocabulary_path):
    config = get_preset(preset)
    vocabulary = vocabulary_for_model(config, vocabulary_path(config))
    provider = seqio_provider(TASK, vocabulary)
    converter = build_model(config).feature_converter(vocabulary)
    full_data = DataConfig(TASK, LONG, batch_size=4)
    full = BatchIterator(provider, converter, full_data)
    trimmed = BatchIterator(provider, converter, DataConfig(TASK, LONG, batch_size=4,
                                                            trim_padding=True))
    try:
        widths = trimmed.widths
        # The widths are the split's longest converted example, rounded up to 8.
        longest: dict[str, int] = {}
        for batch in split_batches(provider, converter, full_data):
            for sequence, width in needed_widths(batch).items():
                longest[sequence] = max(longest.get(sequence, 0), width)
        assert widths == {s: -(-n // 8) * 8 for s, n in longest.items()}
        assert all(width < 2 * 128 for width in widths.values())
        for _ in range(6):
            whole, cut = next(full), next(trimmed)
            assert set(whole) == set(cut)
            for name, values in whole.items():
                width = cut[name].shape[1]
                assert width == widths[name.split("_")[0]]
                np.testing.assert_array_equal(cut[name], values[:, :width])
                assert not values[:, width:].any(), name
    finally:
        full.close()
        trimmed.close()


@pytest.mark.scale  # two whole training runs per family
@pytest.mark.parametrize("preset", ["llama-tiny", "ul2-tiny"])
def test_training_on_trimmed_batches_equals_full_width(tmp_path, run_training, preset):
    # A shorter reduction may round differently; Adam's tiny default eps would blow that up on
    # weights whose gradient is all but zero, so the comparison uses a larger one.
    optimizer = optim.OptimizerConfig("adamw", optim.ScheduleConfig(3e-3), eps=1e-3)
    full = run_training(tmp_path / "full", preset, steps=3, optimizer=optimizer,
                        data=DataConfig(TASK, LONG, batch_size=4))
    trimmed = run_training(tmp_path / "trimmed", preset, steps=3, optimizer=optimizer,
                           data=DataConfig(TASK, LONG, batch_size=4, trim_padding=True))
    for step in (1, 2, 3):
        assert trimmed.losses[step] == pytest.approx(full.losses[step], abs=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 trimmed.state.params, full.state.params)
    # What a step ran over: fewer tokens than the feature lengths hold.
    assert sum(trimmed.sequence_lengths) < sum(full.sequence_lengths)
    assert full.last_metrics["tokens_per_second"] > 0
