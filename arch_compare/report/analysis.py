"""The numbers behind the report, computed from a `StudyData` snapshot; no formatting here.

- the order of runs in every table and legend (architecture, size, model, base before imitation,
  data source, amount; the target last);
- the share of the base-to-target gap an imitation run closed, per metric and averaged per kind;
- the headline numbers of the summary;
- the configuration keys whose values differ across imitation runs (the fairness check);
- estimated and measured compute per run, and the execution settings each run used.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable

from arch_compare.report.load import StudyData
from arch_compare.results import METRIC_KINDS, Run

ARCHITECTURES = ("decoder_only", "encoder_decoder", "target")
RANDOM = "random"  # the selection of runs that bought their answers without choosing them
FULL = "full"  # the recipe of runs that fine-tuned every weight (every run before recipes)
# A gap smaller than this (relative to the metric's size) is no gap: its share would be noise.
GAP_TOLERANCE = 1e-9
# Configuration keys whose last part names one of these are expected to differ between runs:
# they say which model was trained on which data, or where its files went.
MODEL_AND_DATA_KEYS = frozenset({
    "model", "preset", "model_name", "family", "architecture", "arch", "parameters",
    "checkpoint", "initial_checkpoint", "initial_checkpoint_path", "vocabulary",
    "vocabulary_path", "tokenizer", "tokenizer_path", "model_dir", "output_dir", "run_id",
    "data_source", "source", "data_examples", "examples", "num_examples", "data_tokens",
    "data_reference_tokens", "mixture", "mixture_or_task_name", "task", "selection", "strategy",
})
# A whole section under one of these names describes the model (layers, widths) or the data
# source (its name, prompts, file, how its answers were selected) of the run.
MODEL_AND_DATA_SECTIONS = frozenset({"model", "model_config", "source", "data_source",
                                     "selection"})
# Execution settings (mesh, dtypes, remat, microbatches) say how a run was laid out on its
# devices, not what it computed: listed as execution, never flagged as a fairness difference.
EXECUTION_SECTION = "execution"


@dataclasses.dataclass(frozen=True)
class MetricKey:
    task: str
    metric: str
    kind: str

    @property
    def name(self) -> str:
        return f"{self.task}/{self.metric}"


def metric_keys(data: StudyData) -> tuple[MetricKey, ...]:
    """Every metric of the study: capability first, then style, then other; else as recorded."""
    seen: dict[str, MetricKey] = {}
    for row in data.metrics:
        seen.setdefault(f"{row.task}/{row.metric}", MetricKey(row.task, row.metric, row.kind))
    order = {kind: i for i, kind in enumerate(METRIC_KINDS)}
    return tuple(sorted(seen.values(), key=lambda key: order.get(key.kind, len(order))))


def values_by_run(data: StudyData) -> dict[str, dict[str, float | None]]:
    """run_id -> {"task/metric": value}; a recorded None (undefined) is kept as None."""
    values: dict[str, dict[str, float | None]] = {}
    for row in data.metrics:
        values.setdefault(row.run_id, {})[f"{row.task}/{row.metric}"] = row.value
    return values


def intervals_by_run(data: StudyData) -> dict[str, dict[str, tuple[float, float]]]:
    """run_id -> {"task/metric": (low, high)}: the 95% intervals recorded (None bounds left out)."""
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    for row in data.metrics:
        if row.low is not None and row.high is not None:
            intervals.setdefault(row.run_id, {})[f"{row.task}/{row.metric}"] = (row.low, row.high)
    return intervals


def _run_sort_key(run: Run, sources: dict[str, int], selections: dict[str, int]) -> tuple:
    arch = ARCHITECTURES.index(run.architecture) if run.architecture in ARCHITECTURES else 2
    role = {"base": 0, "imitation": 1}.get(run.role, 2)
    return (run.role == "target", arch,
            math.inf if run.parameters is None else run.parameters, run.model, role,
            sources.get(run.data_source, 0), selections.get(run.selection, 0),
            run.data_examples or 0, run.run_id)


def sorted_runs(data: StudyData, runs: Iterable[Run] | None = None) -> list[Run]:
    """Runs in report order; data sources keep the order the study first used them in, and
    within a source the random runs come first, then each selection strategy's."""
    sources = {source: i for i, source in enumerate(data_sources(data))}
    strategies = {name: i for i, name in enumerate(selections(data))}
    return sorted(data.runs if runs is None else runs,
                  key=lambda r: _run_sort_key(r, sources, strategies))


