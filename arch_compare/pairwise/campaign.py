"""Who rates what: a campaign's settings, its rater slots, and each rater's order and placement.

A campaign is planned once, when it is built: its items are dealt into *slots*, one per rater
session, so that every item lands in exactly `overlap` different slots. Raters arrive at run time
(from an invite, Prolific or a crowd link) and each claims one free slot; the overlap is therefore
exact by construction however raters arrive, and a slot abandoned by its rater can be handed to the
next arrival without touching any other rater's work.

Each rater's session is the slot's items plus `gold_per_rater` attention-check items drawn from the
gold pool, in an order and with a left/right placement drawn from a generator seeded by the
campaign's seed and the rater's id: reproducible, different for every rater, and exactly balanced
(half of a rater's items show the stored output A on the left, rounded by the draw).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from arch_compare.pairwise.workforces import WORKFORCES


@dataclasses.dataclass(frozen=True)
class CampaignSettings:
    """The settings that can change while a campaign runs: switching the workforce is one of them,
    and it never touches the items or the ratings stored so far."""

    workforce: str = "private"
    completion_code: str | None = None  # shown to Prolific / crowd raters when they are done
    # Where a finished Prolific / crowd rater is sent; "{code}" and "{worker_id}" are filled in.
    completion_url: str | None = None
    redirect_seconds: int = 5  # how long the completion code stays on screen before the redirect
    hold_minutes: int = 60  # a slot idle this long (and unfinished) goes to the next arrival

    def __post_init__(self):
        if self.workforce not in WORKFORCES:
            raise ValueError(f"workforce must be one of {sorted(WORKFORCES)}, "
                             f"got {self.workforce!r}")
        workforce = WORKFORCES[self.workforce]
        if workforce.needs_completion_code and not self.completion_code:
            raise ValueError(f"the {self.workforce} workforce needs a completion code "
                             f"(--completion-code)")
        if self.completion_code is not None and not (
                0 < len(self.completion_code) <= 64 and self.completion_code.isprintable()):
            raise ValueError("the completion code must be 1 to 64 printable characters")
        if self.completion_url is not None and not self.completion_url.startswith(
                ("https://", "http://")):
            raise ValueError(f"completion_url must be an http(s) URL, got {self.completion_url!r}")
        if not 0 <= self.redirect_seconds <= 600:
            raise ValueError(f"redirect_seconds must be in [0, 600], got {self.redirect_seconds}")
        if self.hold_minutes < 1:
            raise ValueError(f"hold_minutes must be at least 1, got {self.hold_minutes}")


@dataclasses.dataclass(frozen=True)
class CampaignPlan:
    """How items are dealt out; fixed when the campaign is built."""

    overlap: int = 3
    items_per_rater: int = 20
    gold_per_rater: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.overlap < 1:
            raise ValueError(f"overlap must be at least 1, got {self.overlap}")
        if self.items_per_rater < 1:
            raise ValueError(f"items_per_rater must be at least 1, got {self.items_per_rater}")
        if self.gold_per_rater < 0:
            raise ValueError(f"gold_per_rater must be at least 0, got {self.gold_per_rater}")


def plan_slots(item_ids: Sequence[int], overlap: int, items_per_rater: int,
               seed: int) -> list[list[int]]:
    """Deals every item into exactly `overlap` slots of `items_per_rater` (the last may be short).

    Round r lays out all items in a fresh seeded order and the rounds are dealt one after another
    into consecutive slots. Only a slot that straddles two rounds could receive an item twice; the
    duplicate is swapped with the next item of the new round not yet in that slot, which always
    exists because a slot is never larger than one round.
    """
    if len(set(item_ids)) != len(item_ids):
        raise ValueError("item ids repeat")
    if overlap < 1:
        raise ValueError(f"overlap must be at least 1, got {overlap}")
    per_slot = min(items_per_rater, len(item_ids))
    rng = random.Random(f"slots:{seed}")
    slots: list[list[int]] = [[]]
    for _ in range(overlap):
        queue = list(item_ids)
        rng.shuffle(queue)
        for index in range(len(queue)):
            if len(slots[-1]) == per_slot:
                slots.append([])
            current = slots[-1]
            if queue[index] in current:
                swap = next(j for j in range(index + 1, len(queue)) if queue[j] not in current)
                queue[index], queue[swap] = queue[swap], queue[index]
            current.append(queue[index])
    return [slot for slot in slots if slot]


def rater_sequence(slot_items: Sequence[int], gold_ids: Sequence[int], gold_per_rater: int,
                   seed: int, rater_id: int) -> list[tuple[int, bool]]:
    """Returns the rater's items in order, each with `a_on_left` (stored output A shown left)."""
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
    rng = random.Random(f"rater:{seed}:{rater_id}")
    gold = rng.sample(sorted(gold_ids), min(gold_per_rater, len(gold_ids)))
    order = list(slot_items) + gold
    rng.shuffle(order)
    sides = [index % 2 == 0 for index in range(len(order))]
    rng.shuffle(sides)
    return list(zip(order, sides))
