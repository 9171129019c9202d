"""95% intervals for the numbers a study reports.

A metric that is a share of examples (accuracy, pass rate, "lists when the target lists") is
returned by its metric function as a `Proportion`: a float percentage that remembers how many of
how many examples it counts, so its interval is Wilson's score interval without re-scoring.
Anything else (a correlation, a mean length) gets the percentile bootstrap over examples, and two
runs on the same examples are compared by the paired bootstrap (the same resampled examples for
both). The intervals cover the sampling of examples only, not the variation between training runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


class Proportion(float):
    """`100 * hits / n` as a float (NaN when n is 0) that keeps `hits` and `n`.

    Everything that takes a float takes it; `float(p)` drops the counts.
    """

    hits: int
    n: int

    def __new__(cls, hits: int, n: int) -> "Proportion":
        if n < 0 or hits < 0 or hits > n:
            raise ValueError(f"a proportion needs 0 <= hits <= n, got {hits} of {n}")
        value = super().__new__(cls, 100.0 * hits / n if n else math.nan)
        value.hits, value.n = int(hits), int(n)
        return value

    def __reduce__(self):
        return Proportion, (self.hits, self.n)

    def __repr__(self) -> str:
        return f"Proportion({self.hits}/{self.n} = {float(self):.1f}%)"

    __str__ = float.__repr__  # printed, it is the number


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for `hits` of `n`, in percent; (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


# --- a metric's value with its interval -----------------------------------------------------------

METHODS = ("wilson", "bootstrap", None)
RESAMPLES = 1000


@dataclasses.dataclass(frozen=True)
class MetricValue:
    """A metric's value and its 95% interval (NaN bounds where unknown or undefined).

    `n`: the examples behind it (for a Proportion, those it counts: "lists when the target lists"
    counts only the prompts where the target lists). `method`: how the interval was made, or None
    when there is none (a value recorded without its examples).
    """

    value: float
    low: float = math.nan
    high: float = math.nan
    n: int | None = None
    method: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"MetricValue: method must be one of {METHODS}, "
                             f"got {self.method!r}")

    def __float__(self) -> float:
        return float(self.value)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """`difference` = metric(A) - metric(B) on the same examples, its 95% paired-bootstrap
    interval, and whether that interval excludes 0 (NaN bounds: never significant)."""

    difference: float
    low: float
    high: float
    significant: bool


MetricFn = Callable[[Sequence, Sequence], Mapping[str, float]]


def _percentiles(samples: np.ndarray) -> tuple[float, float]:
    """2.5th and 97.5th percentiles over the finite resamples (a resample whose metric is
    undefined, such as a correlation of constant lengths, is left out); NaN if none is."""
    finite = samples[np.isfinite(samples)]  # [<= resamples]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    if n == 0:
        raise ValueError("bootstrap: no examples to resample")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # [resamples, n]


def _per_example_counts(metric_fn: MetricFn, targets: Sequence, outputs: Sequence,
                        whole: Mapping[str, float]) -> dict[str, np.ndarray] | None:
    """For a metric function whose every value is a Proportion (a share of examples): each
    example's (hits, counted) per metric, from calling it on that example alone, so a resample's
    value is a sum rather than a re-scoring. None when that does not add up to the whole (the
    function is not a plain share of examples): then the caller re-scores every resample."""
    if not whole or not all(isinstance(v, Proportion) for v in whole.values()):
        return None
    rows = [metric_fn([t], [o]) for t, o in zip(targets, outputs)]
    counts = {}
    for name, value in whole.items():
        singles = [row.get(name) for row in rows]
        if not all(isinstance(s, Proportion) for s in singles):
            return None
        hits = np.array([s.hits for s in singles])  # [n]
        counted = np.array([s.n for s in singles])  # [n]
        if hits.sum() != value.hits or counted.sum() != value.n:
            return None
        counts[name] = np.stack([hits, counted])  # [2, n]
    return counts


def _resampled(metric_fn: MetricFn, targets: Sequence, outputs: Sequence,
               indices: np.ndarray, whole: Mapping[str, float]) -> dict[str, np.ndarray]:
    """name -> the metric on every resample, [resamples] (NaN where undefined). A metric
    function may carry `resample(targets, outputs, indices) -> {name: [resamples]}`, a vectorised
    twin of calling it on every resample (its tests check they agree): then that is used."""
    vectorised = getattr(metric_fn, "resample", None)
    if vectorised is not None:
        return {name: np.asarray(values, dtype=np.float64)
                for name, values in vectorised(targets, outputs, indices).items()}
    counts = _per_example_counts(metric_fn, targets, outputs, whole)
    if counts is not None:
        result = {}
        for name, (hits, counted) in counts.items():
            numerator, denominator = hits[indices].sum(1), counted[indices].sum(1)  # [resamples]
            with np.errstate(invalid="ignore", divide="ignore"):
                result[name] = np.where(denominator > 0, 100.0 * numerator / denominator, np.nan)
        return result
    samples = {name: np.full(len(indices), np.nan) for name in whole}
    for r, row in enumerate(indices):
        values = metric_fn([targets[i] for i in row], [outputs[i] for i in row])
        for name in samples:
            value = values.get(name)
            samples[name][r] = math.nan if value is None else float(value)
    return samples


def bootstrap(metric_fn: MetricFn, targets: Sequence, outputs: Sequence, *,
              resamples: int = RESAMPLES, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over examples: name -> 95% interval of each metric `metric_fn`
    returns, recomputed on `resamples` resamples (with replacement) of the postprocessed
    `targets` and `outputs`. Deterministic for a given `seed`."""
    if len(targets) != len(outputs):
        raise ValueError(f"bootstrap: {len(targets)} targets but {len(outputs)} outputs")
    _, samples = resampled(metric_fn, targets, outputs, resamples=resamples, seed=seed)
    return {name: _percentiles(values) for name, values in samples.items()}


