"""The rows of the results database (`results.py`) as frozen dataclasses: a study, its runs, their
metrics, predictions, samples and paired comparisons, and what each collection of the target's
answers was estimated to cost and cost. `arch_compare.results` re-exports every name here."""

from __future__ import annotations

import dataclasses

ROLES = ("base", "imitation", "target")
STATUSES = ("pending", "running", "done", "failed")
METRIC_KINDS = ("capability", "style", "other")


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    config: dict
    directory: str
    created: float


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of `runs`: a base model, an imitation model or the target, and how it went."""

    run_id: str
    role: str
    model: str
    architecture: str
    family: str
    config: dict
    status: str = "pending"
    parameters: int | None = None
    data_source: str | None = None
    data_examples: int | None = None
    selection: str | None = None  # imitation runs: how the answers were chosen (default random)
    recipe: str | None = None  # imitation runs: the fine-tuning recipe's run label (default full)
    data_tokens: int | None = None
    data_reference_tokens: int | None = None
    estimate: dict | None = None
    measured: dict | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"run {self.run_id!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.status not in STATUSES:
            raise ValueError(f"run {self.run_id!r}: status must be one of {STATUSES}, "
                             f"got {self.status!r}")
        if self.role == "imitation" and (self.data_source is None or self.data_examples is None):
            raise ValueError(f"run {self.run_id!r}: an imitation run needs data_source and "
                             f"data_examples")
        if self.role == "imitation" and self.selection is None:
            # Runs recorded before selection existed bought the first prompts in order.
            object.__setattr__(self, "selection", "random")
        if self.role == "imitation" and self.recipe is None:
            # Runs recorded before recipes existed trained every weight (recipes.py: `full`).
            object.__setattr__(self, "recipe", "full")


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric of one run on one task; `low`-`high` its 95% interval (None where unknown)."""

    run_id: str
    task: str
    metric: str
    kind: str
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    method: str | None = None


@dataclasses.dataclass(frozen=True)
class Prediction:
    run_id: str
    task: str
    example_index: int
    example_id: str
    output: str


@dataclasses.dataclass(frozen=True)
class Comparison:
    """metric(run) - metric(baseline) on the same examples, with its paired-bootstrap 95%
    interval; `significant` when that interval excludes 0."""

    run_id: str
    baseline_run_id: str
    task: str
    metric: str
    difference: float | None
    low: float | None
    high: float | None
    significant: bool


@dataclasses.dataclass(frozen=True)
class Sample:
    run_id: str
    task: str
    example_id: str
    prompt: str
    output: str
    reference: str


COLLECTION_MODES = ("online", "batch")


@dataclasses.dataclass(frozen=True)
class Collection:
    """One purchase of the target's answers: a data source's answers for one selection strategy
    (and one `model` where the strategy asked that model which prompts to buy; '' where the
    answers are shared), the estimate made before it ran (`estimated_*`: prompt characters / 4
    and the expected answer length, priced at `price`) against what it was billed
    (`prompt_tokens`, `completion_tokens`; `tokens_estimated` where the target counted none for
    some answer and they were estimated from the text). Dollars are None without a price row."""

    source: str
    selection: str
    model: str
    mode: str
    price: str | None
    answers: int
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    spent_usd: float | None
    estimated_answers: int
    estimated_prompt_tokens: int
    estimated_completion_tokens: int
    estimated_usd: float | None
    fictional_price: bool = False  # the price row's prices are made up (the demo's)

    def __post_init__(self):
        where = f"collection {self.source}/{self.selection}/{self.model or '(shared)'}"
        if self.mode not in COLLECTION_MODES:
            raise ValueError(f"{where}: mode must be one of {COLLECTION_MODES}, got "
                             f"{self.mode!r}")
        for name in ("answers", "prompt_tokens", "completion_tokens", "estimated_answers",
                     "estimated_prompt_tokens", "estimated_completion_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: {name} must be an integer >= 0, got {value!r}")
        if self.price is None and (self.spent_usd, self.estimated_usd) != (None, None):
            raise ValueError(f"{where}: dollars need a price row")
        if self.price is not None and self.spent_usd is None:
            raise ValueError(f"{where}: a price row prices what was spent")
