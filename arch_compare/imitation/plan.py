"""Planning and pricing a study before anything runs: its runs, their budget, their memory.

- `plan`: every run of the study, in the order they run, with the row the results database gets;
- `estimate` / `budget_table` / `confirm`: the budget module's price of each run on the study's
  hardware (`budget.hardware` x `budget.chips`), and the confirmation above a threshold;
- `memory_plan` / `memory_table`: each run's execution settings (the mesh `'auto'` resolves to,
  dtypes, remat, microbatches) and the budget module's per-device memory estimate for its
  training and its evaluation, against the device's memory: `arch-compare study --plan`.

Nothing here loads weights or reads imitation data: checkpoint and data paths need not exist.
Evaluation example counts come from the evaluation tasks; a task whose files are absent counts as
unknown (n/a), and its evaluation FLOPs are left out of the price.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Callable

from arch_compare.budget import memory as memory_lib
from arch_compare.budget.cost import RunSpec, estimate_run
from arch_compare.budget.flops import forward_flops
from arch_compare.budget.hardware import get_chip
from arch_compare.budget.parameters import count_parameters
from arch_compare.execution import ExecutionConfig, NoMeshFits, mesh_description, resolve_mesh
from arch_compare.imitation import collection_cost, evaluation
from arch_compare.imitation.config import StudyConfig, StudyModel
from arch_compare.partitioning import MeshConfig
from arch_compare.results import Run
from arch_compare_tasks import catalogue  # noqa: F401  (registers the shipped tasks)

log = logging.getLogger(__name__)
GIB = 2 ** 30


class StudyDeclined(RuntimeError):
    """The estimate was above the threshold and nobody confirmed it."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One row of the study: what runs, and how the results database describes it."""

    run: Run
    model: StudyModel | None  # None for the target
    steps: int = 0  # training steps (imitation and pre-training runs)


# --- the runs -------------------------------------------------------------------------------------

def _run_id(*parts) -> str:
    return "/".join(str(part) for part in parts)


def _model_fields(model: StudyModel) -> dict:
    cfg = model.config
    return {"model": model.name, "architecture": cfg.arch, "family": cfg.family,
            "parameters": count_parameters(cfg).total}


def plan(config: StudyConfig) -> list[PlannedRun]:
    """Every run of the study, in the order they run."""
    runs = []
    common = {"evaluations": [dataclasses.asdict(e) for e in config.evaluations],
              "decode_max_tokens": config.decode_max_tokens,
              "eval_feature_lengths": config.eval_feature_lengths}
    for model in config.models:
        base = dataclasses.asdict(model)
        steps = model.pretraining.steps if model.pretraining else 0
        runs.append(PlannedRun(Run(_run_id("base", model.name), "base", config=base | common,
                                   **_model_fields(model)), model, steps))
    for model in config.models:
        for source in config.sources_for(model):
            for strategy in source.selection.strategies_for(model.name):
                for amount in source.amounts:
                    runs.append(_imitation_run(config, model, source, strategy, amount, common))
    target = config.target
    runs.append(PlannedRun(Run(_run_id("target", target["name"]), "target",
                               model=target["name"], architecture="target",
                               family=str(target.get("family", target["kind"])),
                               parameters=target.get("parameters"),
                               config={"target": dict(target), "generation":
                                       config.generation.to_dict()} | common), None))
    return runs


def imitation_run_id(model: str, source: str, strategy: str, amount: int) -> str:
    # Random data keeps the run ids it had before there were strategies.
    where = (source, amount) if strategy == "random" else (source, strategy, amount)
    return _run_id("imitation", model, *where)


def _imitation_run(config: StudyConfig, model: StudyModel, source, strategy: str, amount: int,
                   common: dict) -> PlannedRun:
    steps = config.training.steps(amount)
    training = dataclasses.asdict(config.training) | {
        "steps": steps, "optimizer": dataclasses.asdict(config.training.optimizer_for(steps))}
    run_config = {"model": dataclasses.asdict(model), "source": dataclasses.asdict(source),
                  "examples": amount, "selection": strategy, "training": training} | common
    return PlannedRun(Run(imitation_run_id(model.name, source.name, strategy, amount), "imitation",
                          config=run_config, data_source=source.name, data_examples=amount,
                          selection=strategy, **_model_fields(model)), model, steps)