def data_sources(data: StudyData) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.data_source for r in data.runs if r.data_source is not None))


def selections(data: StudyData, source: str | None = None) -> tuple[str, ...]:
    """How the imitation runs (of `source`, or all) chose their answers: random first (where any
    run bought at random), then the strategies in the order the study first used them."""
    found = dict.fromkeys(r.selection for r in data.runs if r.role == "imitation"
                          and (source is None or r.data_source == source))
    return tuple(sorted(found, key=lambda name: name != RANDOM))


def has_strategies(data: StudyData) -> bool:
    """Whether any run chose its answers by a strategy other than random."""
    return any(name != RANDOM for name in selections(data))


def models(data: StudyData) -> tuple[str, ...]:
    """Non-target model names in report order."""
    runs = [r for r in sorted_runs(data) if r.role != "target"]
    return tuple(dict.fromkeys(r.model for r in runs))


def recipe_label(run: Run) -> str:
    """How an imitation run fine-tuned: "full" (every run before recipes existed, and every run
    of a database without the `recipe` column), else its recipe's label ("lora", "wise@0.5")."""
    label = getattr(run, "recipe", None)
    if label:
        return str(label)
    # Else the recipe recorded in the run's configuration (Recipe.to_dict() and its label).
    recorded = (run.config or {}).get("recipe") if isinstance(run.config, dict) else None
    if not isinstance(recorded, dict) or recorded.get("kind", FULL) == FULL:
        return FULL
    return str(recorded.get("label") or recorded.get("name") or recorded["kind"])


def data_label(run: Run) -> str:
    """An imitation run's data: its source, and the strategy that chose its answers unless it
    bought them at random ("local", "local · uncertainty"); then its fine-tuning recipe unless
    it is the full one ("broad · lora")."""
    label = str(run.data_source)
    if run.selection not in (None, RANDOM):
        label = f"{label} · {run.selection}"
    recipe = recipe_label(run)
    return label if recipe == FULL else f"{label} · {recipe}"


def run_label(run: Run) -> str:
    if run.role == "imitation":
        return f"{run.model} · {data_label(run)} · {run.data_examples:,}"
    return f"{run.model} · {run.role}"


def target_run(data: StudyData) -> Run | None:
    """The finished target run (the study has one; the first finished one if it has several)."""
    return next((r for r in data.runs if r.role == "target" and r.status == "done"), None)


def base_runs(data: StudyData) -> dict[str, Run]:
    """model -> its finished base run."""
    return {r.model: r for r in data.runs if r.role == "base" and r.status == "done"}


def gap_closed(value: float | None, base: float | None, target: float | None) -> float | None:
    """(imitation - base) / (target - base), or None where undefined or the gap is ~0."""
    if value is None or base is None or target is None:
        return None
    gap = target - base
    if abs(gap) <= GAP_TOLERANCE * max(1.0, abs(target), abs(base)):
        return None
    return (value - base) / gap


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


@dataclasses.dataclass(frozen=True)
class GapRow:
    """One finished imitation run: the share of the gap it closed per metric and per kind."""

    run: Run
    closed: dict[str, float | None]           # "task/metric" -> share (1.0 = reached target)
    mean_by_kind: dict[str, float | None]     # kind -> mean share over that kind's metrics


