"""Batches from a seqio task or mixture, with a position that checkpoints can store.

The pipeline is deterministic for a given seed (a seeded shuffle, tf.data's deterministic order),
so the iterator's state is just the number of batches it has produced: a restored run rebuilds the
pipeline and skips that many, and sees exactly the batches an uninterrupted run would.

Each task of the provider is read as follows (`task_examples`), which is seqio's own order with
three changes that make small amounts cheap and oversized records harmless:

    text records -> cut to the feature lengths' character bound -> tokenize (the task's
    pre-cache preprocessors) -> cache in memory -> shuffle one epoch -> repeat -> the task's
    post-cache preprocessors (EOS) -> trim to the feature lengths

- A record's text is cut to `CHARS_PER_TOKEN` characters per token of its feature's length before
  tokenizing, so a 5 MB string never reaches the tokenizer whole. No token of the project's
  vocabularies spans that many characters, so a cut record still fills its feature length and a
  record within the bound is left exactly as it was. How many records were cut is counted
  (`BatchIterator.stats`) and said once per run.
- The tokenized split is cached in memory before it is repeated: every epoch after the first reads
  the cache instead of tokenizing again (a single pass, as for a validation loss, is not cached).
  The text records are in memory already (the task registry loads them once), and the tokens take
  about as much room again.
- The shuffle buffer holds min(SHUFFLE_BUFFER, examples) and shuffles each epoch before it is
  repeated, so every example is seen once per epoch; seqio repeats first and fills a
  1,000-example buffer, which for 8 examples meant reading (and tokenizing) the split 125 times
  before the first batch, and let a 2-step run see some examples twice and others never.

A mixture samples its tasks, each read as above, at the mixture's rates (seqio's
`sample_from_datasets`), keeping the features the mixture's tasks share.

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

from arch_compare.data.iterators import numpy_iterator
from arch_compare.trainer.widths import Trimmer, fitted_widths

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 1000  # examples, at most (seqio's default); fewer when the split is smaller
# Characters of text kept per token of a feature's length. The longest tokens of GPT-2's
# byte-level BPE, LLaMA's and T5's SentencePiece models span well under 64 characters, so the
# first `length` tokens of a cut text are those of the whole text.
CHARS_PER_TOKEN = 64


@dataclasses.dataclass(frozen=True)
class DataConfig:
    task: str  # a registered task or mixture name (arch_compare_tasks)
    feature_lengths: Mapping[str, int]  # {"inputs": ..., "targets": ...}
    batch_size: int
    split: str = "train"
    seed: int = 0
    shuffle: bool = True
    pack: bool = False
    # Cut each batch's trailing padding down to the split's longest example (trainer/widths.py):
    # one pass over the split before training, then every step computes less.
    trim_padding: bool = False

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if set(self.feature_lengths) != {"inputs", "targets"}:
            raise ValueError(f"feature_lengths needs exactly 'inputs' and 'targets', got "
                             f"{sorted(self.feature_lengths)}")


@dataclasses.dataclass(frozen=True)
class SplitStats:
    """What one task's split held: its examples, and how many had text cut before tokenizing."""

    task: str
    examples: int
    cut: int
    char_limits: Mapping[str, int]  # feature -> characters kept

    def describe(self) -> str:
        limits = " / ".join(f"{name} {chars:,}" for name, chars in self.char_limits.items())
        return (f"{self.task.split('#')[0]}: {self.cut} of {self.examples} examples had text "
                f"longer than the feature lengths can hold; cut to {limits} characters before "
                f"tokenizing")


