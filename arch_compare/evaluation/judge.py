"""An automatic pairwise judge: a language model compares two outputs for the same instruction.

Gudibande et al. (2023) asked GPT-4 as well as crowd workers which of two answers was better. Here
the judge is any `Target` (`arch_compare.imitation.targets`): an OpenAI-compatible endpoint, a
model this framework loads, or a plain function in tests.

Protocol, per item (an instruction and two models' outputs):

1. The judge sees the pair twice, in both orders (MT-Bench's swap), each time with
   `JUDGE_SYSTEM_PROMPT` and `JUDGE_USER_TEMPLATE`, and ends its reply with a line
   `Verdict: A`, `Verdict: B`, `Verdict: tie` or `Verdict: both bad`.
2. `parse_verdict` reads that line (case, markdown emphasis, brackets and a trailing full stop
   do not matter); a reply without a readable verdict line is *unparseable*, never a tie.
3. The two verdicts are restated in model terms. If they agree, that is the item's verdict; if
   they disagree (the judge followed the position, not the content), the item is a tie.
   An unparseable or error reply in either order leaves the item without a verdict, and
   `judge_summary` counts such items and replies separately.

Each item gives a `JudgedItem`, whose `rating()` and `order_ratings()` are ordinary `Rating`s, so
win rates, Bradley-Terry strengths and the judge's own position bias come from
`evaluation/pairwise.py` unchanged. `agreement_with_humans` compares the judge with the
majority of human raters.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable, Mapping, Sequence

from arch_compare.data.conversations import Turn
from arch_compare.evaluation import pairwise
from arch_compare.evaluation.pairwise import A, B, BOTH_BAD, TIE, Rating
from arch_compare.imitation.targets import GenerationSettings, Prompt, Target

JUDGE_SYSTEM_PROMPT = """\
You are an impartial judge. You will see a user's instruction and two answers to it, labelled \
A and B. Decide which answer follows the instruction better, judging helpfulness, correctness, \
relevance and detail. The order in which the answers are shown and their length must not sway \
you. Explain your reasoning in a few sentences, then finish with one final line that is exactly \
one of:
Verdict: A
Verdict: B
Verdict: tie
Verdict: both bad
Use "tie" when both answers are acceptable and equally good, and "both bad" when neither answer \
is acceptable."""

# Placeholders: {instruction}, {output_a} (shown first), {output_b} (shown second).
JUDGE_USER_TEMPLATE = """\
[Instruction]
{instruction}

[Answer A]
{output_a}
[End of answer A]

[Answer B]
{output_b}
[End of answer B]"""

# Long enough for a short explanation before the verdict line.
DEFAULT_JUDGE_SETTINGS = GenerationSettings(max_tokens=512, temperature=0.0)

# Item statuses.
CONSISTENT = "consistent"      # both orders gave the same verdict in model terms
INCONSISTENT = "inconsistent"  # the orders disagreed; the item counts as a tie
UNPARSEABLE = "unparseable"    # some reply had no readable verdict line
ERROR = "error"                # some reply was an error (after the target's own retries)
STATUSES = (CONSISTENT, INCONSISTENT, UNPARSEABLE, ERROR)

# --- parsing --------------------------------------------------------------------------------------

# "Verdict:" anywhere on a line, after markup is removed; the value runs to the end of the line.
_VERDICT_LINE = re.compile(r"\bverdict\s*[:=]\s*(?P<value>.*)$", re.IGNORECASE)
_MARKUP = re.compile(r"[*`#>]")
# Spellings of each verdict once markup, brackets and case are gone.
_VALUES = {"a": A, "answer a": A, "b": B, "answer b": B, "tie": TIE, "both bad": BOTH_BAD}


def parse_verdict(reply: str) -> str | None:
    """The verdict ("A", "B", "tie", "both_bad") of a judge's reply, or None if unreadable.

    The last line containing `Verdict:` decides (a judge may quote the instructions first). Case,
    markdown emphasis and headings, brackets, quotes, `_`/`-` in "both bad" and a trailing full
    stop are tolerated; any other text after the verdict makes the line unreadable, because
    guessing would hide a judge that does not follow the format.
    """
    for line in reversed(reply.splitlines()):
        match = _VERDICT_LINE.search(_MARKUP.sub("", line))
        if match:
            value = match.group("value").lower().replace("_", " ").replace("-", " ")
            value = " ".join(value.strip(" \t[](){}\"'.!").split())
            return _VALUES.get(value)
    return None


# --- items and judged records ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PairwiseItem:
    """An instruction and two models' outputs to compare (`model_a` is the canonical first)."""

    item_id: str
    instruction: str
    model_a: str
    output_a: str
    model_b: str
    output_b: str

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"PairwiseItem {self.item_id!r}: {field.name} must be a "
                                 f"non-empty string, got {value!r}")
        if self.model_a == self.model_b:
            raise ValueError(f"PairwiseItem {self.item_id!r}: both outputs are from "
                             f"{self.model_a!r}")


