"""The report's account of the target's answers: for each purchase, what was estimated before it
ran against what the target billed, in tokens and dollars (`collections` of the results
database, written by `imitation.collection_cost.record_collection`)."""

from __future__ import annotations

from arch_compare.report import fmt
from arch_compare.report.document import Section, Table
from arch_compare.report.load import StudyData
from arch_compare.results import Collection


def _usd(value: float | None) -> str:
    """Cents from a dollar up, two significant digits below: a small study's answers cost
    fractions of a cent, and estimated against spent must stay comparable there."""
    if value is None:
        return fmt.NA
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.2g}"


def _ratio(spent: float | None, estimated: float | None) -> str:
    return fmt.NA if spent is None or not estimated else f"{spent / estimated:.2f}"


def _tokens(value: int) -> str:
    return f"{value:,}"


def _row(item: Collection) -> tuple[str, ...]:
    return (item.source, item.selection, item.model or "(shared)", item.mode,
            f"{item.estimated_answers:,} / {item.answers:,}",
            _tokens(item.estimated_prompt_tokens), _tokens(item.prompt_tokens),
            _tokens(item.estimated_completion_tokens), _tokens(item.completion_tokens),
            "estimated (4 chars/token)" if item.tokens_estimated else "the target",
            _usd(item.estimated_usd), _usd(item.spent_usd),
            _ratio(item.spent_usd, item.estimated_usd))


def _total(items: tuple[Collection, ...]) -> tuple[str, ...]:
    def summed(values) -> float | None:
        values = list(values)
        return None if any(v is None for v in values) else sum(values)

    estimated = summed(i.estimated_usd for i in items)
    spent = summed(i.spent_usd for i in items)
    return ("Total", "", "", "",
            f"{sum(i.estimated_answers for i in items):,} / {sum(i.answers for i in items):,}",
            *(_tokens(sum(getattr(i, name) for i in items)) for name in (
                "estimated_prompt_tokens", "prompt_tokens", "estimated_completion_tokens",
                "completion_tokens")),
            "estimated in part" if any(i.tokens_estimated for i in items) else "the target",
            _usd(estimated), _usd(spent), _ratio(spent, estimated))


def collection_table(data: StudyData) -> Table:
    items = data.collections
    prices = sorted({item.price for item in items if item.price is not None})
    fictional = sorted({item.price for item in items if item.fictional_price})
    priced = (f"Dollars at {', '.join(prices)} of budgets/targets.yaml"
              + (f" — FICTIONAL price row{'s' if len(fictional) > 1 else ''} "
                 f"{', '.join(fictional)}: made-up prices that show the mechanism, not a real "
                 f"cost" if fictional else "") + "." if prices
              else "No price row was set (collection.price): dollars n/a.")
    return Table(
        columns=("Source", "Selection", "Chosen for", "Mode", "Answers est. / bought",
                 "Prompt tokens est.", "Prompt tokens billed", "Answer tokens est.",
                 "Answer tokens billed", "Tokens counted by", "Est. $", "Spent $",
                 "Spent / est."),
        rows=(*(_row(item) for item in items), _total(items)),
        numeric=(False, False, False, False, *(True,) * 5, False, True, True, True),
        styles=(*("" for _ in items), "total"),
        caption="The target's answers, estimated before they were bought (prompt characters / "
                "4; the study's expected answer length; strategies other than random at an "
                "upper bound: the longest prompts of the pool) against what was billed: tokens "
                "as the target counted them, or estimated at 4 characters per token where it "
                "counted none. Batch purchases are priced at the row's batch discount. A prompt "
                "two strategies chose is paid for once but counted in both rows, so the total "
                f"may exceed what was paid. {priced}")


def collection_sections(data: StudyData) -> tuple[Section, ...]:
    """Estimated against spent for every purchase of the target's answers; no section for a
    study that recorded none (every source a pre-collected file, or recorded before purchases
    were)."""
    if not data.collections:
        return ()
    return (Section("The target's answers: estimated and spent", "collection-costs",
                    (collection_table(data),)),)
