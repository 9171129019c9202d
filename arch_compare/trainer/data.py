"""Batches from a seqio task or mixture, with a position that checkpoints can store.

The pipeline is deterministic for a given seed (seqio's seeded shuffle, tf.data's deterministic
order), so the iterator's state is just the number of batches it has produced: a restored run
rebuilds the pipeline and skips that many, and sees exactly the batches an uninterrupted run would.

On several hosts every process builds the same pipeline and produces the same global batch; the
trainer hands each device only its block of rows (`partitioning.global_array`), so each host feeds
its own devices and a batch holds the same examples whatever the number of processes (a study on
two hosts records what it records on one). Tokenizing the whole global batch on every host costs
little next to a step of the model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf


class _RestartWarningFilter(logging.Filter):
    """seqio warns that an uncached FunctionDataSource reshuffles differently after a restart.
    Not here: a restored iterator rebuilds the same seeded pipeline and skips the batches it had
    produced, so a restart sees exactly the batches it would have seen."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset for training" not in record.getMessage()


logging.getLogger("absl").addFilter(_RestartWarningFilter())


@dataclasses.dataclass(frozen=True)
class DataConfig:
    task: str  # a registered task or mixture name (arch_compare_tasks)
    feature_lengths: Mapping[str, int]  # {"inputs": ..., "targets": ...}
    batch_size: int
    split: str = "train"
    seed: int = 0
    shuffle: bool = True
    pack: bool = False

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if set(self.feature_lengths) != {"inputs", "targets"}:
            raise ValueError(f"feature_lengths needs exactly 'inputs' and 'targets', got "
                             f"{sorted(self.feature_lengths)}")


class BatchIterator:
    """Endless numpy batches in model-feature form; `position` batches have been produced."""

    def __init__(self, provider: seqio.DatasetProviderBase, converter: seqio.FeatureConverter,
                 config: DataConfig, position: int = 0):
        self.config = config
        self.position = position
        dataset = provider.get_dataset(dict(config.feature_lengths), split=config.split,
                                       shuffle=config.shuffle, seed=config.seed,
                                       num_epochs=None, use_cached=False)
        dataset = converter(dataset, dict(config.feature_lengths))
        dataset = dataset.batch(config.batch_size, drop_remainder=True)
        options = tf.data.Options()
        options.deterministic = True
        self._batches: Iterator[dict[str, np.ndarray]] = (
            dataset.with_options(options).skip(position).as_numpy_iterator())

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._batches)
        self.position += 1
        return batch
