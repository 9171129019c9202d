"""The price sheet of targets (`budgets/targets.yaml`): what a target's answers cost.

A collection is priced by its tokens: the prompts sent (input) and the answers bought (output),
each at the row's dollars per million tokens, less the row's batch discount when bought through
the batch interface. Before a collection runs its tokens are estimated (prompt characters / 4, an
expected answer length); afterwards `spent` adds up what the target billed, estimating (and
saying so) where it counted nothing.

Rows are validated when read; a bad row is reported as `file:line: targets.<name>: problem`, and
an unknown name lists the known ones. A row marked `fictional` (the demo's) has made-up prices:
every description of a cost priced with it says so.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Iterable

from arch_compare.budget.sheets import load_rows

from arch_compare.imitation.targets import CHARS_PER_TOKEN, TokenUsage  # noqa: F401 (re-export)

DEFAULT_SHEET = Path(__file__).resolve().parents[2] / "budgets" / "targets.yaml"
PER_MILLION = 1e6


class TargetPriceError(ValueError):
    """A malformed price sheet or an unknown target row."""


def _positive_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0


@dataclasses.dataclass(frozen=True)
class TargetPrice:
    """One row of the sheet: US dollars per million prompt (input) and answer (output) tokens,
    and the fraction the batch interface takes off both (None: unverified, priced in full)."""

    name: str
    input_usd_per_million: float
    output_usd_per_million: float
    batch_discount: float | None
    source: str
    date: str
    fictional: bool = False

    def __post_init__(self):
        for field in ("input_usd_per_million", "output_usd_per_million"):
            if not _positive_number(getattr(self, field)):
                raise ValueError(f"{field} must be a number >= 0, got {getattr(self, field)!r}")
        discount = self.batch_discount
        if discount is not None and not (_positive_number(discount) and discount < 1):
            raise ValueError(f"batch_discount must be a fraction in [0, 1) or null, got "
                             f"{discount!r}")
        if not isinstance(self.fictional, bool):
            raise ValueError(f"fictional must be true or false, got {self.fictional!r}")
        if not str(self.source).strip() or not str(self.date).strip():
            raise ValueError("source and date must be given")

    def discount(self, batch: bool) -> float:
        """The fraction taken off (0 online, or in batch where no discount is verified)."""
        return (self.batch_discount or 0.0) if batch else 0.0

    def usd(self, prompt_tokens: int, answer_tokens: int, *, batch: bool) -> float:
        full = (prompt_tokens * self.input_usd_per_million
                + answer_tokens * self.output_usd_per_million) / PER_MILLION
        return full * (1.0 - self.discount(batch))


FIELDS = tuple(f.name for f in dataclasses.fields(TargetPrice) if f.name != "name")
REQUIRED = tuple(f for f in FIELDS if f != "fictional")


@dataclasses.dataclass(frozen=True)
class CollectionCost:
    """What buying `answers` answers costs: tokens in and out, and dollars at `price`."""

    price: str  # the row's name
    prompt_tokens: int
    answer_tokens: int
    batch: bool
    usd: float
    discount: float  # the fraction taken off (batch)
    fictional: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.answer_tokens

    def describe(self) -> str:
        """One line: tokens, dollars, and what they rest on."""
        how = ("batch, " + (f"{self.discount:.0%} off" if self.discount else
                            "no verified batch discount: full price") if self.batch
               else "online")
        fictional = "; FICTIONAL price row" if self.fictional else ""
        return (f"{self.prompt_tokens:,} prompt + {self.answer_tokens:,} answer tokens, "
                f"{dollars(self.usd)} at {self.price!r} ({how}{fictional})")


def dollars(usd: float) -> str:
    """Cents for sums of a cent or more; two significant digits below (a few tokens' worth)."""
    return f"${usd:,.2f}" if usd >= 0.01 or usd == 0 else f"${usd:.2g}"


def collection_cost(price: TargetPrice, prompt_tokens: int, answer_tokens: int, *,
                    batch: bool) -> CollectionCost:
    """The dollars of `prompt_tokens` sent and `answer_tokens` bought at `price`."""
    for name, value in (("prompt_tokens", prompt_tokens), ("answer_tokens", answer_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"collection_cost: {name} must be an integer >= 0, got {value!r}")
    return CollectionCost(price.name, prompt_tokens, answer_tokens, bool(batch),
                          price.usd(prompt_tokens, answer_tokens, batch=batch),
                          price.discount(batch), price.fictional)


@dataclasses.dataclass(frozen=True)
class Spent:
    """The tokens a collection's answers were billed: `estimated` of the `answers` had no usage
    from the target and were counted at CHARS_PER_TOKEN characters per token."""

    answers: int
    prompt_tokens: int
    completion_tokens: int
    estimated: int

    @property
    def tokens_estimated(self) -> bool:
        return self.estimated > 0

    def __add__(self, other: "Spent") -> "Spent":
        return Spent(*(a + b for a, b in zip(dataclasses.astuple(self),
                                             dataclasses.astuple(other))))


NOTHING_SPENT = Spent(0, 0, 0, 0)


def spent(answers: Iterable) -> Spent:
    """What `answers` (collected answers: `.usage`, `.prompt`, `.response`) were billed: each
    answer's usage as the target counted it, else estimated from its text (`TokenUsage.estimate`,
    CHARS_PER_TOKEN characters per token) and counted in `estimated`."""
    total = NOTHING_SPENT
    for answer in answers:
        usage = answer.usage
        if usage is None or usage.estimated:
            usage = usage or TokenUsage.estimate(answer.prompt, answer.response)
            total += Spent(1, usage.prompt_tokens, usage.completion_tokens, 1)
        else:
            total += Spent(1, usage.prompt_tokens, usage.completion_tokens, 0)
    return total


# --- the sheet ------------------------------------------------------------------------------------

def load_prices(path: str | Path | None = None) -> dict[str, TargetPrice]:
    """Every row of the sheet at `path` (default: the project's `budgets/targets.yaml`)."""
    path = Path(path) if path is not None else DEFAULT_SHEET
    return load_rows(path, "targets", TargetPrice, fields=FIELDS, required=REQUIRED,
                     error=TargetPriceError)


def get_price(name: str, prices: dict[str, TargetPrice] | None = None,
              path: str | Path | None = None) -> TargetPrice:
    """The row called `name`; an unknown name lists the known rows and names the sheet."""
    prices = load_prices(path) if prices is None else prices
    if name not in prices:
        close = difflib.get_close_matches(name, prices, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TargetPriceError(f"unknown target price {name!r} in "
                               f"{Path(path) if path else DEFAULT_SHEET}; {hint}known rows: "
                               f"{', '.join(prices)}")
    return prices[name]