def metric_values(metric_fn: MetricFn, targets: Sequence, outputs: Sequence, *,
                  resamples: int = RESAMPLES, seed: int = 0) -> dict[str, MetricValue]:
    """Each metric of `metric_fn` with its 95% interval: Wilson's for a Proportion (no
    resampling), the percentile bootstrap over examples for anything else."""
    whole = metric_fn(targets, outputs)
    needs_bootstrap = [name for name, value in whole.items() if not isinstance(value, Proportion)]
    intervals = {}
    if needs_bootstrap:
        indices = _indices(len(targets), resamples, seed)
        intervals = {name: _percentiles(samples) for name, samples in _resampled(
            metric_fn, targets, outputs, indices, whole).items()}
    result = {}
    for name, value in whole.items():
        if isinstance(value, Proportion):
            result[name] = as_metric_value(value)
        else:
            value = math.nan if value is None else float(value)
            result[name] = MetricValue(value, *intervals[name], len(targets), "bootstrap")
    return result


def resampled(metric_fn: MetricFn, targets: Sequence, outputs: Sequence, *,
              resamples: int = RESAMPLES, seed: int = 0
              ) -> tuple[Mapping[str, float], dict[str, np.ndarray]]:
    """The metrics on all examples and on each resample ([resamples] per name). The resampled
    examples depend only on (number of examples, resamples, seed), so two runs resampled with
    the same seed are paired: `paired_differences` of the two is the paired bootstrap."""
    whole = metric_fn(targets, outputs)
    indices = _indices(len(targets), resamples, seed)
    return whole, _resampled(metric_fn, targets, outputs, indices, whole)


def as_metric_value(value: float | MetricValue | None) -> MetricValue:
    """A metric function's value as a MetricValue: a Proportion gets Wilson's interval; a bare
    number (one scored elsewhere, such as by seqio's Evaluator) none."""
    if isinstance(value, MetricValue):
        return value
    if isinstance(value, Proportion):
        return MetricValue(float(value), *wilson(value.hits, value.n), value.n, "wilson")
    return MetricValue(math.nan if value is None else float(value))


def paired_differences(a: tuple[Mapping[str, float], dict[str, np.ndarray]],
                       b: tuple[Mapping[str, float], dict[str, np.ndarray]]
                       ) -> dict[str, PairedDifference]:
    """metric(A) - metric(B) from two `resampled` results over the same resampled examples."""
    (whole_a, samples_a), (whole_b, samples_b) = a, b
    result = {}
    for name in whole_a:
        if name not in whole_b:
            continue
        value_a, value_b = whole_a[name], whole_b[name]
        difference = (math.nan if value_a is None or value_b is None
                      else float(value_a) - float(value_b))
        low, high = _percentiles(samples_a[name] - samples_b[name])
        result[name] = PairedDifference(difference, low, high,
                                        bool(low > 0 or high < 0))  # NaN compares False
    return result


def paired_bootstrap(metric_fn: MetricFn, targets: Sequence, outputs_a: Sequence,
                     outputs_b: Sequence, *, resamples: int = RESAMPLES, seed: int = 0
                     ) -> dict[str, PairedDifference]:
    """Paired bootstrap of metric(A) - metric(B), two runs' outputs on the same examples: each
    resample draws the same examples for both runs, so what the examples share cancels out."""
    if not len(targets) == len(outputs_a) == len(outputs_b):
        raise ValueError(f"paired_bootstrap: {len(targets)} targets, {len(outputs_a)} outputs "
                         f"of A and {len(outputs_b)} of B")
    return paired_differences(
        resampled(metric_fn, targets, outputs_a, resamples=resamples, seed=seed),
        resampled(metric_fn, targets, outputs_b, resamples=resamples, seed=seed))
