"""The cost of a whole experiment grid, and re-pricing it from a measured run.

A study is models x data amounts x hardware set-ups, each fine-tuning run followed by its
evaluations (forward passes only). Runs are listed most expensive first, so the researcher sees
what to cut. With `target_price` (a row of budgets/targets.yaml) the grid also prices the
target's answers it trains on: the largest amount, bought once and shared by every model and
smaller amount (the first N examples), as max(data_tokens) / (input_length + target_length)
conversations of input_length prompt and target_length answer tokens.
"""

from __future__ import annotations

import dataclasses
import itertools

from arch_compare.budget.cost import RunEstimate, RunSpec, estimate_run, realised_mfu
from arch_compare.budget.flops import forward_flops
from arch_compare.budget.hardware import Chip, get_chip
from arch_compare.budget.targets import CollectionCost, collection_cost, get_price
from arch_compare.models.zoo import get_preset


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """An evaluation's size: `examples` forward passes of `input_length` + `target_length`."""

    name: str
    examples: int
    input_length: int
    target_length: int

    def __post_init__(self):
        if self.examples <= 0 or self.input_length < 0 or self.target_length <= 0:
            raise ValueError(f"evaluation {self.name!r}: need examples > 0, input_length >= 0 "
                             f"and target_length > 0")


@dataclasses.dataclass(frozen=True)
class Setup:
    """Hardware for a run: a chip kind and how many (None: the fewest that fit)."""

    hardware: str
    chips: int | None = None


def _as_setup(value) -> Setup:
    if isinstance(value, Setup):
        return value
    if isinstance(value, str):
        return Setup(value)
    hardware, chips = value
    return Setup(hardware, chips)


@dataclasses.dataclass(frozen=True)
class StudyGrid:
    models: tuple[str, ...]
    data_tokens: tuple[float, ...]
    setups: tuple[Setup, ...]
    input_length: int = 1024
    target_length: int = 1024
    evaluations: tuple[Evaluation, ...] = ()
    optimizer: str = "adamw"
    batch_size: int = 32
    epochs: float = 1.0
    remat: bool = False
    mfu: dict[str, float] = dataclasses.field(default_factory=dict)  # hardware -> MFU override
    target_price: str | None = None  # a row of budgets/targets.yaml; None: answers not priced
    collection_mode: str = "online"  # or "batch": the row's batch discount

    def __post_init__(self):
        # Config files write setups as "chip" or ("chip", count) and evaluations as dicts.
        setups = tuple(_as_setup(setup) for setup in self.setups)
        evaluations = tuple(e if isinstance(e, Evaluation) else Evaluation(**e)
                            for e in self.evaluations)
        object.__setattr__(self, "setups", setups)
        object.__setattr__(self, "evaluations", evaluations)
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "data_tokens", tuple(self.data_tokens))
        if not self.models or not self.data_tokens or not self.setups:
            raise ValueError("a study needs at least one model, one data amount and one setup")
        for model in self.models:
            get_preset(model)  # unknown names fail here, with suggestions
        if self.collection_mode not in ("online", "batch"):
            raise ValueError(f"collection_mode must be 'online' or 'batch', got "
                             f"{self.collection_mode!r}")
        if self.target_price is not None:
            get_price(self.target_price)  # an unknown row fails here, listing the known ones

    def collection(self) -> tuple[int, CollectionCost] | None:
        """(answers, their cost) of the largest data amount, or None without `target_price`."""
        if self.target_price is None:
            return None
        per_answer = self.input_length + self.target_length
        answers = -(-int(max(self.data_tokens)) // per_answer)  # ceil
        return answers, collection_cost(get_price(self.target_price),
                                        answers * self.input_length,
                                        answers * self.target_length,
                                        batch=self.collection_mode == "batch")

    def runs(self) -> list[RunSpec]:
        return [RunSpec(model, tokens=tokens, input_length=self.input_length,
                        target_length=self.target_length, hardware=setup.hardware,
                        chips=setup.chips, mfu=self.mfu.get(setup.hardware),
                        optimizer=self.optimizer, batch_size=self.batch_size, epochs=self.epochs,
                        remat=self.remat)
                for model, tokens, setup in itertools.product(self.models, self.data_tokens,
                                                              self.setups)]


@dataclasses.dataclass(frozen=True)
class StudyEstimate:
    runs: tuple[RunEstimate, ...]  # most expensive (chip-hours) first
    evaluation_flops: dict[str, float]  # model -> FLOPs of one pass over all evaluations
    answers: int = 0  # the target's answers bought (priced only with StudyGrid.target_price)
    collection: CollectionCost | None = None

    def total_cost_usd(self, hardware: str) -> float | None:
        costs = [run.cost_usd for run in self.runs if run.chip.name == hardware]
        return None if any(cost is None for cost in costs) else sum(costs)

    def total_chip_hours(self, hardware: str) -> float:
        return sum(run.chip_hours for run in self.runs if run.chip.name == hardware)


def estimate_study(grid: StudyGrid, catalogue: dict[str, Chip] | None = None) -> StudyEstimate:
    """Every run of the grid priced, plus its evaluations' FLOPs folded into each run's cost."""
    evaluation_flops = {
        model: sum(e.examples * forward_flops(get_preset(model), e.input_length,
                                              e.target_length).total
                   for e in grid.evaluations)
        for model in grid.models}
    runs = []
    for spec in grid.runs():
        # Each fine-tuned model is evaluated once, on the chips it trained on.
        runs.append(dataclasses.replace(estimate_run(spec, catalogue),
                                        evaluation_flops=evaluation_flops[spec.model]))
    runs.sort(key=lambda run: run.chip_hours, reverse=True)
    answers, cost = grid.collection() or (0, None)
    return StudyEstimate(tuple(runs), evaluation_flops, answers, cost)


def calibrate(grid: StudyGrid, model: str, hardware: str, chips: int, tokens_per_second: float,
              input_length: int | None = None, target_length: int | None = None,
              catalogue: dict[str, Chip] | None = None) -> tuple[float, StudyEstimate]:
    """Re-price `grid` with the MFU a measured run of `model` achieved on `chips` x `hardware`.

    The measured run's lengths default to the grid's. Returns the realised MFU and the study
    priced with it on that hardware (other hardware keeps its MFU: a measurement on one chip
    kind says little about another).
    """
    chip = get_chip(hardware, catalogue)
    mfu = realised_mfu(get_preset(model), tokens_per_second,
                       grid.input_length if input_length is None else input_length,
                       grid.target_length if target_length is None else target_length,
                       chip, chips)
    calibrated = dataclasses.replace(grid, mfu={**grid.mfu, hardware: mfu})
    return mfu, estimate_study(calibrated, catalogue)
