"""Statistics of blind pairwise evaluation: win rates, Bradley-Terry strengths, rater agreement.

Gudibande et al. (2023) had crowd workers and GPT-4 compare an imitation model's answer with the
target's answer to the same instruction. The rating app (`arch_compare.pairwise`) and the
automatic judge (`evaluation/judge.py`) both produce the records this module reads.

Verdicts are about the two outputs *as shown*, so position bias can be measured:

- `"A"`: the left (first) output is better,    - `"B"`: the right (second) output is better,
- `"tie"`: both good and equally so,           - `"both_bad"`: neither is acceptable.

A `Rating` adds who rated which item and which model was on each side. Its `decision` restates
the verdict independently of the display order (the winning model's name, `"tie"` or
`"both_bad"`), which is what agreement between raters who saw different orders must compare.

For win rates and Bradley-Terry strengths `"both_bad"` counts as a tie, and a tie counts one half
for each side. Agreement statistics (kappa, alpha, gold accuracy) keep the four verdicts apart.

Sections, in order: verdicts and ratings; win rate; Bradley-Terry; chance-corrected agreement
(Cohen's kappa, Fleiss' kappa, Krippendorff's alpha); position bias; gold items and raters.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Collection, Hashable, Iterable, Mapping, Sequence

import numpy as np
import scipy.stats

# --- verdicts and ratings -------------------------------------------------------------------------

A = "A"
B = "B"
TIE = "tie"
BOTH_BAD = "both_bad"
VERDICTS = (A, B, TIE, BOTH_BAD)

# The left output's score under each verdict; "both_bad" is a tie for win rates.
LEFT_SCORE = {A: 1.0, B: 0.0, TIE: 0.5, BOTH_BAD: 0.5}


def check_verdict(verdict: str) -> str:
    """`verdict` itself if it is one of `VERDICTS`; otherwise a ValueError naming it."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; expected one of "
                         f"{', '.join(repr(v) for v in VERDICTS)}")
    return verdict


def _check_name(what: str, value) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Rating:
    """One rater's verdict on one item, with the model shown on each side.

    `verdict` is about the display (`"A"` = the left output is better). Model names must differ
    from each other and from `"tie"`/`"both_bad"`, so that `decision` is unambiguous.
    """

    item_id: str
    rater_id: str
    verdict: str
    left_model: str
    right_model: str

    def __post_init__(self):
        for field in ("item_id", "rater_id", "left_model", "right_model"):
            _check_name(f"Rating.{field}", getattr(self, field))
        check_verdict(self.verdict)
        where = f"Rating of item {self.item_id!r} by {self.rater_id!r}"
        if self.left_model == self.right_model:
            raise ValueError(f"{where}: both sides show model {self.left_model!r}")
        for model in (self.left_model, self.right_model):
            if model in (TIE, BOTH_BAD):
                raise ValueError(f"{where}: a model may not be named {model!r} (a verdict word)")

    @classmethod
    def from_mapping(cls, record: Mapping) -> "Rating":
        """A rating from a dict with keys item_id, rater_id, verdict, left_model, right_model."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in record]
        if missing:
            raise ValueError(f"rating record {dict(record)!r} lacks {', '.join(missing)}")
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})

    @property
    def decision(self) -> str:
        """The verdict without the display order: the better model's name, "tie" or "both_bad"."""
        return {A: self.left_model, B: self.right_model}.get(self.verdict, self.verdict)

    def score_for(self, model: str) -> float:
        """`model`'s outcome in this comparison: 1 win, 0.5 tie (or both bad), 0 loss."""
        if model == self.left_model:
            return LEFT_SCORE[self.verdict]
        if model == self.right_model:
            return 1.0 - LEFT_SCORE[self.verdict]
        raise ValueError(f"model {model!r} is not in item {self.item_id!r} "
                         f"({self.left_model!r} vs {self.right_model!r})")