def char_limits(feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """feature -> the characters of text kept for a feature of that many tokens."""
    return {name: CHARS_PER_TOKEN * int(length) for name, length in feature_lengths.items()}


def _text_features(dataset: tf.data.Dataset, limits: Mapping[str, int]) -> list[str]:
    spec = dataset.element_spec
    return [name for name in limits
            if name in spec and spec[name].dtype == tf.string and spec[name].shape.rank == 0]


def _cut(limits: Mapping[str, int], features: list[str]):
    def cut(example):
        return {**example, **{name: tf.strings.substr(example[name], 0, limits[name],
                                                       unit="UTF8_CHAR")
                              for name in features}}
    return cut


def _count(dataset: tf.data.Dataset, limits: Mapping[str, int],
           features: list[str]) -> tuple[int, int]:
    """(examples, examples with some text over its limit): one pass over the text records."""
    def over(example):
        lengths = [tf.strings.length(example[name], unit="UTF8_CHAR") > limits[name]
                   for name in features]
        return tf.cast(tf.reduce_any(tf.stack(lengths)) if lengths else False, tf.int64)

    examples, cut = dataset.map(over, num_parallel_calls=tf.data.AUTOTUNE).reduce(
        (np.int64(0), np.int64(0)), lambda total, flag: (total[0] + 1, total[1] + flag))
    return int(examples), int(cut)


def task_examples(task: seqio.Task, feature_lengths: Mapping[str, int], split: str, *,
                  shuffle: bool, seed: int, repeat: bool) -> tuple[tf.data.Dataset, SplitStats]:
    """One task's tokenized examples (see the module docstring for the order of the steps)."""
    lengths, limits = dict(feature_lengths), char_limits(feature_lengths)
    source = task.source.get_dataset(split=split, shuffle=False, seed=seed)
    features = _text_features(source, limits)
    examples, cut = _count(source, limits, features)
    stats = SplitStats(task.name, examples, cut, {name: limits[name] for name in features})
    dataset = source.map(_cut(limits, features), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = task.preprocess_precache(dataset, seed=seed)
    if repeat:  # later epochs read the tokens from here; a single pass has nothing to reuse
        dataset = dataset.cache()
    if shuffle and examples > 1:
        dataset = dataset.shuffle(min(SHUFFLE_BUFFER, examples), seed=seed,
                                  reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = task.preprocess_postcache(dataset, sequence_length=lengths, seed=seed)
    return seqio.utils.trim_dataset(dataset, lengths, task.output_features), stats


def _task_examples(provider: seqio.DatasetProviderBase, feature_lengths: Mapping[str, int],
                   split: str, *, shuffle: bool, seed: int,
                   repeat: bool) -> list[tuple[seqio.Task, tf.data.Dataset, SplitStats]]:
    """`task_examples` of the provider's task, or of each of a mixture's tasks that has the split
    (keeping the features every task of the mixture carries)."""
    if isinstance(provider, seqio.Task):
        return [(provider, *task_examples(provider, feature_lengths, split, shuffle=shuffle,
                                          seed=seed, repeat=repeat))]
    if not isinstance(provider, seqio.Mixture):
        raise TypeError(f"expected a seqio Task or Mixture, got {type(provider).__name__}")
    tasks = [task for task in provider.tasks if split in task.splits]
    if not tasks:
        raise ValueError(f"mixture {provider.name!r}: no task has a {split!r} split")
    keep = set(provider.output_features)  # what every task of the mixture carries
    each = []
    for task in tasks:
        dataset, stats = task_examples(task, feature_lengths, split, shuffle=shuffle, seed=seed,
                                       repeat=repeat)
        each.append((task, dataset.map(lambda ex: {k: v for k, v in ex.items() if k in keep}),
                     stats))
    return each


def provider_examples(provider: seqio.DatasetProviderBase, feature_lengths: Mapping[str, int],
                      split: str, *, shuffle: bool, seed: int,
                      repeat: bool) -> tuple[tf.data.Dataset, list[SplitStats]]:
    """A task's examples, or a mixture's tasks sampled at its rates."""
    each = _task_examples(provider, feature_lengths, split, shuffle=shuffle, seed=seed,
                          repeat=repeat)
    stats = [task_stats for _, _, task_stats in each]
    if isinstance(provider, seqio.Task):
        return each[0][1], stats
    return tf.data.Dataset.sample_from_datasets(
        [dataset for _, dataset, _ in each], [provider.get_rate(task) for task, _, _ in each],
        seed=seed, stop_on_empty_dataset=True), stats


def split_batches(provider: seqio.DatasetProviderBase, converter: seqio.FeatureConverter,
                  config: DataConfig, rows: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """Every example of the split once, converted, in batches of `rows` (a mixture: each of its
    tasks in turn, not sampled at its rates)."""
    for _, dataset, _ in _task_examples(provider, config.feature_lengths, config.split,
                                        shuffle=False, seed=config.seed, repeat=False):
        yield from numpy_iterator(converter(dataset, dict(config.feature_lengths)).batch(rows))


class BatchIterator:
    """Endless numpy batches in model-feature form; `position` batches have been produced.

    `stats` says, per task, how many examples the split holds and how many were cut."""

    def __init__(self, provider: seqio.DatasetProviderBase, converter: seqio.FeatureConverter,
                 config: DataConfig, position: int = 0):
        self.config = config
        self.position = position
        dataset, self.stats = provider_examples(provider, config.feature_lengths, config.split,
                                                shuffle=config.shuffle, seed=config.seed,
                                                repeat=True)
        for stats in self.stats:
            if stats.cut:
                log.warning("%s", stats.describe())
        dataset = converter(dataset, dict(config.feature_lengths))
        dataset = dataset.batch(config.batch_size, drop_remainder=True)
        self._batches: Iterator[dict[str, np.ndarray]] | None = numpy_iterator(
            dataset.skip(position), deterministic=True)
        self._trim = (Trimmer(fitted_widths(split_batches(provider, converter, config)))
                      if config.trim_padding else None)

    @property
    def widths(self) -> dict[str, int] | None:
        """sequence ('encoder', 'decoder') -> the width batches are cut to; None: not cut."""
        return self._trim.widths if self._trim else None

    @property
    def cut_records(self) -> int:
        return sum(stats.cut for stats in self.stats)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._batches is None:
            raise StopIteration
        batch = next(self._batches)
        self.position += 1
        return self._trim(batch) if self._trim else batch

    def close(self) -> None:
        """Drop the tf.data iterator now (idempotent). One left alive until the interpreter exits
        can hang the exit: its background threads call back into Python to tokenize."""
        self._batches = None
