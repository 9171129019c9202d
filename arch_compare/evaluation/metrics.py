"""Metric functions in seqio's convention: `fn(targets, predictions) -> {name: value}`.

Scoring metrics take `fn(targets, scores)` instead, where `scores` are the model's log-likelihoods,
so `seqio.Evaluator` can run either kind unchanged. Rates and accuracies are percentages (0-100),
as in t5/seqio's own metrics, returned as `Proportion`s (floats that keep their counts, so their
interval is Wilson's; see `intervals.py`); correlations are in [-1, 1].

What the paper (Gudibande et al. 2023) measures and where it lives here:
- Natural Questions, 3-shot exact match: `normalize_answer`, `first_line_answer`, `exact_match`.
- MMLU, 5-shot rank classification: `rank_classification_accuracy`, `subject_accuracy`,
  `group_choice_scores` (for seqio's one-row-per-choice layout).
- Style convergence towards the target (its Table 2 and section 4): `uses_list`,
  `list_usage_agreement`, `length_correlation`.
"""

from __future__ import annotations

import collections
import math
import operator
import re
import string
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

from arch_compare.evaluation.intervals import Proportion

# --- open-domain QA: normalisation and exact match -----------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# Few-shot prompts continue "Q: ...\nA: ...", so a free-running generation starts the next shot.
_NEXT_SHOT = re.compile(r"\n|\bQ:")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation, which ORQA/DPR reuse for NQ-open exact match.

    Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace. The order
    matters: punctuation goes before articles so "the-end" becomes "theend", not "end".
    """
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_line_answer(prediction: str) -> str:
    """The answer part of a few-shot generation: its text before the first newline or next "Q:".

    Leading whitespace is dropped first, so a generation that opens with a line break still yields
    its first line of text rather than an empty answer.
    """
    return _NEXT_SHOT.split(prediction.lstrip(), maxsplit=1)[0].strip()


def _aliases(target: str | Sequence[str], index: int) -> list[str]:
    aliases = [target] if isinstance(target, str) else list(target)
    if not aliases or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f"exact_match: target {index} must be a string or a non-empty list of "
                         f"strings, got {target!r}")
    return aliases


def exact_match(targets: Sequence[str | Sequence[str]],
                predictions: Sequence[str]) -> dict[str, float]:
    """Percent of predictions whose normalised form equals any normalised alias of their target.

    Each target is one acceptable answer (a string) or a list of aliases (NQ-open's `answer`).
    """
    _check_paired("exact_match", targets, predictions)
    hits = [normalize_answer(p) in {normalize_answer(a) for a in _aliases(t, i)}
            for i, (t, p) in enumerate(zip(targets, predictions))]
    return {"exact_match": Proportion(sum(hits), len(hits))}


# --- multiple choice: rank classification --------------------------------------------------------

def predicted_choice(choice_scores: Sequence[float]) -> int:
    """Index of the highest-scoring choice; ties go to the lowest index (numpy's argmax rule).

    A fixed rule keeps results reproducible across runs and hardware; its bias towards early
    choices only shows when scores tie exactly, which a real model's log-likelihoods rarely do.
    """
    return int(np.argmax(np.asarray(choice_scores, dtype=np.float64)))


def _check_choice_scores(index: int, answer: int, choice_scores: Sequence[float]) -> None:
    row = np.asarray(choice_scores, dtype=np.float64)
    if row.ndim != 1 or row.size == 0:
        raise ValueError(f"rank classification: example {index} needs a non-empty 1-D sequence "
                         f"of per-choice scores, got shape {row.shape}")
    if np.isnan(row).any():
        raise ValueError(f"rank classification: example {index} has a NaN score: {row.tolist()}")
    if not 0 <= answer < row.size:
        raise ValueError(f"rank classification: example {index} has answer index {answer} but "
                         f"only {row.size} choice scores")


def _choice_hits(targets: Sequence[int], scores: Sequence[Sequence[float]]) -> list[bool]:
    _check_paired("rank_classification_accuracy", targets, scores)
    hits = []
    for i, (target, row) in enumerate(zip(targets, scores)):
        answer = operator.index(target)  # refuses floats such as 1.0 rather than truncating
        _check_choice_scores(i, answer, row)
        hits.append(predicted_choice(row) == answer)
    return hits


def rank_classification_accuracy(targets: Sequence[int],
                                 scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Percent of examples whose correct choice has the highest score.

    Layout: `targets[i]` is the index of example i's correct choice; `scores[i]` is the sequence
    of example i's per-choice log-likelihoods (higher is better), in choice order. Examples may
    have different numbers of choices. Ties: see `predicted_choice`.
    """
    hits = _choice_hits(targets, scores)
    return {"accuracy": Proportion(sum(hits), len(hits))}


def subject_accuracy(targets: Sequence[tuple[str, int]],
                     scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Rank-classification accuracy per subject, with micro and macro averages (MMLU reporting).

    `targets[i]` is `(subject, answer_index)`; scores as in `rank_classification_accuracy`.
    Micro averages over questions (Hendrycks et al.'s "average accuracy"); macro averages the
    subject accuracies, so small subjects weigh as much as large ones (as HELM reports).
    """
    _check_paired("subject_accuracy", targets, scores)
    subjects = [subject for subject, _ in targets]
    hits = _choice_hits([answer for _, answer in targets], scores)
    by_subject: dict[str, list[bool]] = collections.defaultdict(list)
    for subject, hit in zip(subjects, hits):
        by_subject[subject].append(hit)
    per_subject = {f"accuracy/{subject}": Proportion(sum(subject_hits), len(subject_hits))
                   for subject, subject_hits in sorted(by_subject.items())}
    return {"accuracy_micro": Proportion(sum(hits), len(hits)),
            "accuracy_macro": float(np.mean(list(per_subject.values()))),
            **per_subject}


def group_choice_scores(
        targets: Sequence[tuple[Hashable, int, bool]],
        scores: Sequence[float]) -> tuple[list[int], list[list[float]]]:
    """Regroup seqio's one-row-per-choice scoring layout into the per-example layout above.

    A seqio rank-classification task expands each question into one row per choice, so the
    Evaluator hands back flat lists. Here `targets[j] = (example_id, choice_index, is_correct)`
    and `scores[j]` is that row's log-likelihood. Rows may come in any order; each example must
    have choices 0..k-1 exactly once and exactly one correct choice. Examples keep the order in
    which they first appear. Returns `(answer_indices, per_example_scores)`.
    """
    _check_paired("group_choice_scores", targets, scores)
    rows: dict[Hashable, dict[int, tuple[float, bool]]] = {}
    for j, ((example_id, choice, is_correct), score) in enumerate(zip(targets, scores)):
        choices = rows.setdefault(example_id, {})
        choice = operator.index(choice)
        if choice in choices:
            raise ValueError(f"group_choice_scores: row {j} repeats choice {choice} of example "
                             f"{example_id!r}")
        choices[choice] = (float(score), bool(is_correct))
    answers, grouped = [], []
    for example_id, choices in rows.items():
        if sorted(choices) != list(range(len(choices))):
            raise ValueError(f"group_choice_scores: example {example_id!r} has choice indices "
                             f"{sorted(choices)}, expected 0..{len(choices) - 1}")
        correct = [c for c, (_, ok) in choices.items() if ok]
        if len(correct) != 1:
            raise ValueError(f"group_choice_scores: example {example_id!r} has {len(correct)} "
                             f"correct choices, expected exactly 1")
        answers.append(correct[0])
        grouped.append([choices[c][0] for c in range(len(choices))])
    return answers, grouped


# --- style metrics --------------------------------------------------------------------------------

# A list item is a line that starts (after any indentation) with one of these markers, then
# whitespace, then text. Letters ("a)") and long numbers are left out: "2023. It rained" starting a
# line is prose, and markdown itself only numbers items with digits.
LIST_ITEM_PATTERNS: dict[str, re.Pattern[str]] = {
    "bullet": re.compile(r"^[ \t]*[-*+\u2022][ \t]+\S"),
    "numbered": re.compile(r"^[ \t]*\d{1,3}[.)][ \t]+\S"),
}
# "* * *" or "- - -" is a markdown horizontal rule, not a list of three empty items.
_THEMATIC_BREAK = re.compile(r"^[ \t]*([-*_])([ \t]*\1){2,}[ \t]*$")


def list_items(text: str) -> list[str]:
    """The lines of `text` that are markdown bullet or numbered list items (see the patterns)."""
    return [line for line in text.splitlines()
            if not _THEMATIC_BREAK.match(line)
            and any(p.match(line) for p in LIST_ITEM_PATTERNS.values())]


def uses_list(text: str, min_items: int = 2) -> bool:
    """Whether `text` contains a list: at least `min_items` lines that are list items.

    One item is not a list; requiring two keeps a stray "- " or "1. " line in prose from counting.
    Items need not be adjacent or of one kind, so a numbered list with bulleted sub-points counts.
    """
    if min_items < 1:
        raise ValueError(f"uses_list: min_items must be at least 1, got {min_items}")
    return len(list_items(text)) >= min_items


def list_usage_agreement(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """How a model's list usage tracks the target model's on the same prompts (percentages).

    - `list_agreement`: both use a list or both do not.
    - `target_list_rate`, `prediction_list_rate`: how often each side uses a list.
    - `list_when_target_lists`: how often the prediction uses a list when the target does (the
      paper's 13% -> 81% number); NaN when no target uses a list, since the rate is undefined.
    """
    _check_paired("list_usage_agreement", targets, predictions)
    target_lists = np.array([uses_list(t) for t in targets])
    prediction_lists = np.array([uses_list(p) for p in predictions])
    n = len(targets)
    # Proportion(0, 0) is NaN: the rate is undefined when no target lists.
    return {"list_agreement": Proportion(int((target_lists == prediction_lists).sum()), n),
            "target_list_rate": Proportion(int(target_lists.sum()), n),
            "prediction_list_rate": Proportion(int(prediction_lists.sum()), n),
            "list_when_target_lists": Proportion(int(prediction_lists[target_lists].sum()),
                                                 int(target_lists.sum()))}


def word_count(text: str) -> int:
    """Whitespace-separated words; the paper measures answer length in words, not tokens."""
    return len(text.split())


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side has zero variance (it is undefined there)."""
    dx = np.asarray(x, dtype=np.float64) - np.mean(x)  # [n]
    dy = np.asarray(y, dtype=np.float64) - np.mean(y)  # [n]
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denominator if denominator > 0 else math.nan


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties sharing the mean of the ranks they span (Spearman's convention)."""
    unique, inverse, counts = np.unique(np.asarray(values), return_inverse=True,
                                        return_counts=True)  # [u], [n], [u]
    first_rank = np.cumsum(counts) - counts + 1  # [u] rank of each value's first occurrence
    return (first_rank + (counts - 1) / 2.0)[inverse]  # [n]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson on average ranks; NaN when a side is constant."""
    return pearson(average_ranks(x), average_ranks(y))


def length_correlation(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """How answer lengths (in words) track the target model's (the paper's -0.11 -> 0.62).

    Raises ValueError for fewer than two pairs: a correlation of one point is a caller's mistake.
    Returns NaN correlations (not an error) when either side's lengths are all equal: that is a
    legitimate outcome of an evaluation (say, one-word answers everywhere) and should not abort
    the other metrics of a seqio evaluation.
    """
    _check_paired("length_correlation", targets, predictions)
    if len(targets) < 2:
        raise ValueError(f"length_correlation needs at least 2 examples, got {len(targets)}")
    target_words = [word_count(t) for t in targets]
    prediction_words = [word_count(p) for p in predictions]
    return {"length_pearson": pearson(target_words, prediction_words),
            "length_spearman": spearman(target_words, prediction_words),
            "target_mean_words": float(np.mean(target_words)),
            "prediction_mean_words": float(np.mean(prediction_words))}


def _row_average_ranks(values: np.ndarray) -> np.ndarray:
    """`average_ranks` of every row of a [rows, n] array at once (ties share their mean rank)."""
    rows, n = values.shape
    order = np.argsort(values, axis=1, kind="stable")  # [rows, n]
    ordered = np.take_along_axis(values, order, axis=1)  # [rows, n]
    starts = np.ones((rows, n), dtype=bool)  # [rows, n] True where a run of equal values begins
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    groups = np.cumsum(starts, axis=1) - 1 + n * np.arange(rows)[:, None]  # [rows, n] global id
    positions = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (rows, n))
    mean_rank = (np.bincount(groups.ravel(), weights=positions.ravel(), minlength=rows * n)
                 / np.maximum(np.bincount(groups.ravel(), minlength=rows * n), 1))  # [rows * n]
    ranks = np.empty((rows, n))
    np.put_along_axis(ranks, order, mean_rank[groups], axis=1)
    return ranks  # [rows, n]


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`pearson` of every row pair of two [rows, n] arrays; NaN where a row is constant."""
    dx = x - x.mean(axis=1, keepdims=True)  # [rows, n]
    dy = y - y.mean(axis=1, keepdims=True)  # [rows, n]
    denominator = np.sqrt((dx * dx).sum(1) * (dy * dy).sum(1))  # [rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (dx * dy).sum(1) / denominator, np.nan)


def _length_correlation_resampled(targets: Sequence[str], predictions: Sequence[str],
                                  indices: np.ndarray) -> dict[str, np.ndarray]:
    """`length_correlation` on every resample (rows of `indices`, [resamples, n]) at once: the
    bootstrap calls this instead of re-running it a thousand times (same numbers, tested)."""
    target_words = np.array([word_count(t) for t in targets], dtype=np.float64)[indices]
    prediction_words = np.array([word_count(p) for p in predictions],
                                dtype=np.float64)[indices]  # [resamples, n]
    return {"length_pearson": _row_pearson(target_words, prediction_words),
            "length_spearman": _row_pearson(_row_average_ranks(target_words),
                                            _row_average_ranks(prediction_words)),
            "target_mean_words": target_words.mean(1),
            "prediction_mean_words": prediction_words.mean(1)}


# A vectorised twin that `evaluation/intervals.py` uses for the bootstrap.
length_correlation.resample = _length_correlation_resampled


# --- registry -------------------------------------------------------------------------------------

def _check_paired(name: str, targets: Sequence, others: Sequence) -> None:
    if len(targets) != len(others):
        raise ValueError(f"{name}: got {len(targets)} targets but {len(others)} "
                         f"predictions/scores")
    if not len(targets):
        raise ValueError(f"{name}: no examples to score")


MetricFn = Callable[[Sequence, Sequence], Mapping[str, float]]

# Metrics by name, for configs and the CLI. Scoring metrics take log-likelihoods, not text.
PREDICTION_METRICS: dict[str, MetricFn] = {
    "exact_match": exact_match,
    "list_usage_agreement": list_usage_agreement,
    "length_correlation": length_correlation,
}
SCORE_METRICS: dict[str, MetricFn] = {
    "rank_classification_accuracy": rank_classification_accuracy,
    "subject_accuracy": subject_accuracy,
}