def as_ratings(records: Iterable[Rating | Mapping]) -> list[Rating]:
    """Ratings from `Rating` objects or mappings (`Rating.from_mapping`'s keys), in order."""
    return [r if isinstance(r, Rating) else Rating.from_mapping(r) for r in records]


# --- win rate -------------------------------------------------------------------------------------

_OUTCOME_VALUES = (0.0, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class WinRate:
    """A win rate (ties count one half) with a percentile-bootstrap confidence interval."""

    rate: float
    low: float
    high: float
    n: int
    wins: int
    ties: int
    losses: int

    def __post_init__(self):
        counts = (self.wins, self.ties, self.losses)
        if min(counts) < 0 or sum(counts) != self.n or self.n <= 0:
            raise ValueError(f"WinRate: wins {self.wins} + ties {self.ties} + losses "
                             f"{self.losses} must equal n={self.n} > 0")
        if not math.isclose(self.rate, (self.wins + 0.5 * self.ties) / self.n, abs_tol=1e-12):
            raise ValueError(f"WinRate: rate {self.rate} disagrees with the counts")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"WinRate: need 0 <= low <= high <= 1, got [{self.low}, {self.high}]")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def win_rate(outcomes: Sequence[float], *, n_bootstrap: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> WinRate:
    """The mean outcome of one model over comparisons (1 win, 0.5 tie, 0 loss) with a CI.

    The interval is the percentile bootstrap over comparisons. Because outcomes take only three
    values, a resample is drawn as multinomial counts of wins/ties/losses, which is the same
    distribution as resampling the list and costs nothing per comparison. Comparisons are treated
    as independent; when several raters rate each item, that understates the uncertainty a little
    (use one majority decision per item, `majority_decisions`, for an item-level rate).
    """
    _check_confidence(confidence)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be positive, got {n_bootstrap}")
    values = np.asarray(outcomes, dtype=float).reshape(-1)  # [n]
    if values.size == 0:
        raise ValueError("win_rate needs at least one outcome")
    bad = values[~np.isin(values, _OUTCOME_VALUES)]
    if bad.size:
        raise ValueError(f"win_rate: outcomes must be 1 (win), 0.5 (tie) or 0 (loss); got "
                         f"{float(bad[0])}")
    n = values.size
    wins, ties = int(np.sum(values == 1.0)), int(np.sum(values == 0.5))
    rng = np.random.default_rng(seed)
    # [n_bootstrap, 3]: wins, ties, losses in each resample
    draws = rng.multinomial(n, [wins / n, ties / n, (n - wins - ties) / n], size=n_bootstrap)
    rates = (draws[:, 0] + 0.5 * draws[:, 1]) / n  # [n_bootstrap]
    alpha = 1.0 - confidence
    low, high = np.quantile(rates, [alpha / 2, 1 - alpha / 2])
    return WinRate(rate=(wins + 0.5 * ties) / n, low=float(low), high=float(high), n=n,
                   wins=wins, ties=ties, losses=n - wins - ties)


def outcomes_for(ratings: Iterable[Rating | Mapping], model: str,
                 opponent: str | None = None) -> np.ndarray:
    """`model`'s outcomes (1/0.5/0) in every rating that shows it, whichever side it was on.

    With `opponent` (usually the target), only comparisons against that model count. Ratings
    that do not show `model` are skipped.
    """
    scores = []
    for rating in as_ratings(ratings):
        sides = (rating.left_model, rating.right_model)
        if model in sides and (opponent is None or opponent in sides):
            scores.append(rating.score_for(model))
    return np.asarray(scores, dtype=float)


# --- Bradley-Terry --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Comparison:
    """One comparison between two models: `score` is the first's outcome (1, 0.5 or 0)."""

    first: str
    second: str
    score: float

    def __post_init__(self):
        _check_name("Comparison.first", self.first)
        _check_name("Comparison.second", self.second)
        if self.first == self.second:
            raise ValueError(f"Comparison of model {self.first!r} with itself")
        if self.score not in _OUTCOME_VALUES:
            raise ValueError(f"Comparison.score must be 1, 0.5 or 0, got {self.score!r}")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval (percentile bootstrap)."""

    estimate: float
    low: float
    high: float

    def __post_init__(self):
        if not self.low <= self.high:
            raise ValueError(f"Interval: low {self.low} > high {self.high}")


def comparisons_from_ratings(ratings: Iterable[Rating | Mapping]) -> list[Comparison]:
    """One `Comparison` per rating, left model first ("both_bad" scored as a tie)."""
    return [Comparison(r.left_model, r.right_model, LEFT_SCORE[r.verdict])
            for r in as_ratings(ratings)]


def _as_comparisons(comparisons) -> list[Comparison]:
    result = []
    for c in comparisons:
        if isinstance(c, Rating):
            c = Comparison(c.left_model, c.right_model, LEFT_SCORE[c.verdict])
        elif not isinstance(c, Comparison):
            c = Comparison(*c)
        result.append(c)
    if not result:
        raise ValueError("Bradley-Terry needs at least one comparison")
    return result


def _tally(comparisons: list[Comparison]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Models (sorted), the comparison type of each comparison, and the per-type table.

    A comparison's type is (first, second, score); the table is [types, 3] of (first index,
    second index, score). Bootstraps resample type counts instead of individual comparisons.
    """
    models = sorted({c.first for c in comparisons} | {c.second for c in comparisons})
    if len(models) < 2:
        raise ValueError("Bradley-Terry needs comparisons between at least two models")
    index = {m: i for i, m in enumerate(models)}
    types: dict[tuple[int, int, float], int] = {}
    type_of = np.empty(len(comparisons), dtype=np.int64)  # [comparisons]
    for n, c in enumerate(comparisons):
        key = (index[c.first], index[c.second], c.score)
        type_of[n] = types.setdefault(key, len(types))
    table = np.array(list(types), dtype=float)  # [types, 3]
    return models, type_of, table


def _scores_and_games(table: np.ndarray, counts: np.ndarray, n_models: int, prior: float):
    """Score matrix S[i, j] (i's wins over j, ties as halves) and games N[i, j] = N[j, i]."""
    first, second, score = table[:, 0].astype(int), table[:, 1].astype(int), table[:, 2]
    scores = np.zeros((n_models, n_models))  # [models, models]
    np.add.at(scores, (first, second), counts * score)
    np.add.at(scores, (second, first), counts * (1.0 - score))
    games = np.zeros((n_models, n_models))  # [models, models], symmetric
    np.add.at(games, (first, second), counts)
    games = games + games.T
    if prior:
        # `prior` virtual ties between every pair keep strengths finite on sparse data.
        off_diagonal = 1.0 - np.eye(n_models)
        scores = scores + 0.5 * prior * off_diagonal
        games = games + prior * off_diagonal
    return scores, games


def _unreachable(beats: np.ndarray) -> int | None:
    """A model that some model cannot reach along "scored against" edges, or None.

    The maximum-likelihood strengths are finite exactly when this directed graph is strongly
    connected (Ford 1957; Hunter 2004): otherwise one group of models never scored against
    another and the gap between them grows without bound.
    """
    n = len(beats)
    for start in range(n):
        seen, frontier = {start}, [start]
        while frontier:
            nxt = [j for i in frontier for j in np.flatnonzero(beats[i]) if j not in seen]
            seen.update(nxt)
            frontier = nxt
        if len(seen) < n:
            return start
    return None


def _fit_log_strengths(scores: np.ndarray, games: np.ndarray, start: np.ndarray | None = None,
                       tol: float = 1e-10, max_iter: int = 100_000) -> np.ndarray:
    """Maximum-likelihood log-strengths by the MM algorithm (Hunter 2004), mean zero.

    Update: p_i <- W_i / sum_j N_ij / (p_i + p_j), where W_i is i's total score. Each step
    increases the likelihood; the mean of log p is pinned to 0 because only differences matter.
    """
    wins = scores.sum(axis=1)  # [models]
    log_p = np.zeros(len(wins)) if start is None else start.copy()  # [models]
    for _ in range(max_iter):
        p = np.exp(log_p)
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)  # [models]
        new = np.log(wins / denominator)
        new -= new.mean()
        if np.max(np.abs(new - log_p)) < tol:
            return new
        log_p = new
    raise RuntimeError(f"Bradley-Terry MM did not converge in {max_iter} iterations")


