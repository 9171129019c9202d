"""A rater's session: claiming a slot, the next item, progress and storing one rating.

A mixin of `PairwiseStore` (it writes and reads through the store's `_writer` and `_reader`).
Slot claims are conditional UPDATEs, so two raters racing for the last free slot cannot both win,
on SQLite or PostgreSQL; a double submit stores one row (`UNIQUE (item_id, rater_id)`) and the
loser of the race reads the winner's row back.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, ContextManager

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from arch_compare.pairwise.campaign import rater_sequence
from arch_compare.pairwise.schema import (AssignmentRow, ItemRow, RaterRow, RatingRow, SlotItemRow,
                                          SlotRow)

if TYPE_CHECKING:  # the store imports this module
    from arch_compare.pairwise.store import Campaign, Rater

CHOICES = ("left", "right", "tie", "both_bad")  # what a rater clicks, in screen terms
MAX_REASON_CHARS = 2000


@dataclasses.dataclass(frozen=True)
class Shown:
    """One item as a rater sees it: texts in screen order, nothing that names a model."""

    position: int
    prompt: str
    left: str
    right: str


@dataclasses.dataclass(frozen=True)
class Progress:
    rated: int
    total: int

    @property
    def done(self) -> bool:
        return self.total > 0 and self.rated == self.total


def verdict_for(choice: str, a_on_left: bool) -> str:
    """Screen terms (left/right) to the item's stored order (A/B)."""
    if choice == "left":
        return "A" if a_on_left else "B"
    if choice == "right":
        return "B" if a_on_left else "A"
    return choice


