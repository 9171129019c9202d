"""95% intervals, against independent references: scipy's Wilson interval and its bootstrap."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats

from arch_compare.evaluation import intervals, metrics
from arch_compare.evaluation.intervals import MetricValue, Proportion


@pytest.mark.parametrize("hits, n", [(0, 10), (3, 10), (10, 10), (37, 150), (1, 1)])
def test_wilson_matches_scipy(hits, n):
    reference = stats.binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = intervals.wilson(hits, n)
    assert low == pytest.approx(100 * reference.low, abs=1e-9)
    assert high == pytest.approx(100 * reference.high, abs=1e-9)


def _mean(targets, outputs):
    return {"mean": float(np.mean(outputs))}


def test_bootstrap_of_a_mean_matches_scipy_percentile_bootstrap():
    values = list(np.random.default_rng(1).normal(3.0, 2.0, size=120))
    ours = intervals.bootstrap(_mean, [None] * len(values), values, resamples=2000, seed=0)
    reference = stats.bootstrap((np.array(values),), np.mean, n_resamples=2000,
                                method="percentile", rng=np.random.default_rng(5))
    standard_error = float(np.std(values) / math.sqrt(len(values)))
    low, high = ours["mean"]
    # Different resamples: agree to a small share of the standard error.
    assert low == pytest.approx(reference.confidence_interval.low, abs=0.15 * standard_error)
    assert high == pytest.approx(reference.confidence_interval.high, abs=0.15 * standard_error)
    assert intervals.bootstrap(_mean, [None] * len(values), values, resamples=2000,
                               seed=0) == ours  # a fixed seed reproduces


def test_the_counting_shortcut_equals_rescoring_every_resample():
    """A metric of Proportions is resampled by summing per-example counts; the result must be
    what re-running the metric function on every resample gives."""
    rng = np.random.default_rng(2)
    targets = ["- a\n- b" if rng.random() < 0.4 else "prose" for _ in range(60)]
    outputs = ["1. x\n2. y" if rng.random() < 0.5 else "text" for _ in range(60)]
    indices = intervals._indices(60, 200, 0)
    whole = metrics.list_usage_agreement(targets, outputs)
    fast = intervals._resampled(metrics.list_usage_agreement, targets, outputs, indices, whole)
    plain = lambda t, o: {k: float(v) for k, v in metrics.list_usage_agreement(t, o).items()}
    slow = intervals._resampled(plain, targets, outputs, indices, plain(targets, outputs))
    for name in whole:
        np.testing.assert_allclose(fast[name], slow[name], equal_nan=True)


def test_the_vectorised_length_correlation_equals_rescoring_every_resample():
    rng = np.random.default_rng(4)
    # Few distinct lengths: many ties, which the rank correlation must average.
    targets = [" ".join(["w"] * int(k)) for k in rng.integers(1, 5, size=40)]
    outputs = [" ".join(["w"] * int(k)) for k in rng.integers(1, 4, size=40)]
    indices = intervals._indices(40, 300, 1)
    whole = metrics.length_correlation(targets, outputs)
    fast = intervals._resampled(metrics.length_correlation, targets, outputs, indices, whole)
    plain = lambda t, o: metrics.length_correlation(t, o)  # no `resample`: re-scored each time
    slow = intervals._resampled(plain, targets, outputs, indices, whole)
    for name in whole:
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-12, atol=1e-12,
                                   equal_nan=True)


def test_metric_values_pick_wilson_for_proportions_and_bootstrap_otherwise():
    targets = ["one two three", "a b", "x y z w", "hello", "- a\n- b", "1. q\n2. r"]
    outputs = ["one", "a b c", "x y", "hi there you", "- a\n- b", "text"]
    values = intervals.metric_values(metrics.list_usage_agreement, targets, outputs)
    assert values["list_when_target_lists"] == MetricValue(
        50.0, *intervals.wilson(1, 2), 2, "wilson")
    lengths = intervals.metric_values(metrics.length_correlation, targets, outputs)
    pearson = lengths["length_pearson"]
    assert pearson.method == "bootstrap" and pearson.n == 6
    assert pearson.low <= pearson.value <= pearson.high


def test_undefined_values_stay_nan_and_do_not_break_the_bootstrap():
    # No target lists: the conditional rate is undefined, its interval too.
    values = intervals.metric_values(metrics.list_usage_agreement, ["a", "b"], ["c", "- d\n- e"])
    assert math.isnan(values["list_when_target_lists"].value)
    assert math.isnan(values["list_when_target_lists"].low)
    # Constant lengths make every resample's correlation NaN: NaN bounds, no error.
    lengths = intervals.bootstrap(metrics.length_correlation, ["a b"] * 5, ["c"] * 5)
    assert all(math.isnan(bound) for bound in lengths["length_pearson"])


def test_paired_bootstrap_identical_runs_and_a_clearly_better_run():
    targets = [str(i) for i in range(100)]
    worse = [str(i) if i % 3 == 0 else "wrong" for i in range(100)]     # 34%
    better = [str(i) if i % 10 else "wrong" for i in range(100)]         # 90%
    same = intervals.paired_bootstrap(metrics.exact_match, targets, worse, list(worse))
    assert same["exact_match"] == intervals.PairedDifference(0.0, 0.0, 0.0, False)
    better_minus_worse = intervals.paired_bootstrap(metrics.exact_match, targets, better, worse)
    difference = better_minus_worse["exact_match"]
    assert difference.difference == pytest.approx(90 - 34)
    assert difference.significant and 0 < difference.low < difference.difference < difference.high
    # Two runs differing on 2 of 100 examples are not told apart.
    close = [str(i) if i % 3 == 0 or i in (1, 2) else "wrong" for i in range(100)]
    assert not intervals.paired_bootstrap(metrics.exact_match, targets, close,
                                          worse)["exact_match"].significant


def test_intervals_for_a_task_of_150_examples_take_well_under_a_second():
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "- item", "1. item"]
    targets = ["\n".join(rng.choice(words, size=rng.integers(1, 8))) for _ in range(150)]
    outputs = ["\n".join(rng.choice(words, size=rng.integers(1, 8))) for _ in range(150)]
    other = list(reversed(outputs))
    began = time.perf_counter()
    for fn in (metrics.list_usage_agreement, metrics.length_correlation, metrics.exact_match):
        intervals.metric_values(fn, targets, outputs)
        intervals.paired_bootstrap(fn, targets, outputs, other)
    assert time.perf_counter() - began < 2.0


def test_proportion_keeps_its_counts_through_metric_functions():
    value = metrics.exact_match(["a", "b", "c"], ["a", "x", "c"])["exact_match"]
    assert isinstance(value, Proportion) and (value.hits, value.n) == (2, 3)
    assert value == pytest.approx(200 / 3)