@dataclasses.dataclass(frozen=True)
class JudgedItem:
    """The judge's two replies on one item and what they amount to.

    Index 0 of `replies`/`errors`/`order_verdicts` is the order (model_a, model_b), index 1 the
    swapped order (model_b, model_a). `order_verdicts` are about the display ("A" = shown first).
    `verdict` is the combined verdict with model_a as "A"; None unless the status is consistent
    or inconsistent.
    """

    item_id: str
    judge: str
    model_a: str
    model_b: str
    replies: tuple[str | None, str | None]
    errors: tuple[str | None, str | None]
    order_verdicts: tuple[str | None, str | None]
    status: str
    verdict: str | None

    def __post_init__(self):
        where = f"JudgedItem {self.item_id!r}"
        if self.status not in STATUSES:
            raise ValueError(f"{where}: unknown status {self.status!r}; expected one of "
                             f"{STATUSES}")
        for v in self.order_verdicts:
            if v is not None:
                pairwise.check_verdict(v)
        if (self.verdict is None) != (self.status in (UNPARSEABLE, ERROR)):
            raise ValueError(f"{where}: status {self.status!r} does not fit verdict "
                             f"{self.verdict!r}")
        if self.verdict is not None:
            pairwise.check_verdict(self.verdict)

    @property
    def decision(self) -> str | None:
        """The combined verdict in model terms: the better model's name, "tie" or "both_bad"."""
        if self.verdict is None:
            return None
        return {A: self.model_a, B: self.model_b}.get(self.verdict, self.verdict)

    def rating(self) -> Rating | None:
        """The combined verdict as a `Rating` by the judge (None without a verdict)."""
        if self.verdict is None:
            return None
        return Rating(self.item_id, self.judge, self.verdict, self.model_a, self.model_b)

    def order_ratings(self) -> list[Rating]:
        """One `Rating` per readable reply, with the display order it saw (for position bias)."""
        shown = ((self.model_a, self.model_b), (self.model_b, self.model_a))
        return [Rating(self.item_id, self.judge, verdict, left, right)
                for verdict, (left, right) in zip(self.order_verdicts, shown)
                if verdict is not None]


def _swap(verdict: str) -> str:
    return {A: B, B: A}.get(verdict, verdict)


def _combine(first: str | None, second: str | None, errors: tuple) -> tuple[str, str | None]:
    """Status and combined verdict (model_a as "A") from the two orders' verdicts."""
    if any(errors):
        return ERROR, None
    if first is None or second is None:
        return UNPARSEABLE, None
    # The second order showed model_b first, so its "A" means model_b.
    if first == _swap(second):
        return CONSISTENT, first
    return INCONSISTENT, TIE


def judge_prompts(item: PairwiseItem) -> tuple[Prompt, Prompt]:
    """The two prompts for an item: model_a's output shown first, then model_b's."""
    def prompt(suffix: str, first: str, second: str) -> Prompt:
        user = JUDGE_USER_TEMPLATE.format(instruction=item.instruction, output_a=first,
                                          output_b=second)
        return Prompt(f"{item.item_id}:{suffix}",
                      (Turn("system", JUDGE_SYSTEM_PROMPT), Turn("user", user)))
    return prompt("ab", item.output_a, item.output_b), prompt("ba", item.output_b, item.output_a)