class RatingFlow:
    def _writer(self) -> ContextManager[Session]:
        raise NotImplementedError

    def _reader(self) -> Session:
        raise NotImplementedError

    def campaign_by_id(self, campaign_id: int) -> Campaign | None:
        raise NotImplementedError

    def start(self, rater: Rater) -> bool:
        """Gives the rater a slot and their item sequence if they have none; False when full."""
        with self._reader() as session:  # the common case, every page after the first
            if session.scalar(select(SlotRow.id).where(SlotRow.rater_id == rater.id)):
                return True
        campaign = self.campaign_by_id(rater.campaign_id)
        for _ in range(5):
            claimed = self._claim(rater, campaign)
            if claimed is not None:
                return claimed
        return False

    def _claim(self, rater: Rater, campaign: Campaign) -> bool | None:
        """One attempt at claiming a slot; None when a concurrent claim won the chosen one."""
        with self._writer() as session:
            if session.scalar(select(SlotRow.id).where(SlotRow.rater_id == rater.id)):
                return True
            cutoff = time.time() - 60 * campaign.settings.hold_minutes
            slot = session.scalar(select(SlotRow).where(
                SlotRow.campaign_id == rater.campaign_id, SlotRow.rater_id.is_(None))
                .order_by(SlotRow.number).limit(1))
            previous = None
            if slot is None:  # an abandoned slot: claimed, unfinished, idle past the hold
                found = session.execute(
                    select(SlotRow, RaterRow).join(RaterRow, SlotRow.rater_id == RaterRow.id)
                    .where(SlotRow.campaign_id == rater.campaign_id,
                           RaterRow.completed_at.is_(None), RaterRow.last_seen < cutoff)
                    .order_by(SlotRow.number).limit(1)).first()
                if found is None:
                    return False
                slot, previous = found
            claimed = session.execute(
                update(SlotRow).where(SlotRow.id == slot.id,
                                      SlotRow.rater_id == previous.id if previous else
                                      SlotRow.rater_id.is_(None))
                .values(rater_id=rater.id)).rowcount
            if claimed != 1:  # another transaction took it first (PostgreSQL): try again
                return None
            if previous is not None:
                previous.status = "expired"
            slot_items = session.scalars(select(SlotItemRow.item_id)
                                         .where(SlotItemRow.slot_id == slot.id)).all()
            gold_ids = session.scalars(select(ItemRow.id).where(
                ItemRow.campaign_id == rater.campaign_id, ItemRow.gold.is_not(None))).all()
            sequence = rater_sequence(sorted(slot_items), gold_ids, campaign.plan.gold_per_rater,
                                      campaign.plan.seed, rater.id)
            session.add_all(AssignmentRow(rater_id=rater.id, item_id=item_id, position=position,
                                          a_on_left=a_on_left)
                            for position, (item_id, a_on_left) in enumerate(sequence, start=1))
            return True

    def touch(self, rater: Rater, min_interval: float = 30.0) -> None:
        """Marks the rater as active (writes at most every `min_interval` seconds)."""
        now = time.time()
        if rater.last_seen >= now - min_interval:
            return
        with self._writer() as session:
            session.execute(update(RaterRow).where(RaterRow.id == rater.id,
                                                   RaterRow.last_seen < now - min_interval)
                            .values(last_seen=now))

    def progress(self, rater: Rater) -> Progress:
        return self.current(rater)[1]

    def next_item(self, rater: Rater) -> Shown | None:
        """The rater's first unrated item in their order, or None when all are rated."""
        return self.current(rater)[0]

    def current(self, rater: Rater) -> tuple[Shown | None, Progress]:
        """The next item and the progress, read in one snapshot so that they agree."""
        rated = select(RatingRow.id).where(RatingRow.rater_id == rater.id,
                                           RatingRow.item_id == AssignmentRow.item_id)
        with self._reader() as session:
            found = session.execute(
                select(AssignmentRow, ItemRow).join(ItemRow, ItemRow.id == AssignmentRow.item_id)
                .where(AssignmentRow.rater_id == rater.id, ~rated.exists())
                .order_by(AssignmentRow.position).limit(1)).first()
            progress = Progress(*(session.scalar(select(func.count()).select_from(table)
                                                 .where(table.rater_id == rater.id))
                                  for table in (RatingRow, AssignmentRow)))
        if found is None:
            return None, progress
        assignment, item = found
        left, right = ((item.output_a, item.output_b) if assignment.a_on_left
                       else (item.output_b, item.output_a))
        return Shown(assignment.position, item.prompt, left, right), progress

    def submit(self, rater: Rater, position: int, choice: str, reason: str) -> str:
        """Stores one rating. Returns "stored", "duplicate" (the same answer was already stored),
        "conflict" (a different answer is stored; it stands), "expired" or "unknown"."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}")
        if len(reason) > MAX_REASON_CHARS or "\x00" in reason:
            raise ValueError(f"a reason is at most {MAX_REASON_CHARS} characters, without NUL")
        for _ in range(2):
            try:
                return self._submit_once(rater, position, choice, reason)
            except IntegrityError:  # a concurrent double submit won; compare with it
                continue
        return "conflict"

    def _submit_once(self, rater: Rater, position: int, choice: str, reason: str) -> str:
        with self._writer() as session:
            row = session.get(RaterRow, rater.id)
            if row is None or row.status != "active":
                return "expired"
            assignment = session.scalar(select(AssignmentRow).where(
                AssignmentRow.rater_id == rater.id, AssignmentRow.position == position))
            if assignment is None:
                return "unknown"
            existing = session.scalar(select(RatingRow).where(
                RatingRow.item_id == assignment.item_id, RatingRow.rater_id == rater.id))
            if existing is not None:
                same = existing.choice == choice and existing.reason == reason
                return "duplicate" if same else "conflict"
            now = time.time()
            session.add(RatingRow(item_id=assignment.item_id, rater_id=rater.id, choice=choice,
                                  verdict=verdict_for(choice, assignment.a_on_left),
                                  reason=reason, created_at=now))
            session.flush()  # raises IntegrityError if a twin request stored it meanwhile
            row.last_seen = now
            total, rated = (session.scalar(select(func.count()).select_from(table)
                                           .where(table.rater_id == rater.id))
                            for table in (AssignmentRow, RatingRow))
            if rated == total:
                row.completed_at = now
            return "stored"