def _to_elo(log_p: np.ndarray, models: list[str], anchor: str | None, base: float,
            scale: float) -> np.ndarray:
    ratings = scale / math.log(10.0) * log_p  # Elo convention: 400 points = 10x the odds
    shift = ratings[models.index(anchor)] if anchor is not None else ratings.mean()
    return ratings - shift + base


def _check_fit_args(models: list[str], anchor: str | None, scores: np.ndarray,
                    games: np.ndarray) -> None:
    if anchor is not None and anchor not in models:
        raise ValueError(f"anchor {anchor!r} is not among the compared models: {models}")
    stuck = _unreachable((scores > 0) & (games > 0))
    if stuck is not None:
        raise ValueError(
            f"Bradley-Terry strengths are not finite: model {models[stuck]!r} (and the models it "
            f"scored against) never scored against some other models, so no finite gap fits. "
            f"Collect more comparisons, or pass prior > 0 for virtual ties between every pair.")


def _prepare_fit(comparisons, anchor: str | None, prior: float):
    """Models, comparison types and their counts, and the score and game tables, checked to
    have a finite fit."""
    models, type_of, table = _tally(_as_comparisons(comparisons))
    counts = np.bincount(type_of, minlength=len(table)).astype(float)  # [types]
    scores, games = _scores_and_games(table, counts, len(models), prior)
    _check_fit_args(models, anchor, scores, games)
    return models, table, counts, scores, games


