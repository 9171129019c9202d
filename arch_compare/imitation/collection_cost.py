"""The target's answers in a study's budget: priced before they are bought, recorded after.

- `planned_collections`: every purchase the study will make, per data source with a prompts task
  and per selection strategy (and per model where a strategy chooses with that model's weights),
  with its estimated tokens (prompt characters / CHARS_PER_TOKEN, `collection.
  expected_answer_tokens` per answer) and dollars at `collection.price`;
- `collection_lines`: those purchases as lines of the study's budget table;
- `record_collection`: after a purchase, its estimate against what the target billed, written to
  the results database (`collections`), which the report shows.

Random buys the first max(amounts) prompts of the source's pool, known in advance. Any other
strategy chooses up to max(amounts) prompts of the pool once the model's base weights are there;
which ones, and how many it shares with other strategies (paid once), is unknown before: its
estimate is an upper bound, the longest max(amounts) prompts of the pool, counted in full.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from arch_compare.budget.targets import (CollectionCost, TargetPrice, collection_cost, dollars,
                                         get_price, spent)
from arch_compare.imitation import collection, evaluation
from arch_compare.imitation.config import DataSource, StudyConfig
from arch_compare.imitation.targets import CHARS_PER_TOKEN, estimate_tokens
from arch_compare.results import Collection, ResultsStore

log = logging.getLogger(__name__)
RANDOM = "random"


@dataclasses.dataclass(frozen=True)
class PlannedCollection:
    """One purchase of the study: `answers` answers of `source` chosen by `selection` (for
    `model`; '' where every model shares them). `prompt_characters` is None where the prompts
    task's files are not there to count; `upper_bound` where the prompts are chosen later."""

    source: str
    selection: str
    model: str
    answers: int
    prompt_characters: int | None
    answer_tokens: int
    upper_bound: bool
    cost: CollectionCost | None  # None: no price row, or the prompts could not be counted

    @property
    def prompt_tokens(self) -> int | None:
        return None if self.prompt_characters is None else estimate_tokens(self.prompt_characters)

    @property
    def label(self) -> str:
        chosen = "" if self.selection == RANDOM else f"/{self.selection}/{self.model}"
        return f"{self.source}{chosen}"


def _price(config: StudyConfig) -> TargetPrice | None:
    return None if config.collection.price is None else get_price(config.collection.price)


def _pool(source: DataSource) -> list[dict] | None:
    """The prompts the source may buy answers for (None: the task's files are not there)."""
    from arch_compare_tasks import catalogue, registry  # noqa: F401  (registers the tasks)
    try:
        records = registry.records(source.prompts_task, "train")
    except FileNotFoundError as error:
        log.info("data source %s: prompts not counted (%s)", source.name, error)
        return None
    return records[:source.selection.pool] if source.selection.pool else records


def _characters(records: Iterable[dict]) -> int:
    """The characters the target reads of each record's prompt (its every message)."""
    return sum(len(turn.text) for record in records
               for turn in evaluation.prompt_of(record).turns)


def planned_collections(config: StudyConfig, sources: Sequence[DataSource] | None = None
                        ) -> list[PlannedCollection]:
    """Every purchase of the target's answers the study makes (of `sources`; default all),
    estimated before it runs."""
    price = _price(config)
    batch = config.collection.mode == "batch"
    per_answer = config.collection.expected_answer_tokens
    planned = []
    for source in config.sources if sources is None else sources:
        if source.prompts_task is None:
            continue  # a pre-collected file: nothing is bought
        pool = _pool(source)
        count = max(source.amounts)
        buyers = [(RANDOM, "")] if RANDOM in source.selection.strategies else []
        buyers += [(strategy, model.name) for model in config.models
                   if source in config.sources_for(model)
                   for strategy in source.selection.strategies_for(model.name)
                   if strategy != RANDOM]
        # Any `count` prompts of the pool may be chosen: the longest are the most they can cost.
        longest = (None if pool is None or buyers[-1:] in ([], [(RANDOM, "")]) else
                   sum(sorted((_characters([record]) for record in pool), reverse=True)[:count]))
        for strategy, model in buyers:
            characters = (None if pool is None else _characters(pool[:count])
                          if strategy == RANDOM else longest)
            answers = count if pool is None else min(count, len(pool))
            answer_tokens = answers * per_answer
            cost = (None if price is None or characters is None else
                    collection_cost(price, estimate_tokens(characters), answer_tokens,
                                    batch=batch))
            planned.append(PlannedCollection(source.name, strategy, model, answers, characters,
                                             answer_tokens, strategy != RANDOM, cost))
    return planned