def training_shape(config: StudyConfig, planned: PlannedRun) -> tuple[dict, int, str]:
    """(feature lengths, global batch, optimizer) of a run's training."""
    model = planned.model
    if planned.run.role == "base" and model.pretraining:
        return model.pretraining.feature_lengths, model.pretraining.batch_size, "adamw"
    return (config.training.feature_lengths, config.training.batch_size,
            config.training.optimizer.name)


# --- pricing --------------------------------------------------------------------------------------

def evaluation_examples(config: StudyConfig) -> dict[str, int | None]:
    """Examples each evaluation runs (None: the task's files are not there to count)."""
    counts = {}
    for spec in config.evaluations:
        try:
            counts[spec.task] = len(evaluation.task_records(spec.task, spec.split,
                                                            spec.max_examples))
        except FileNotFoundError as error:
            log.info("evaluation %s: not counted (%s)", spec.task, error)
            counts[spec.task] = None
    return counts


def _evaluation_flops(config: StudyConfig, model: StudyModel,
                      examples: dict[str, int | None]) -> float | None:
    """Forward passes of every evaluation prompt, generating up to decode_max_tokens (None: an
    evaluation's size is unknown)."""
    if any(count is None for count in examples.values()):
        return None
    lengths = config.eval_feature_lengths
    return sum(examples.values()) * forward_flops(model.config, lengths["inputs"],
                                                  config.decode_max_tokens).total


def estimate(config: StudyConfig, planned: PlannedRun,
             examples: dict[str, int | None] | None = None) -> dict | None:
    """The budget module's price of one run on the study's hardware (None for the target).
    An evaluation of unknown size is left out of the price (`evaluation_flops` None)."""
    model = planned.model
    if model is None:
        return None
    examples = evaluation_examples(config) if examples is None else examples
    lengths, batch, _ = training_shape(config, planned)
    spec = RunSpec(model.config, examples=max(planned.steps, 1) * batch,
                   input_length=lengths["inputs"], target_length=lengths["targets"],
                   hardware=config.budget.hardware, chips=config.budget.chips,
                   batch_size=batch, optimizer=config.training.optimizer.name)
    priced = estimate_run(spec)
    train_flops = priced.train_flops if planned.steps else 0.0
    evaluation_flops = _evaluation_flops(config, model, examples)
    priced = dataclasses.replace(priced, train_flops=train_flops,
                                 evaluation_flops=evaluation_flops or 0.0)
    summary = priced.to_dict()
    return {"flops": priced.total_flops, "train_flops": train_flops,
            "evaluation_flops": evaluation_flops, "hardware": summary["hardware"],
            "chips": summary["chips"], "chip_hours": summary["chip_hours"],
            "hours": summary["hours"], "cost_usd": summary["cost_usd"], "mfu": summary["mfu"],
            "mfu_source": summary["mfu_source"]}


def estimates(config: StudyConfig, planned: list[PlannedRun]) -> dict[str, dict | None]:
    """Run id -> `estimate`, the evaluation tasks counted once."""
    examples = evaluation_examples(config)
    return {item.run.run_id: estimate(config, item, examples) for item in planned}


def budget_table(config: StudyConfig, estimates: dict[str, dict | None],
                 collections: list[collection_cost.PlannedCollection] | None = None
                 ) -> tuple[str, float | None]:
    """The grid's estimates (run id -> `estimate`) and the target's answers it buys
    (`collection_cost.planned_collections`, computed when not given) as text, and their total in
    dollars (None: a price is unknown; the answers count when `collection.price` prices them)."""
    lines = [f"Budget of study {config.name!r} on {config.budget.hardware} "
             f"(budget module estimate, before anything runs):",
             f"  {'run':<48} {'FLOPs':>10} {'of which eval':>13} {'chip-hours':>11} "
             f"{'USD':>9}"]
    total_usd, total_hours, total_flops = 0.0, 0.0, 0.0
    unpriced_evaluations = False
    for run_id, priced in estimates.items():
        if priced is None:
            continue
        cost = priced["cost_usd"]
        total_usd = None if cost is None or total_usd is None else total_usd + cost
        total_hours += priced["chip_hours"]
        total_flops += priced["flops"]
        unpriced_evaluations |= priced["evaluation_flops"] is None
        usd = "n/a" if cost is None else f"{cost:.2f}"
        evaluation_flops = priced["evaluation_flops"]
        evaluated = "n/a" if evaluation_flops is None else f"{evaluation_flops:.2e}"
        lines.append(f"  {run_id:<48} {priced['flops']:>10.2e} {evaluated:>13} "
                     f"{priced['chip_hours']:>11.4f} {usd:>9}")
    usd = "n/a (no price for this hardware)" if total_usd is None else f"${total_usd:,.2f}"
    collections = (collection_cost.planned_collections(config) if collections is None
                   else collections)
    answer_lines, answers_usd = collection_cost.collection_lines(config, collections)
    if not collections:
        answers = "no answers bought"
    elif config.collection.price is None:
        answers = "plus the target's answers (not priced: set collection.price)"
    else:
        answers = ("plus the target's answers: n/a" if answers_usd is None
                   else f"plus the target's answers ${answers_usd:,.2f}")
        total_usd = None if total_usd is None or answers_usd is None else total_usd + answers_usd
        answers += (f"; in all {'n/a' if total_usd is None else f'${total_usd:,.2f}'}")
    lines.extend(answer_lines)
    lines.append(f"  total: {total_flops:.3e} FLOPs, {total_hours:,.4f} chip-hours, {usd}; "
                 f"{answers}")
    if unpriced_evaluations:
        lines.append("  evaluations: n/a (an evaluation task's files are not there to count; "
                     "its forward passes are not priced)")
    return "\n".join(lines), total_usd