def bradley_terry(comparisons: Iterable[Comparison | Rating | tuple], *, anchor: str | None = None,
                  base: float = 1000.0, scale: float = 400.0, prior: float = 0.0
                  ) -> dict[str, float]:
    """Bradley-Terry strengths of every compared model on the Elo scale.

    `comparisons` are `Comparison`s, `Rating`s or `(first, second, score_of_first)` tuples; ties
    (and "both_bad") count half a win for each side. Strengths are maximum-likelihood (the MM
    algorithm), reported as `scale / ln(10) * log-strength` as in Chatbot Arena, so a gap of
    `scale` points means 10:1 odds of winning. The scale is anchored so that model `anchor` gets
    exactly `base`, or, with `anchor=None`, so that the models' mean is `base`.

    `prior` adds that many virtual ties between every pair of models (a pull towards equal
    strength); with the default 0 the fit is the plain maximum-likelihood estimate, and a
    ValueError says so when that is infinite (a model that never won nor tied, for example).
    """
    if prior < 0:
        raise ValueError(f"prior must be >= 0, got {prior}")
    models, table, counts, scores, games = _prepare_fit(comparisons, anchor, prior)
    elo = _to_elo(_fit_log_strengths(scores, games), models, anchor, base, scale)
    return {m: float(r) for m, r in zip(models, elo)}


