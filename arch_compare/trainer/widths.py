"""Batches cut down to the width their split needs (`DataConfig.trim_padding`).

A converted batch is as wide as the feature lengths allow, whatever its examples hold: imitation
answers of 60 tokens in a 64 + 64 decoder sequence leave half of every row padding, and the step
computes over it. Trimming drops the trailing columns no example of the split uses, so the step
is compiled once, for the split's longest converted example (rounded up to `WIDTH_MULTIPLE`).

What is cut is padding in every feature (token id 0, loss weight 0): the models mask padded keys
and causal attention never looks ahead, so every real token's output is the one the full-width
batch gives (up to float rounding: XLA's reductions over a shorter axis may add in another order).

The features of one sequence share a width: `encoder_*` features one, `decoder_*` another (the
part of a converted feature's name before the first underscore). The split's widths come from one
pass over its examples, in order, before training starts; a later batch that needs more (a random
post-cache preprocessor could draw a longer example) is passed on whole, never cut.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)

# Widths are rounded up to this many tokens: a few shapes' worth of alignment for the compiler,
# and a split whose longest example grows by a token or two keeps its compiled width.
WIDTH_MULTIPLE = 8


def sequence_of(feature: str) -> str:
    """Which sequence a converted feature belongs to: 'encoder_input_tokens' -> 'encoder'."""
    return feature.split("_", 1)[0]


def needed_widths(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """sequence -> 1 + the last column any row of any of its features uses (0: none)."""
    widths: dict[str, int] = {}
    for feature, values in batch.items():
        used = np.flatnonzero(np.any(values.reshape(values.shape[0], values.shape[1], -1) != 0,
                                     axis=(0, 2)))  # [columns in use]
        width = int(used[-1]) + 1 if used.size else 0
        sequence = sequence_of(feature)
        widths[sequence] = max(widths.get(sequence, 0), width)
    return widths


def fitted_widths(batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, int]:
    """sequence -> the width a split's batches are cut to: the widest needed over `batches`,
    rounded up to WIDTH_MULTIPLE and never beyond the full width."""
    needed: dict[str, int] = {}
    full: dict[str, int] = {}
    for batch in batches:
        for sequence, width in needed_widths(batch).items():
            needed[sequence] = max(needed.get(sequence, 0), width)
        for feature, values in batch.items():
            full[sequence_of(feature)] = values.shape[1]
    return {sequence: min(full[sequence],
                          max(WIDTH_MULTIPLE, math.ceil(width / WIDTH_MULTIPLE) * WIDTH_MULTIPLE))
            for sequence, width in needed.items()}


class Trimmer:
    """Cuts batches to `widths`; a batch that needs more is returned whole (said once)."""

    def __init__(self, widths: Mapping[str, int]):
        self.widths = dict(widths)
        self._warned = False

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        needed = needed_widths(batch)
        if any(needed[sequence] > self.widths.get(sequence, 0) for sequence in needed):
            if not self._warned:
                log.warning("a batch needs widths %s, more than the %s fitted to its split; "
                            "it and any like it run at full width (one more compilation)",
                            needed, self.widths)
                self._warned = True
            return batch
        return {feature: values[:, :self.widths[sequence_of(feature)]]
                for feature, values in batch.items()}
