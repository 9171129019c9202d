"""Reading a tf.data pipeline into numpy: every pipeline the framework reads goes through here.

`numpy_iterator(dataset)` is `dataset.as_numpy_iterator()` with tf.data's autotuning switched
off. With autotuning on (tf.data's default), dropping a training run's iterator at the end of the
run blocked for 5-20 s in the offline demo (2-core AMD EPYC, TensorFlow 2.21; found with
py-spy: 300 s of one demo run in `BatchIterator.close`): almost every imitation run's training
ended 41-42 s after it began, whether its steps took 21 s or 28 s, 256 steps or 342, and one that
needed 42 s ended at 82 s. Those times are the wake-ups of tf.data's autotuning thread, whose
sleep between optimisation rounds doubles from 10 ms (10 ms x (2^12 - 1) = 41 s), so deleting
the iterator appears to wait for that thread's current sleep. With autotuning off the same
study's runs end when their steps do, and every metric of the demo came out identical.
The wait did not show in every process (a lone training run of the same data often closed at
once), so no test times it; `make demo`'s time is where it shows.

Our pipelines are tokenisation and feature conversion of small text records: with tf.data's
fixed default parallelism they produce batches far faster than a model consumes them, and the
order of elements does not depend on autotuning.
"""

from __future__ import annotations

from typing import Iterator

import tensorflow as tf


def without_autotune(dataset: tf.data.Dataset, *, deterministic: bool | None = None
                     ) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off (and its `deterministic` option when given)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    if deterministic is not None:
        options.deterministic = deterministic
    return dataset.with_options(options)


def numpy_iterator(dataset: tf.data.Dataset, *, deterministic: bool | None = None
                   ) -> Iterator:
    """`dataset`'s elements as numpy, from an iterator whose deletion returns at once."""
    return without_autotune(dataset, deterministic=deterministic).as_numpy_iterator()