def bradley_terry_bootstrap(comparisons: Iterable[Comparison | Rating | tuple], *,
                            anchor: str | None = None, base: float = 1000.0, scale: float = 400.0,
                            prior: float = 0.0, n_bootstrap: int = 1000, confidence: float = 0.95,
                            seed: int = 0) -> dict[str, Interval]:
    """`bradley_terry` with percentile-bootstrap intervals over comparisons.

    Each resample draws as many comparisons as there are, with replacement, and is refitted and
    anchored the same way, so an anchored model's own interval has zero width and the others' are
    relative to it. A resample with no finite fit raises (pass `prior` > 0 for sparse data).
    """
    _check_confidence(confidence)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be positive, got {n_bootstrap}")
    models, table, counts, scores, games = _prepare_fit(comparisons, anchor, prior)
    point_log_p = _fit_log_strengths(scores, games)
    point = _to_elo(point_log_p, models, anchor, base, scale)

    rng = np.random.default_rng(seed)
    n = len(comparisons)
    # [n_bootstrap, types]: how often each comparison type occurs in each resample
    draws = rng.multinomial(n, counts / n, size=n_bootstrap).astype(float)
    samples = np.empty((n_bootstrap, len(models)))  # [n_bootstrap, models] Elo ratings
    for b in range(n_bootstrap):
        scores_b, games_b = _scores_and_games(table, draws[b], len(models), prior)
        _check_fit_args(models, anchor, scores_b, games_b)
        # Starting from the full-data fit makes each refit a few MM steps.
        log_p = _fit_log_strengths(scores_b, games_b, start=point_log_p)
        samples[b] = _to_elo(log_p, models, anchor, base, scale)
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2], axis=0)  # [models] each
    return {m: Interval(float(point[i]), float(low[i]), float(high[i]))
            for i, m in enumerate(models)}


# --- chance-corrected agreement -------------------------------------------------------------------

def _is_missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa between two raters' labels on the same items (in the same order).

    Items where either label is missing (None or NaN) are skipped. Chance agreement uses each
    rater's own label frequencies. Returns NaN when chance agreement is 1 (both raters gave one
    and the same label throughout), where kappa is undefined.
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: the raters labelled {len(a)} and {len(b)} items")
    pairs = [(x, y) for x, y in zip(a, b) if not (_is_missing(x) or _is_missing(y))]
    if not pairs:
        raise ValueError("cohen_kappa: no item carries labels from both raters")
    labels = {label: i for i, label in enumerate(dict.fromkeys(v for pair in pairs for v in pair))}
    table = np.zeros((len(labels), len(labels)))  # [labels of a, labels of b]
    for x, y in pairs:
        table[labels[x], labels[y]] += 1
    table /= table.sum()
    observed = np.trace(table)
    expected = float(table.sum(axis=1) @ table.sum(axis=0))
    if math.isclose(expected, 1.0):
        return float("nan")
    return float((observed - expected) / (1.0 - expected))


def category_counts(per_item_ratings: Iterable[Iterable[Hashable]],
                    categories: Sequence[Hashable] | None = None
                    ) -> tuple[np.ndarray, list[Hashable]]:
    """Items x categories counts from each item's list of labels; also the category order.

    Categories default to `VERDICTS` when every label is a verdict, else the labels in order of
    first appearance. A label outside given `categories` is an error.
    """
    items = [list(labels) for labels in per_item_ratings]
    seen = list(dict.fromkeys(label for labels in items for label in labels))
    if categories is None:
        categories = list(VERDICTS) if set(seen) <= set(VERDICTS) else seen
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((len(items), len(categories)), dtype=np.int64)  # [items, categories]
    for row, labels in enumerate(items):
        for label in labels:
            if label not in index:
                raise ValueError(f"label {label!r} of item {row} is not one of {list(categories)}")
            counts[row, index[label]] += 1
    return counts, list(categories)


def fleiss_kappa(counts, *, categories: Sequence[Hashable] | None = None) -> float:
    """Fleiss' kappa (1971) for items each rated by the same number of raters.

    `counts` is an items x categories matrix of how many raters chose each category, or a list
    of each item's labels when those labels are strings (for example verdicts; numeric labels
    must go through `category_counts` first, since a list of numbers reads as counts). Which
    raters rated an item may differ between items; how many may not (use `krippendorff_alpha`
    for incomplete data). Returns NaN when expected agreement is 1 (one category throughout).
    """
    if not isinstance(counts, np.ndarray):
        counts = [list(row) for row in counts]
        if any(isinstance(v, str) for row in counts for v in row):
            counts, _ = category_counts(counts, categories)
    table = np.asarray(counts, dtype=float)  # [items, categories]
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(f"fleiss_kappa: expected an items x categories matrix, got shape "
                         f"{table.shape}")
    if np.any(table < 0) or np.any(table != np.round(table)):
        raise ValueError("fleiss_kappa: counts must be non-negative integers")
    raters = table.sum(axis=1)  # [items]
    if np.any(raters != raters[0]) or raters[0] < 2:
        raise ValueError(f"fleiss_kappa: every item needs the same number (>= 2) of raters; got "
                         f"{sorted(set(raters.astype(int).tolist()))}")
    m = raters[0]
    # Share of agreeing rater pairs on each item, then averaged.
    per_item = (np.sum(table * table, axis=1) - m) / (m * (m - 1))  # [items]
    observed = per_item.mean()
    shares = table.sum(axis=0) / table.sum()  # [categories]
    expected = float(np.sum(shares * shares))
    if math.isclose(expected, 1.0):
        return float("nan")
    return float((observed - expected) / (1.0 - expected))