def gap_rows(data: StudyData) -> list[GapRow]:
    keys = metric_keys(data)
    values = values_by_run(data)
    target = target_run(data)
    bases = base_runs(data)
    target_values = values.get(target.run_id, {}) if target else {}
    rows = []
    for run in sorted_runs(data):
        if run.role != "imitation" or run.status != "done":
            continue
        base_values = values.get(bases[run.model].run_id, {}) if run.model in bases else {}
        own = values.get(run.run_id, {})
        closed = {key.name: gap_closed(own.get(key.name), base_values.get(key.name),
                                       target_values.get(key.name)) for key in keys}
        means = {kind: _mean(closed[k.name] for k in keys if k.kind == kind)
                 for kind in METRIC_KINDS}
        rows.append(GapRow(run, closed, means))
    return rows


@dataclasses.dataclass(frozen=True)
class Headline:
    """For one kind of metric: the mean share closed over imitation runs, and the best run."""

    kind: str
    mean: float | None
    best: GapRow | None

    @property
    def best_value(self) -> float | None:
        return None if self.best is None else self.best.mean_by_kind[self.kind]


def headline(rows: list[GapRow], kind: str) -> Headline:
    scored = [row for row in rows if row.mean_by_kind[kind] is not None]
    best = max(scored, key=lambda row: row.mean_by_kind[kind], default=None)
    return Headline(kind, _mean(row.mean_by_kind[kind] for row in scored), best)


