"""What each imitation run cost, for the recipe sections: estimated FLOPs and dollars (the budget
module's, recorded before the run), measured dollars where the device it ran on has a price, and
the parameters it trained.

Measured dollars are the measured chip-hours (the run's `chip_hours` where it recorded them, else
its device count times its wall-clock hours) times the on-demand price of its device in
`budgets/hardware.yaml`. A device the catalogue does not list, or lists without a verified price
(a CPU, an H200), has none: the value is None and `measured_note` says why.

A `wise` run trains nothing: it interpolates the weights of its cell's `full` run, so it cannot
exist without that run's training. Its cost is its own (evaluation) plus the whole of that full
run's, and `includes_full` says so wherever it is shown.
"""

from __future__ import annotations

import dataclasses
import re

from arch_compare.report import analysis
from arch_compare.report.load import StudyData
from arch_compare.results import Run

# JAX's `device_kind` for the TPUs whose catalogue name it does not spell out.
DEVICE_ALIASES = {"tpuv5lite": "tpu-v5e", "tpuv6lite": "tpu-v6e"}
WISE = "wise"
EVERY_WEIGHT = ("full", "mix", "l2sp")  # recipes.py: the kinds that train every weight


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def price_catalogue() -> tuple[dict[str, float | None], str | None]:
    """(chip name -> on-demand dollars per chip-hour or None, a note where it cannot be read)."""
    try:  # the budget's own reader validates the sheet (YAML only, no JAX)
        from arch_compare.budget.hardware import load_catalogue
        return {name: chip.usd_per_chip_hour for name, chip in load_catalogue().items()}, None
    except (OSError, ValueError) as error:
        return {}, f"the hardware catalogue could not be read ({error})"


def device_chip(kind: str, catalogue: dict[str, float | None]) -> str | None:
    """The catalogue's name for a device kind ("TPU v4" -> tpu-v4, "NVIDIA H100 80GB HBM3" ->
    h100), or None when no single row matches."""
    normal = _normal(kind)
    names = {_normal(name): name for name in catalogue}
    if normal in names:
        return names[normal]
    if normal in DEVICE_ALIASES:
        return DEVICE_ALIASES[normal]
    found = [name for key, name in names.items() if key and key in normal]
    return found[0] if len(found) == 1 else None


def _number(record: dict | None, key: str) -> float | None:
    value = (record or {}).get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    return None


def measured_dollars(run: Run, catalogue: dict[str, float | None]) -> tuple[float | None, str]:
    """(measured chip-hours x the device's price, a note: the device priced, or why none)."""
    measured = run.measured or {}
    device = measured.get("device")
    if not device:
        return None, "not measured"
    count, _, kind = str(device).partition(" x ")
    if not kind:  # a device recorded without its count
        count, kind = "1", str(device)
    chip = device_chip(kind, catalogue)
    if chip is None:
        return None, f"{kind}: not in budgets/hardware.yaml"
    if catalogue.get(chip) is None:
        return None, f"{chip}: no verified price in budgets/hardware.yaml"
    chip_hours = _number(measured, "chip_hours")
    wall = _number(measured, "wall_seconds")
    if chip_hours is None and wall is not None and count.strip().isdigit():
        chip_hours = int(count) * wall / 3600
    if chip_hours is None:
        return None, "no measured time"
    return chip_hours * catalogue[chip], f"{chip} at ${catalogue[chip]:.2f}/chip-hour"


def trainable_parameters(run: Run) -> float | None:
    """The parameters the run trained: as its estimate or configuration recorded them, else every
    parameter for the recipes that train every weight (full, mix, l2sp) and none for `wise`;
    None where unknown (a lora run that recorded no count)."""
    for record in (run.estimate, run.config, run.measured):
        value = _number(record, "trainable_parameters")
        if value is not None:
            return value
    kind = recipe_kind(run)
    if kind in EVERY_WEIGHT:
        return None if run.parameters is None else float(run.parameters)
    return 0.0 if kind == WISE else None


def recipe_kind(run: Run) -> str:
    """The recipe's kind (full, mix, l2sp, lora, wise) as the run's configuration records it."""
    recorded = (run.config or {}).get("recipe")
    if isinstance(recorded, dict) and recorded.get("kind"):
        return str(recorded["kind"])
    label = analysis.recipe_label(run)
    return WISE if "@" in label else label


@dataclasses.dataclass(frozen=True)
class RunCost:
    run: Run
    flops: float | None          # estimated: everything the run was priced for
    usd: float | None            # estimated
    measured_usd: float | None
    measured_note: str           # the device priced, or why measured dollars are n/a
    trainable: float | None
    includes_full: bool          # a wise run: its full run's cost is in these numbers


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def run_costs(data: StudyData) -> dict[str, RunCost]:
    """run_id -> its cost, for every imitation run of the study."""
    catalogue, problem = price_catalogue()
    imitation = [r for r in data.runs if r.role == "imitation"]
    full = {(r.model, r.data_source, r.selection, r.data_examples): r for r in imitation
            if analysis.recipe_label(r) == analysis.FULL}
    costs = {}
    for run in imitation:
        estimate = run.estimate or {}
        flops = _number(estimate, "flops")
        if flops is None:
            flops = _number(estimate, "train_flops")
        usd = _number(estimate, "cost_usd")
        measured, note = measured_dollars(run, catalogue)
        if problem is not None:
            note = problem
        wise = recipe_kind(run) == WISE
        if wise:
            base = full.get((run.model, run.data_source, run.selection, run.data_examples))
            own = None if base is None else _cost_alone(base, catalogue, problem)
            flops = _plus(flops, own.flops if own else None)
            usd = _plus(usd, own.usd if own else None)
            measured = _plus(measured, own.measured_usd if own else None)
            if own is None:
                note = "no full run in its cell"
            elif measured is None and own.measured_usd is None:
                note = f"its full run: {own.measured_note}"
        costs[run.run_id] = RunCost(run, flops, usd, measured, note, trainable_parameters(run),
                                    wise)
    return costs


def _cost_alone(run: Run, catalogue: dict[str, float | None], problem: str | None) -> RunCost:
    estimate = run.estimate or {}
    flops = _number(estimate, "flops")
    measured, note = measured_dollars(run, catalogue)
    return RunCost(run, flops if flops is not None else _number(estimate, "train_flops"),
                   _number(estimate, "cost_usd"), measured, problem or note,
                   trainable_parameters(run), False)
