"""What a study spends, as configuration: where its runs are priced (`budget`) and how the
target's answers are bought (`collection`). Part of `StudyConfig` (config.py)."""

from __future__ import annotations

import dataclasses

from arch_compare.budget.targets import get_price as get_target_price


@dataclasses.dataclass(frozen=True)
class BudgetSettings:
    """Where the study's runs are priced, and above what it asks before starting."""

    hardware: str = "a100-80gb"
    chips: int | None = None
    confirm_above_usd: float = 100.0


COLLECTION_MODES = ("online", "batch")


@dataclasses.dataclass(frozen=True)
class CollectionSettings:
    """How the target's answers are bought. `online`: chat completions, `concurrency` requests in
    flight under `requests_per_minute` and `tokens_per_minute` (None: no limit); `batch`: the
    batch interface (about half the price, answers within its window), polled every
    `batch_poll_seconds`. `price` names a row of budgets/targets.yaml that prices the answers
    (None: not priced); `expected_answer_tokens` is the answer length the estimate assumes."""

    mode: str = "online"
    concurrency: int = 1
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_attempts: int = 5
    batch_poll_seconds: float = 30.0
    price: str | None = None
    expected_answer_tokens: int = 256

    def __post_init__(self):
        if self.mode not in COLLECTION_MODES:
            raise ValueError(f"collection.mode must be one of {COLLECTION_MODES}, got "
                             f"{self.mode!r}")
        for name in ("concurrency", "max_attempts", "expected_answer_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"collection.{name} must be a positive integer, got {value!r}")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"collection.{name} must be positive or None, got {value!r}")
        if not self.batch_poll_seconds > 0:
            raise ValueError(f"collection.batch_poll_seconds must be positive, got "
                             f"{self.batch_poll_seconds!r}")
        if self.price is not None:  # an unknown row fails here, naming the sheet and its rows
            try:
                get_target_price(self.price)
            except ValueError as error:
                raise ValueError(f"collection.price: {error}") from None
