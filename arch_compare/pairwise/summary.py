"""The admin view's numbers, computed by `arch_compare.evaluation.pairwise` from exported rows.

Exported rows carry `verdict` in screen terms ("A" = the left output is better) with the model
shown on each side, which is exactly the evaluation module's `Rating`; this module only groups
them. Gold items are kept apart: they score raters, they do not count towards win rates or
agreement between raters.
"""

from __future__ import annotations

import collections
import math
from typing import Iterable, Mapping

from arch_compare.evaluation import pairwise as stats


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def summarise(rows: Iterable[Mapping], rater_status: Mapping[str, str]) -> dict:
    """Per-rater gold accuracy, agreement and left-side share; campaign alpha and win rates."""
    rows = list(rows)
    ratings = stats.as_ratings(rows)
    gold = {row["item_id"]: row["winner_gold"] for row in rows if row["is_gold"]}
    regular = [rating for rating, row in zip(ratings, rows) if not row["is_gold"]]

    gold_scores = stats.gold_accuracy(ratings, gold)
    agreement = stats.rater_agreement(regular)
    bias = stats.position_bias_by_rater(ratings)
    counts = collections.Counter(rating.rater_id for rating in ratings)
    raters = []
    for rater in sorted(counts):
        score, agree = gold_scores.get(rater), agreement.get(rater)
        raters.append({
            "rater": rater, "status": rater_status.get(rater, "?"), "ratings": counts[rater],
            "gold_accuracy": score.accuracy if score else None,
            "gold_correct": score.correct if score else 0, "gold_n": score.n if score else 0,
            "agreement": agree.accuracy if agree else None,
            "agreement_correct": agree.correct if agree else 0,
            "agreement_n": agree.n if agree else 0,
            "left_rate": bias[rater].left_rate if rater in bias else None})

    alpha = None
    items = sorted({rating.item_id for rating in regular})
    if items and len(regular) > len(items):  # some item has a second rating
        column = {item: index for index, item in enumerate(items)}
        table: dict[str, list] = collections.defaultdict(lambda: [None] * len(items))
        for rating in regular:
            table[rating.rater_id][column[rating.item_id]] = rating.decision
        try:
            alpha = _finite(stats.krippendorff_alpha(list(table.values())))
        except ValueError:  # no item rated twice yet
            alpha = None

    overall = None
    if any(rating.verdict in ("A", "B") for rating in ratings):
        overall = stats.position_bias(ratings)

    win_rates = []
    pairs = sorted({tuple(sorted((r.left_model, r.right_model))) for r in regular})
    for first, second in pairs:
        for model, opponent in ((first, second), (second, first)):
            rate = stats.win_rate(stats.outcomes_for(regular, model, opponent))
            win_rates.append({"model": model, "opponent": opponent, "rate": rate.rate,
                              "low": rate.low, "high": rate.high, "wins": rate.wins,
                              "ties": rate.ties, "losses": rate.losses})

    return {"raters": raters, "alpha": alpha, "win_rates": win_rates,
            "left_rate": overall.left_rate if overall else None,
            "left_p": overall.p_value if overall else None}