def collection_lines(config: StudyConfig, planned: Sequence[PlannedCollection]
                     ) -> tuple[list[str], float | None]:
    """The purchases as lines of the budget table, and their dollars (None: some unpriced)."""
    if not planned:
        return [], 0.0
    settings = config.collection
    price = _price(config)
    where = ("not priced (collection.price is None)" if price is None else
             f"at {price.name!r} of budgets/targets.yaml")
    lines = [f"  the target's answers, {settings.mode} {where} (prompts: characters / "
             f"{CHARS_PER_TOKEN:g}; answers: {settings.expected_answer_tokens} tokens each):"]
    if price is not None:
        lines.append(f"    price {price.name!r}: {price.source}, {price.date}"
                     + ("; FICTIONAL: made-up prices, not a real cost" if price.fictional
                        else ""))
    total: float | None = 0.0
    for item in planned:
        prompt_tokens = "n/a" if item.prompt_tokens is None else f"{item.prompt_tokens:,}"
        usd = "n/a" if item.cost is None else dollars(item.cost.usd)
        bound = " (upper bound)" if item.upper_bound else ""
        lines.append(f"    {item.label:<46} {item.answers:>7,} answers {prompt_tokens:>12} "
                     f"prompt + {item.answer_tokens:>12,} answer tokens {usd:>10}{bound}")
        total = None if item.cost is None or total is None else total + item.cost.usd
    if any(item.prompt_characters is None for item in planned):
        lines.append("    n/a: the prompts task's files are not there to count")
    if any(item.upper_bound for item in planned):
        lines.append("    upper bound: strategies other than random choose their prompts when "
                     "they run; priced as the pool's longest prompts, each bought anew (a "
                     "prompt two strategies choose is paid for once)")
    return lines, total


# --- what was spent -------------------------------------------------------------------------------

def _modes(cache_path: Path) -> dict[str, str]:
    """key -> how its answer was bought (the record's `mode`; online where it has none). The
    cache itself is checked by `collection.load_collected`, which reads it first."""
    modes: dict[str, str] = {}
    with open(cache_path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n") or not line.strip():
                continue  # a write cut short: not an answer
            record = json.loads(line)
            if "response" in record:
                modes.setdefault(record["key"], record.get("mode", "online"))
    return modes


def record_collection(store: ResultsStore, study_name: str, config: StudyConfig,
                      source: DataSource, cache_path: str | os.PathLike, *,
                      selection: str = RANDOM, model: str = "",
                      keys: Sequence[str] | None = None) -> Collection:
    """Write (and return) what one purchase was estimated to cost against what it was billed:
    the answers of `keys` (the cache keys this source x selection x model bought; None: every
    answer in the cache), tokens as the target counted them or estimated where it did not, and
    dollars at `collection.price`. Answers bought through the batch interface (`mode` batch in
    their records) are priced at the row's batch discount."""
    cache_path = Path(cache_path)
    answers = collection.load_collected(cache_path)  # raises, naming file:line, on a bad cache
    if keys is not None:
        wanted = set(keys)
        answers = [answer for answer in answers if answer.key in wanted]
    modes = _modes(cache_path) if answers else {}
    by_mode = {mode: spent(a for a in answers if modes.get(a.key, "online") == mode)
               for mode in ("online", "batch")}
    total = by_mode["online"] + by_mode["batch"]
    price = _price(config)
    purchases = planned_collections(config, [source])
    planned = next((item for item in purchases
                    if item.selection == selection and item.model == model), None)
    if planned is None:
        raise ValueError(f"record_collection: the study {config.name!r} buys no answers of "
                         f"{source.name!r} for selection {selection!r} and model {model!r} "
                         f"(its purchases: {', '.join(p.label for p in purchases) or 'none'})")
    spent_usd = None if price is None else sum(
        collection_cost(price, tally.prompt_tokens, tally.completion_tokens,
                        batch=mode == "batch").usd for mode, tally in by_mode.items())
    # One mode where every answer was bought one way; the study's where they were mixed (a
    # batch's failures retried online, say): the dollars above price each answer by its own.
    bought = [mode for mode, tally in by_mode.items() if tally.answers]
    mode = bought[0] if len(bought) == 1 else config.collection.mode
    row = Collection(
        source=source.name, selection=selection, model=model, mode=mode,
        price=None if price is None else price.name, answers=total.answers,
        prompt_tokens=total.prompt_tokens, completion_tokens=total.completion_tokens,
        tokens_estimated=total.tokens_estimated, spent_usd=spent_usd,
        estimated_answers=planned.answers, estimated_prompt_tokens=planned.prompt_tokens or 0,
        estimated_completion_tokens=planned.answer_tokens,
        estimated_usd=None if planned.cost is None else planned.cost.usd,
        fictional_price=bool(price and price.fictional))
    store.put_collection(study_name, row)
    return row