KRIPPENDORFF_LEVELS = ("nominal", "ordinal", "interval", "ratio")


def _squared_differences(level: str, values: np.ndarray | None, totals: np.ndarray
                         ) -> np.ndarray:
    """delta^2[c, k] between distinct values c and k (Krippendorff 2011), sorted unless nominal.

    `totals` are the values' pairable counts n_c, which the ordinal metric ranks by.
    """
    if level == "nominal":
        return 1.0 - np.eye(len(totals))
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    if level == "ratio":
        sums = values[:, None] + values[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sums == 0, 0.0, ((values[:, None] - values[None, :]) / sums) ** 2)
    # ordinal: the number of pairable values from c to k, minus half of the two end values.
    through = np.cumsum(totals)  # [values]: totals of all values up to and including each
    position = np.arange(len(totals))
    lo, hi = np.minimum.outer(position, position), np.maximum.outer(position, position)
    between = through[hi] - through[lo] + totals[lo]  # sum of totals[g] for lo <= g <= hi
    return (between - (totals[lo] + totals[hi]) / 2.0) ** 2


def krippendorff_alpha(reliability_data, level: str = "nominal") -> float:
    """Krippendorff's alpha for raters x items data with missing values (None or NaN).

    `level` is "nominal" (any hashable labels), "ordinal", "interval" or "ratio" (numbers).
    Items with fewer than two values are not pairable and drop out, as in Krippendorff's
    definition. Computed from the coincidence matrix: alpha = 1 - (n - 1) * sum(o * d) /
    sum(n_c n_k d). Returns NaN when every pairable value is the same (no disagreement is
    possible by chance).
    """
    if level not in KRIPPENDORFF_LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {KRIPPENDORFF_LEVELS}")
    rows = [list(row) for row in reliability_data]
    if not rows or len({len(row) for row in rows}) != 1:
        raise ValueError("krippendorff_alpha: expected a raters x items table with equal rows")
    present = [v for row in rows for v in row if not _is_missing(v)]
    if level == "nominal":
        distinct = list(dict.fromkeys(present))
    else:
        if not all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
            raise ValueError(f"krippendorff_alpha: {level} data must be numbers")
        distinct = sorted(set(float(v) for v in present))
    index = {v: i for i, v in enumerate(distinct)}
    n_items = len(rows[0])
    counts = np.zeros((n_items, len(distinct)))  # [items, values]: raters giving each value
    for row in rows:
        for item, v in enumerate(row):
            if not _is_missing(v):
                counts[item, index[v if level == "nominal" else float(v)]] += 1
    pairable = counts.sum(axis=1)  # [items]
    counts, pairable = counts[pairable >= 2], pairable[pairable >= 2]
    if counts.size == 0:
        raise ValueError("krippendorff_alpha: no item has two or more values")
    # Coincidences: each ordered pair of values within an item, weighted 1 / (m_u - 1).
    weighted = counts / (pairable - 1)[:, None]  # [items, values]
    coincidence = weighted.T @ counts - np.diag(weighted.sum(axis=0))  # [values, values]
    totals = coincidence.sum(axis=1)  # [values]
    n = totals.sum()
    values = None if level == "nominal" else np.asarray(distinct, dtype=float)
    delta = _squared_differences(level, values, totals)  # [values, values]
    expected = float(np.sum(np.outer(totals, totals) * delta))
    if expected == 0.0:
        return float("nan")
    return float(1.0 - (n - 1.0) * np.sum(coincidence * delta) / expected)