def judge_items(judge: Target, items: Sequence[PairwiseItem], *,
                settings: GenerationSettings = DEFAULT_JUDGE_SETTINGS) -> list[JudgedItem]:
    """Ask `judge` about every item in both orders (one batch) and combine the verdicts."""
    items = list(items)
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("judge_items: item ids must be unique")
    prompts = [p for item in items for p in judge_prompts(item)]
    replies = judge.complete(prompts, settings)
    if len(replies) != len(prompts):
        raise RuntimeError(f"judge {judge.name!r} returned {len(replies)} replies for "
                           f"{len(prompts)} prompts")
    judged = []
    for n, item in enumerate(items):
        pair = replies[2 * n: 2 * n + 2]
        texts = tuple(r.text for r in pair)
        errors = tuple(r.error for r in pair)
        verdicts = tuple(None if r.error is not None else parse_verdict(r.text) for r in pair)
        status, verdict = _combine(*verdicts, errors)
        judged.append(JudgedItem(item.item_id, judge.name, item.model_a, item.model_b, texts,
                                 errors, verdicts, status, verdict))
    return judged


# --- summaries ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class JudgeSummary:
    """How a judging run went: items by status, and replies that were unreadable or errors."""

    items: int
    consistent: int
    inconsistent: int
    unparseable: int
    errors: int
    unparseable_replies: int
    error_replies: int

    def __post_init__(self):
        if self.consistent + self.inconsistent + self.unparseable + self.errors != self.items:
            raise ValueError("JudgeSummary: the statuses do not add up to the items")


def judge_summary(records: Iterable[JudgedItem]) -> JudgeSummary:
    """Counts of `judge_items`' results by status, and of unparseable and error replies."""
    records = list(records)
    statuses = collections.Counter(r.status for r in records)
    return JudgeSummary(
        items=len(records), consistent=statuses[CONSISTENT], inconsistent=statuses[INCONSISTENT],
        unparseable=statuses[UNPARSEABLE], errors=statuses[ERROR],
        unparseable_replies=sum(e is None and v is None for r in records
                                for e, v in zip(r.errors, r.order_verdicts)),
        error_replies=sum(e is not None for r in records for e in r.errors))


def judge_ratings(records: Iterable[JudgedItem]) -> list[Rating]:
    """The combined verdicts as ratings (for win rates and Bradley-Terry)."""
    return [rating for r in records if (rating := r.rating()) is not None]


def judge_order_ratings(records: Iterable[JudgedItem]) -> list[Rating]:
    """Every readable single-order verdict as a rating (for the judge's position bias)."""
    return [rating for r in records for rating in r.order_ratings()]


@dataclasses.dataclass(frozen=True)
class HumanAgreement:
    """Judge versus the plurality of human raters, on items where both have a verdict.

    `agreement` is the share of those items where the decisions match; `kappa` is Cohen's kappa
    between the two label sequences (NaN when undefined). `n_split` counts items whose human
    vote had no unique plurality and so were left out.
    """

    n_items: int
    agreement: float
    kappa: float
    n_split: int

    def __post_init__(self):
        if self.n_items <= 0 or not 0.0 <= self.agreement <= 1.0 or self.n_split < 0:
            raise ValueError(f"HumanAgreement: invalid values {dataclasses.asdict(self)}")


def agreement_with_humans(judge_records: Iterable[JudgedItem],
                          human_ratings: Iterable[Rating | Mapping], *,
                          both_bad_as_tie: bool = False) -> HumanAgreement | None:
    """How often the judge's decision matches the humans' plurality decision, and Cohen's kappa.

    Decisions are compared in model terms, so the judge's order and each rater's display order
    do not matter. With `both_bad_as_tie`, "both_bad" and "tie" are one label (as in win rates).
    Returns None when no item has both a judge verdict and a unique human plurality.
    """
    def label(decision: str) -> str:
        return TIE if both_bad_as_tie and decision == BOTH_BAD else decision

    humans = pairwise.as_ratings(human_ratings)
    if both_bad_as_tie:
        humans = [dataclasses.replace(r, verdict=TIE) if r.verdict == BOTH_BAD else r
                  for r in humans]
    majority = pairwise.majority_decisions(humans)
    judged = {r.item_id: r.decision for r in judge_records if r.decision is not None}
    shared = [item for item in judged if item in majority]
    split = sum(majority[item] is None for item in shared)
    shared = [item for item in shared if majority[item] is not None]
    if not shared:
        return None
    judge_labels = [label(judged[item]) for item in shared]
    human_labels = [majority[item] for item in shared]
    agree = sum(j == h for j, h in zip(judge_labels, human_labels))
    return HumanAgreement(n_items=len(shared), agreement=agree / len(shared),
                          kappa=pairwise.cohen_kappa(judge_labels, human_labels), n_split=split)
