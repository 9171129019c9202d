"""What the administrator reads about a campaign: its progress, every rating, each rater's state.

A mixin of `PairwiseStore` (it reads through the store's `_reader`), kept apart from the
rater-facing queries: only the admin pages and the exports use it, and it alone names the models.
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arch_compare.pairwise.schema import AssignmentRow, ItemRow, RaterRow, RatingRow, SlotRow

if TYPE_CHECKING:  # the store imports this module
    from arch_compare.pairwise.store import Campaign


class CampaignReports:
    def _reader(self) -> Session:
        raise NotImplementedError

    def campaign_status(self, campaign: Campaign) -> dict:
        with self._reader() as session:
            def count(statement) -> int:
                return session.scalar(statement) or 0

            items = count(select(func.count()).select_from(ItemRow).where(
                ItemRow.campaign_id == campaign.id, ItemRow.gold.is_(None)))
            gold = count(select(func.count()).select_from(ItemRow).where(
                ItemRow.campaign_id == campaign.id, ItemRow.gold.is_not(None)))
            slots = count(select(func.count()).select_from(SlotRow)
                          .where(SlotRow.campaign_id == campaign.id))
            claimed = count(select(func.count()).select_from(SlotRow).where(
                SlotRow.campaign_id == campaign.id, SlotRow.rater_id.is_not(None)))
            raters = session.execute(
                select(RaterRow.workforce, RaterRow.status,
                       RaterRow.completed_at.is_not(None), func.count())
                .where(RaterRow.campaign_id == campaign.id)
                .group_by(RaterRow.workforce, RaterRow.status,
                          RaterRow.completed_at.is_not(None))).all()
            ratings = count(select(func.count()).select_from(RatingRow).join(
                ItemRow, ItemRow.id == RatingRow.item_id).where(
                ItemRow.campaign_id == campaign.id, ItemRow.gold.is_(None)))
            gold_ratings = count(select(func.count()).select_from(RatingRow).join(
                ItemRow, ItemRow.id == RatingRow.item_id).where(
                ItemRow.campaign_id == campaign.id, ItemRow.gold.is_not(None)))
        by_state: dict[str, int] = {}
        for workforce, status, completed, number in raters:
            state = "completed" if completed else status
            key = f"{workforce}:{state}"
            by_state[key] = by_state.get(key, 0) + number
        return {"campaign": campaign.name, "workforce": campaign.settings.workforce,
                "items": items, "gold_items": gold, "overlap": campaign.plan.overlap,
                "slots": slots, "slots_claimed": claimed, "raters": by_state,
                "ratings": ratings, "ratings_needed": items * campaign.plan.overlap,
                "gold_ratings": gold_ratings}

    def rating_rows(self, campaign: Campaign) -> Iterator[dict]:
        """Every rating of the campaign with what the rater saw where; admin exports only."""
        with self._reader() as session:
            rows = session.execute(
                select(RatingRow, ItemRow, RaterRow, AssignmentRow)
                .join(ItemRow, ItemRow.id == RatingRow.item_id)
                .join(RaterRow, RaterRow.id == RatingRow.rater_id)
                .join(AssignmentRow, (AssignmentRow.rater_id == RatingRow.rater_id)
                      & (AssignmentRow.item_id == RatingRow.item_id))
                .where(ItemRow.campaign_id == campaign.id)
                .order_by(RatingRow.id)).all()
        for rating, item, rater, assignment in rows:
            left, right = ((item.model_a, item.model_b) if assignment.a_on_left
                           else (item.model_b, item.model_a))
            by_stored = {"A": item.model_a, "B": item.model_b}
            yield {"campaign": campaign.name, "item_id": item.key,
                   "rater_id": f"{rater.workforce}:{rater.external_id}",
                   "workforce": rater.workforce, "worker_id": rater.external_id,
                   "study_id": rater.study_id, "session_id": rater.session_id,
                   "rater_status": rater.status, "position": assignment.position,
                   "model_a": item.model_a, "model_b": item.model_b,
                   "left_model": left, "right_model": right,
                   "choice": rating.choice,  # left | right | tie | both_bad, as clicked
                   # The evaluation module's convention: "A" means the left output won.
                   "verdict": {"left": "A", "right": "B"}.get(rating.choice, rating.choice),
                   "stored_verdict": rating.verdict,  # in the item's own A/B order
                   "winner": by_stored.get(rating.verdict, rating.verdict),
                   "is_gold": item.gold is not None, "gold": item.gold,
                   "winner_gold": None if item.gold is None else by_stored.get(item.gold,
                                                                                item.gold),
                   "gold_correct": None if item.gold is None else rating.verdict == item.gold,
                   "reason": rating.reason, "created_at": rating.created_at,
                   "meta": json.loads(item.meta_json)}

    def rater_states(self, campaign: Campaign) -> dict[str, str]:
        """Each rater's export id and state: active, expired or completed."""
        with self._reader() as session:
            rows = session.execute(select(RaterRow).where(RaterRow.campaign_id == campaign.id))
            return {f"{row.workforce}:{row.external_id}":
                    "completed" if row.completed_at is not None else row.status
                    for (row,) in rows}


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "meta": json.dumps(row["meta"], ensure_ascii=False)})
    return out.getvalue()