# --- position bias --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PositionBias:
    """How often the left output wins among decisive verdicts ("A" or "B").

    `left_rate` is 0.5 for a rater without position bias. The interval is Clopper-Pearson (exact
    binomial); `p_value` is the two-sided exact binomial test of `left_rate == 0.5`.
    """

    left_rate: float
    low: float
    high: float
    left_wins: int
    n_decisive: int
    p_value: float

    def __post_init__(self):
        if not 0 <= self.left_wins <= self.n_decisive:
            raise ValueError(f"PositionBias: left_wins {self.left_wins} not in "
                             f"[0, n_decisive={self.n_decisive}]")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"PositionBias: need 0 <= low <= high <= 1, got "
                             f"[{self.low}, {self.high}]")


def position_bias(ratings: Iterable[Rating | Mapping | str], *, confidence: float = 0.95
                  ) -> PositionBias:
    """Position bias of a set of verdicts (one rater's, all raters', or a judge's per order).

    Accepts ratings or bare verdict strings; ties and "both_bad" are not decisive and are left
    out. Meaningful when the app randomises which model is shown on the left, so that a fair
    rater prefers the left output half the time.
    """
    _check_confidence(confidence)
    verdicts = [check_verdict(r) if isinstance(r, str) else as_ratings([r])[0].verdict
                for r in ratings]
    left = sum(v == A for v in verdicts)
    decisive = left + sum(v == B for v in verdicts)
    if decisive == 0:
        raise ValueError("position_bias: no decisive verdicts ('A' or 'B')")
    test = scipy.stats.binomtest(left, decisive, p=0.5)
    interval = test.proportion_ci(confidence_level=confidence, method="exact")
    return PositionBias(left_rate=left / decisive, low=float(interval.low),
                        high=float(interval.high), left_wins=left, n_decisive=decisive,
                        p_value=float(test.pvalue))


def position_bias_by_rater(ratings: Iterable[Rating | Mapping], *, confidence: float = 0.95
                           ) -> dict[str, PositionBias]:
    """`position_bias` of each rater with at least one decisive verdict."""
    by_rater = collections.defaultdict(list)
    for rating in as_ratings(ratings):
        by_rater[rating.rater_id].append(rating.verdict)
    return {rater: position_bias(verdicts, confidence=confidence)
            for rater, verdicts in sorted(by_rater.items())
            if any(v in (A, B) for v in verdicts)}


# --- gold items, majorities and raters ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RaterScore:
    """`correct` of `n` checked ratings by one rater, and their share."""

    correct: int
    n: int

    def __post_init__(self):
        if not 0 <= self.correct <= self.n or self.n <= 0:
            raise ValueError(f"RaterScore: need 0 <= correct <= n and n > 0, got "
                             f"{self.correct}/{self.n}")

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


def _accepted(gold_answer: str | Collection[str]) -> frozenset[str]:
    return frozenset([gold_answer] if isinstance(gold_answer, str) else gold_answer)


def gold_accuracy(ratings: Iterable[Rating | Mapping],
                  gold: Mapping[str, str | Collection[str]]) -> dict[str, RaterScore]:
    """Each rater's accuracy on gold items (items with a known answer).

    `gold` maps item ids to the accepted decision: the better model's name, "tie" or "both_bad",
    or a collection of accepted decisions. Answers are compared as `Rating.decision`, so the
    display order does not matter. Raters who rated no gold item are absent.
    """
    tallies: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for rating in as_ratings(ratings):
        if rating.item_id not in gold:
            continue
        accepted = _accepted(gold[rating.item_id])
        valid = {rating.left_model, rating.right_model, TIE, BOTH_BAD}
        if not accepted or not accepted <= valid:
            raise ValueError(f"gold answer {sorted(accepted)} for item {rating.item_id!r} must be "
                             f"among {sorted(valid)}")
        tally = tallies[rating.rater_id]
        tally[0] += rating.decision in accepted
        tally[1] += 1
    return {rater: RaterScore(*tally) for rater, tally in sorted(tallies.items())}


