"""Exact amounts of imitation data, counted in every model's own tokens.

Amounts are fixed in examples (the first N in file order, so a larger amount contains every
smaller one) and reported in each model's vocabulary and in one reference vocabulary, because
GPT-2, LLaMA and T5 split the same text into different numbers of tokens. A study that sweeps
token amounts, as the paper did (0.3M to 150M), converts each amount to a number of examples
once, in the reference vocabulary, and every model then trains on exactly those examples.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from typing import Iterable, Mapping, Sequence

import numpy as np
import seqio

FEATURES = ("inputs", "targets")


@dataclasses.dataclass(frozen=True)
class TokenCount:
    examples: int
    inputs: int
    targets: int

    @property
    def total(self) -> int:
        return self.inputs + self.targets

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


def example_lengths(examples: Iterable[Mapping[str, str]],
                    vocabulary: seqio.Vocabulary) -> np.ndarray:
    """Token lengths of each example's `inputs` and `targets` (without EOS): [examples, 2]."""
    return np.array([[len(vocabulary.encode(example[name])) for name in FEATURES]
                     for example in examples], dtype=np.int64).reshape(-1, 2)


def count_tokens(examples: Sequence[Mapping[str, str]],
                 vocabularies: Mapping[str, seqio.Vocabulary]) -> dict[str, TokenCount]:
    """The same examples counted in each named vocabulary."""
    counts = {}
    for name, vocabulary in vocabularies.items():
        inputs, targets = example_lengths(examples, vocabulary).sum(axis=0)
        counts[name] = TokenCount(len(examples), int(inputs), int(targets))
    return counts


def examples_within_tokens(examples: Sequence[Mapping[str, str]], vocabulary: seqio.Vocabulary,
                           max_tokens: int, feature: str = "total") -> TokenCount:
    """The longest prefix of `examples` whose tokens (`inputs`, `targets` or `total`) fit
    `max_tokens` in `vocabulary`. Raises when not even the first example fits."""
    if feature not in (*FEATURES, "total"):
        raise ValueError(f"feature must be inputs, targets or total, got {feature!r}")
    lengths = example_lengths(examples, vocabulary)  # [examples, 2]
    per_example = lengths.sum(axis=1) if feature == "total" else lengths[:, FEATURES.index(feature)]
    cumulative = list(itertools.accumulate(per_example.tolist()))
    n = bisect.bisect_right(cumulative, max_tokens)
    if n == 0:
        first = cumulative[0] if cumulative else 0
        raise ValueError(f"a budget of {max_tokens} {feature} tokens holds no example (the first "
                         f"has {first}; {len(examples)} examples available)")
    inputs, targets = lengths[:n].sum(axis=0)
    return TokenCount(n, int(inputs), int(targets))