def confirm(config: StudyConfig, total_usd: float | None, *, yes: bool,
            ask: Callable[[str], str] | None = None) -> None:
    threshold = config.budget.confirm_above_usd
    if yes or (total_usd is not None and total_usd <= threshold):
        return
    reason = ("its cost is unknown" if total_usd is None
              else f"the estimate ${total_usd:,.2f} is above ${threshold:,.2f}")
    if ask is None:
        if not sys.stdin.isatty():
            raise StudyDeclined(f"study {config.name!r}: {reason} "
                                f"(budget.confirm_above_usd); pass --yes to run it anyway")
        ask = input
    if ask(f"Run study {config.name!r}? {reason}. [y/N] ").strip().lower() not in ("y", "yes"):
        raise StudyDeclined(f"study {config.name!r}: not confirmed ({reason})")


# --- memory ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Devices:
    """What a run is laid out on: how many devices, and the memory of each (None: unknown)."""

    count: int
    memory_bytes: float | None
    kind: str

    @classmethod
    def of_budget(cls, config: StudyConfig) -> "Devices":
        """The study's priced hardware: `budget.chips` of `budget.hardware` (HBM from
        budgets/hardware.yaml). Without `budget.chips`, an explicit mesh's size, else one."""
        chip = get_chip(config.budget.hardware)
        count = config.budget.chips
        if count is None:
            meshes = [config.execution_for(m).mesh for m in config.models]
            count = max((m.num_devices for m in meshes if isinstance(m, MeshConfig)), default=1)
        return cls(count, chip.hbm_bytes, chip.name)


@dataclasses.dataclass(frozen=True)
class RunMemory:
    """A run's execution settings and its per-device memory (bytes) against the device's."""

    run_id: str
    model: str
    execution: ExecutionConfig  # the mesh resolved (never 'auto') unless `shortfall` says why
    training_bytes: int | None  # None: the run does not train
    evaluation_bytes: int | None  # None: not estimable (see shortfall)
    device_bytes: float | None
    shortfall: str | None = None  # why it does not fit (None: it fits, or memory is unknown)

    @property
    def fits(self) -> bool:
        return self.shortfall is None


def _usable(device_bytes: float | None) -> float | None:
    return None if device_bytes is None else device_bytes * memory_lib.USABLE_HBM_FRACTION


def _training_shortfall(cfg, mesh: MeshConfig, lengths, batch: int, optimizer: str,
                        microbatches: int, devices: Devices) -> str | None:
    """None when a training step fits one device of `devices`, else the budget module's
    explanation (MemoryShortfall) of what is missing and what would fit."""
    try:
        memory_lib.check_training_fits(cfg, mesh, lengths["inputs"], lengths["targets"], batch,
                                       optimizer, microbatches, devices.memory_bytes)
    except ValueError as shortfall:  # MemoryShortfall, or a batch that does not split
        return str(shortfall)
    return None


def _inference_bytes(cfg, mesh: MeshConfig, config: StudyConfig) -> int:
    lengths = config.eval_feature_lengths
    return memory_lib.per_device_inference_memory(
        cfg, mesh, lengths["inputs"], config.decode_max_tokens, config.eval_batch_size).total