def failing_raters(ratings: Iterable[Rating | Mapping], gold: Mapping[str, str | Collection[str]],
                   *, min_accuracy: float = 0.75, min_gold: int = 1,
                   require_gold: bool = False) -> set[str]:
    """Raters whose gold accuracy is below `min_accuracy` on at least `min_gold` gold items.

    Raters with fewer gold ratings are not judged, unless `require_gold`, which fails them too
    (so that nobody who skipped the checks slips through).
    """
    if not 0.0 <= min_accuracy <= 1.0 or min_gold < 1:
        raise ValueError(f"need 0 <= min_accuracy <= 1 and min_gold >= 1, got {min_accuracy}, "
                         f"{min_gold}")
    ratings = as_ratings(ratings)
    scores = gold_accuracy(ratings, gold)
    failing = {rater for rater, score in scores.items()
               if score.n >= min_gold and score.accuracy < min_accuracy}
    if require_gold:
        failing |= {r.rater_id for r in ratings
                    if r.rater_id not in scores or scores[r.rater_id].n < min_gold}
    return failing


def exclude(ratings: Iterable[Rating | Mapping], *, raters: Collection[str] = (),
            items: Collection[str] = ()) -> list[Rating]:
    """The ratings not by `raters` and not of `items` (e.g. failing raters, then gold items)."""
    raters, items = set(raters), set(items)
    return [r for r in as_ratings(ratings) if r.rater_id not in raters and r.item_id not in items]


def screen_raters(ratings: Iterable[Rating | Mapping], gold: Mapping[str, str | Collection[str]],
                  *, min_accuracy: float = 0.75, min_gold: int = 1,
                  require_gold: bool = False) -> tuple[list[Rating], set[str]]:
    """Ratings ready for statistics: failing raters and gold items removed; also who failed."""
    ratings = as_ratings(ratings)
    failing = failing_raters(ratings, gold, min_accuracy=min_accuracy, min_gold=min_gold,
                             require_gold=require_gold)
    return exclude(ratings, raters=failing, items=gold.keys()), failing


def _plurality(decisions: Iterable[str]) -> str | None:
    """The single most common decision, or None if there is none or the top is shared."""
    top = collections.Counter(decisions).most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def majority_decisions(ratings: Iterable[Rating | Mapping]) -> dict[str, str | None]:
    """Each item's plurality decision (`Rating.decision`), None where the vote is split evenly."""
    by_item = collections.defaultdict(list)
    for rating in as_ratings(ratings):
        by_item[rating.item_id].append(rating.decision)
    return {item: _plurality(decisions) for item, decisions in by_item.items()}


def rater_agreement(ratings: Iterable[Rating | Mapping]) -> dict[str, RaterScore]:
    """Per rater: how often they agree with the plurality of the *other* raters of an item.

    Only items with other raters whose plurality is unique count. Decisions are compared in model
    terms (`Rating.decision`) with all four verdicts distinct. A rater with no countable item is
    absent. One rating per rater and item is expected; a repeated one counts as another vote.
    """
    ratings = as_ratings(ratings)
    by_item = collections.defaultdict(list)
    for rating in ratings:
        by_item[rating.item_id].append(rating)
    tallies: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for item_ratings in by_item.values():
        for rating in item_ratings:
            others = _plurality(r.decision for r in item_ratings
                                if r.rater_id != rating.rater_id)
            if others is not None:
                tallies[rating.rater_id][0] += rating.decision == others
                tallies[rating.rater_id][1] += 1
    return {rater: RaterScore(*tally) for rater, tally in sorted(tallies.items())}
