"""Pipelines read without tf.data's autotuning: same elements, same order, the option set."""

import numpy as np
import tensorflow as tf

from arch_compare.data.iterators import numpy_iterator, without_autotune


def _pipeline() -> tf.data.Dataset:
    numbers = tf.data.Dataset.range(40).shuffle(40, seed=3)
    return numbers.map(lambda x: {"x": x, "square": x * x},
                       num_parallel_calls=tf.data.AUTOTUNE).batch(8)


def test_elements_and_order_are_those_of_the_autotuned_pipeline():
    ours = list(numpy_iterator(_pipeline(), deterministic=True))
    theirs = list(_pipeline().as_numpy_iterator())
    assert len(ours) == len(theirs) == 5
    for mine, reference in zip(ours, theirs):
        np.testing.assert_array_equal(mine["x"], reference["x"])
        np.testing.assert_array_equal(mine["square"], reference["x"] ** 2)


def test_autotune_is_off_and_determinism_is_passed_through():
    default = _pipeline().options()
    assert default.autotune.enabled is None  # tf.data's default: on
    for deterministic in (True, False):
        options = without_autotune(_pipeline(), deterministic=deterministic).options()
        assert options.autotune.enabled is False
        assert options.deterministic is deterministic
    assert without_autotune(_pipeline()).options().deterministic is None  # left as it was