# -- configuration differences ---------------------------------------------------------------------


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts -> {"a.b.c": JSON text of the value}; lists compare as whole values."""
    if isinstance(config, dict) and config:
        flat: dict[str, str] = {}
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: json.dumps(config, sort_keys=True)}


@dataclasses.dataclass(frozen=True)
class ConfigDifference:
    key: str
    values: tuple[tuple[str, tuple[str, ...]], ...]  # (value as JSON, run ids), commonest first
    varies_with: str       # "data only" (same for every model at each amount) | "models"
    status: str  # "flagged" | "allowed by the study" | "model or data" | "data only" | "execution"

    @property
    def flagged(self) -> bool:
        return self.status == "flagged"


def _is_model_or_data(key: str) -> bool:
    parts = key.split(".")
    return parts[-1] in MODEL_AND_DATA_KEYS or any(part in MODEL_AND_DATA_SECTIONS
                                                   for part in parts)


def _is_execution(key: str) -> bool:
    return EXECUTION_SECTION in key.split(".")


def config_differences(data: StudyData) -> list[ConfigDifference]:
    """Every key whose value differs across imitation runs (any status).

    The fairness rule asks for the same recipe for every model, so a key is flagged when models
    trained on the same data (source, selection and amount) by the same fine-tuning recipe got
    different values, unless the key names the model or the data or the study lists it under
    `allowed_differences`. A key that follows the amount alone (steps of a one-epoch recipe,
    say) is the same for every model: listed, not flagged. Execution settings (any key under an
    `execution` section) are listed as execution.
    """
    runs = [r for r in sorted_runs(data) if r.role == "imitation"]
    allowed = set(data.study.config.get("allowed_differences", ()))
    flat = {run.run_id: flatten(run.config) for run in runs}
    keys = sorted({key for config in flat.values() for key in config})
    absent = "(absent)"
    differences = []
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for run in runs:
            by_value.setdefault(flat[run.run_id].get(key, absent), []).append(run.run_id)
        if len(by_value) < 2:
            continue
        # Within one data point (source, selection, amount) every model should see the same value;
        # recipes differ by design (a mixed run takes more steps), so each is its own point.
        per_point: dict[tuple, set[str]] = {}
        for run in runs:
            point = (run.data_source, run.selection, run.data_examples, recipe_label(run))
            per_point.setdefault(point, set()).add(flat[run.run_id].get(key, absent))
        varies_with = "models" if any(len(v) > 1 for v in per_point.values()) else "data only"
        if _is_execution(key):  # how it ran, not what it computed (before "model": a
            status = "execution"  # model's own execution override lives under model.execution)
        elif _is_model_or_data(key):
            status = "model or data"
        elif key in allowed:
            status = "allowed by the study"
        else:
            status = "flagged" if varies_with == "models" else "data only"
        values = tuple(sorted(((value, tuple(ids)) for value, ids in by_value.items()),
                              key=lambda item: -len(item[1])))
        differences.append(ConfigDifference(key, values, varies_with, status))
    return differences


# -- execution -------------------------------------------------------------------------------------

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class Execution:
    """How a run was laid out: its `execution` settings (config) and what ran (measured)."""

    run: Run
    mesh: str | None       # "fsdp 4 x tensor 2", "1 device", "auto"
    dtype: str | None      # compute dtype
    param_dtype: str | None
    remat: str | None
    microbatches: int | None
    devices: str | None    # "8 x cpu on 2 processes"


def _mesh_text(mesh: Any) -> str | None:
    if isinstance(mesh, str):
        return mesh
    if not isinstance(mesh, dict):
        return None
    parts = [f"{axis} {mesh[axis]}" for axis in MESH_AXES if mesh.get(axis, 1) > 1]
    return " x ".join(parts) or "1 device"


def execution(run: Run) -> Execution | None:
    """The run's execution settings: what ran (the trainer's record) where measured, else what
    the study resolved for it; None for runs without any (the target)."""
    planned = (run.config or {}).get(EXECUTION_SECTION)
    ran = (run.measured or {}).get(EXECUTION_SECTION)
    settings = ran if isinstance(ran, dict) else planned
    if not isinstance(settings, dict):
        return None
    measured = run.measured or {}
    devices = measured.get("device")
    processes = measured.get("processes")
    if devices and isinstance(processes, int) and processes > 1:
        devices = f"{devices} on {processes} processes"
    return Execution(run, _mesh_text(settings.get("mesh")), settings.get("dtype"),
                     settings.get("param_dtype"), settings.get("remat"),
                     settings.get("microbatches"), devices)


# -- compute ---------------------------------------------------------------------------------------


def _number(record: dict | None, *keys: str) -> float | None:
    """The first of `keys` present in `record` with a numeric value."""
    for key in keys:
        value = (record or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            return float(value)
    return None


@dataclasses.dataclass(frozen=True)
class Compute:
    run: Run
    estimated_flops: float | None        # everything the run was priced for
    estimated_train_flops: float | None  # its training part, where the estimate separates it
    measured_flops: float | None
    hardware: str | None          # e.g. "tpu-v4 x 16"
    estimated_hours: float | None
    estimated_chip_hours: float | None
    estimated_usd: float | None
    measured_hours: float | None  # wall clock
    tokens_per_second: float | None
    device: str | None

    @property
    def flops_ratio(self) -> float | None:
        """FLOPs run over FLOPs estimated. Runs count the FLOPs of their training steps, so they
        are compared with the estimate's training part where it has one."""
        estimated = self.estimated_train_flops or self.estimated_flops
        if estimated and self.measured_flops is not None:
            return self.measured_flops / estimated
        return None


def compute(run: Run) -> Compute:
    estimate, measured = run.estimate or {}, run.measured or {}
    chips = _number(estimate, "chips")
    hardware = estimate.get("hardware")
    if hardware is not None and chips is not None:
        hardware = f"{hardware} x {chips:g}"
    wall = _number(measured, "wall_seconds")
    return Compute(
        run=run,
        estimated_flops=_number(estimate, "flops", "train_flops"),
        estimated_train_flops=_number(estimate, "train_flops"),
        measured_flops=_number(measured, "flops"),
        hardware=None if hardware is None else str(hardware),
        estimated_hours=_number(estimate, "hours"),
        estimated_chip_hours=_number(estimate, "chip_hours"),
        estimated_usd=_number(estimate, "cost_usd"),
        measured_hours=None if wall is None else wall / 3600,
        tokens_per_second=_number(measured, "tokens_per_second"),
        device=None if measured.get("device") is None else str(measured["device"]))


def total(values: Iterable[float | None]) -> tuple[float, int]:
    """(sum of the known values, how many were unknown)."""
    values = list(values)
    return sum(v for v in values if v is not None), sum(v is None for v in values)