def _evaluation_shortfall(cfg, mesh: MeshConfig, config: StudyConfig,
                          devices: Devices) -> str | None:
    try:
        needed = _inference_bytes(cfg, mesh, config)
    except ValueError as error:  # the evaluation batch does not split over the mesh
        return f"evaluation: {error} (eval_batch_size)"
    usable = _usable(devices.memory_bytes)
    if usable is not None and needed > usable:
        return (f"evaluation needs {needed / GIB:.2f} GiB per device on "
                f"{mesh_description(mesh)}, more than the {usable / GIB:.2f} GiB usable of a "
                f"{devices.kind} ({memory_lib.USABLE_HBM_FRACTION:.0%} of its memory); a larger "
                f"fsdp or tensor axis, or a smaller eval_batch_size, would fit")
    return None


def run_memory(config: StudyConfig, planned: PlannedRun, devices: Devices) -> RunMemory:
    """`planned`'s execution settings resolved over `devices` and its memory checked: the same
    check the plan prints and the runner makes before each run's first step."""
    model = planned.model
    execution = config.execution_for(model)
    cfg = execution.apply(model.config)
    trains = planned.steps > 0
    lengths, batch, optimizer = training_shape(config, planned)

    def shortfall(mesh: MeshConfig) -> str | None:
        if mesh.num_devices > devices.count:
            return (f"the mesh {mesh_description(mesh)} needs {mesh.num_devices} devices; "
                    f"{devices.count} {devices.kind} are there")
        return ((trains and _training_shortfall(cfg, mesh, lengths, batch, optimizer,
                                                execution.microbatches, devices))
                or _evaluation_shortfall(cfg, mesh, config, devices))

    try:
        mesh = resolve_mesh(execution, devices.count, lambda m: shortfall(m) is None,
                            lambda: shortfall(MeshConfig(fsdp=devices.count)) or "")
    except NoMeshFits as error:
        return RunMemory(planned.run.run_id, model.name, execution, None, None,
                         devices.memory_bytes, str(error))
    resolved = execution.with_mesh(mesh)
    problem = shortfall(mesh)
    training = evaluation_bytes = None
    try:  # the estimates, also for a mesh that does not fit (the table shows by how much)
        if trains:
            training = memory_lib.per_device_training_memory(
                cfg, mesh, lengths["inputs"], lengths["targets"], batch, optimizer,
                execution.microbatches).total
        evaluation_bytes = _inference_bytes(cfg, mesh, config)
    except ValueError:  # a batch does not split over the mesh: the shortfall says so
        pass
    return RunMemory(planned.run.run_id, model.name, resolved, training, evaluation_bytes,
                     devices.memory_bytes, problem or None)


def memory_plan(config: StudyConfig, devices: Devices | None = None,
                planned: list[PlannedRun] | None = None) -> list[RunMemory]:
    """Every model run's execution and memory (the target runs elsewhere: left out)."""
    devices = Devices.of_budget(config) if devices is None else devices
    planned = plan(config) if planned is None else planned
    return [run_memory(config, item, devices) for item in planned if item.model is not None]


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def memory_table(config: StudyConfig, rows: list[RunMemory], devices: Devices) -> str:
    """The memory plan as text: one line per run, then every shortfall in full."""
    device = "unknown" if devices.memory_bytes is None else f"{devices.memory_bytes / GIB:.1f}"
    lines = [f"Memory plan of study {config.name!r} on {devices.count} x {devices.kind} "
             f"({device} GiB each, {memory_lib.USABLE_HBM_FRACTION:.0%} usable; budget module "
             f"per-device estimates, GiB):",
             f"  {'run':<40} {'mesh':<22} {'dtype':<9} {'params':<9} {'remat':<12} "
             f"{'micro':>5} {'train':>7} {'eval':>7} {'device':>7}  fits"]
    for row in rows:
        ex = row.execution
        mesh = "auto (none fits)" if ex.auto_mesh else mesh_description(ex.mesh)
        lines.append(f"  {row.run_id:<40} {mesh:<22} {ex.dtype:<9} {ex.param_dtype:<9} "
                     f"{ex.remat:<12} {ex.microbatches:>5} {_gib(row.training_bytes):>7} "
                     f"{_gib(row.evaluation_bytes):>7} {_gib(row.device_bytes):>7}  "
                     f"{'yes' if row.fits else 'NO'}")
    misfits = [row for row in rows if not row.fits]
    for row in misfits:
        lines.append(f"  does not fit: {row.run_id}: {row.shortfall}")
    lines.append(f"  {len(rows) - len(misfits)} of {len(rows)} runs fit"
                 + ("" if not misfits else "; change the execution settings of "
                    + ", ".join(sorted({row.model for row in misfits}))))
    return "\n".join(lines)
