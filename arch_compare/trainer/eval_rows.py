"""An evaluation task's examples, read, tokenized and converted once per process.

A study evaluates every run of a model on the same tasks, with the same vocabulary and feature
converter; building the tf.data pipeline and tokenizing the examples again took about a second
per run and task set on a 2-core machine, a third of a tiny run's evaluation. The rows are kept
for as long as the task's records, vocabulary and converter are the same objects (a task
registered again reads its records again, `arch_compare_tasks.registry.records`).
"""

from __future__ import annotations

import collections
from typing import Any, Mapping

import numpy as np
import seqio

from arch_compare.data.iterators import numpy_iterator
from arch_compare_tasks.registry import records, seqio_task

# Tasks x vocabularies x converters kept; evaluation sets are small (hundreds of rows each).
CACHE_SIZE = 64
_cache: collections.OrderedDict[tuple, tuple[tuple[Any, ...], list]] = collections.OrderedDict()

Row = tuple[int, dict[str, Any]]  # (index in the split, converted features + "text:<name>")


def converted_rows(task_name: str, vocabulary: seqio.Vocabulary, converter: seqio.FeatureConverter,
                   lengths: Mapping[str, int], split: str) -> list[Row]:
    """Every example of the split in order: its model features beside its text features."""
    task = seqio_task(task_name, vocabulary)
    pinned = (task, records(task_name, split), vocabulary)  # alive while cached: ids stay unique
    key = (task_name, split, tuple(sorted(lengths.items())), converter.signature,
           *map(id, pinned))
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit[1]
    examples = task.get_dataset(dict(lengths), split=split, shuffle=False, use_cached=False)
    converted = converter(examples, dict(lengths))
    # Same order on both sides (no shuffling, no packing): the text beside its model features.
    rows = [(index, {**converted_row, **{f"text:{name}": value for name, value in row.items()
                                         if np.ndim(value) == 0}})
            for index, (row, converted_row) in enumerate(zip(numpy_iterator(examples),
                                                             numpy_iterator(converted)))]
    _cache[key] = (pinned, rows)
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return rows
