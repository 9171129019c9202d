"""Planning and pricing a study before anything runs: its runs, their budget, their memory.

- `plan`: every run of the study, in the order they run, with the row the results database gets;
- `estimate` / `budget_table` / `confirm`: the budget module's price of each run on the study's
  hardware (`budget.hardware` x `budget.chips`), and the confirmation above a threshold;
- each run's execution settings and memory: `plan_memory.py` (`arch-compare study --plan`).

Nothing here loads weights or reads imitation data: checkpoint and data paths need not exist.
Evaluation example counts come from the evaluation tasks; a task whose files are absent counts as
unknown (n/a), and its evaluation FLOPs are left out of the price.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from typing import Callable

from arch_compare.budget.cost import RunSpec, estimate_run
from arch_compare.budget.flops import forward_flops
from arch_compare.budget.parameters import count_parameters
from arch_compare.imitation import collection_cost, evaluation, study_cells
from arch_compare.imitation.config import StudyConfig, StudyModel
from arch_compare.post_training import PostTraining
from arch_compare.recipes import FULL, Recipe
from arch_compare.results import Run
from arch_compare_tasks import catalogue  # noqa: F401  (registers the shipped tasks)
from arch_compare_tasks import registry

log = logging.getLogger(__name__)


class StudyDeclined(RuntimeError):
    """The estimate was above the threshold and nobody confirmed it."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One row of the study: what runs, and how the results database describes it."""

    run: Run
    model: StudyModel | None  # None for the target
    steps: int = 0  # training steps (imitation and pre-training runs)
    recipe: Recipe | None = None  # imitation runs: how they fine-tune (None: `full`)
    full_run: str | None = None  # `wise` and post-training runs: the run whose weights they use
    post_training: PostTraining | None = None  # a post-training run: what it does


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
                    full = _imitation_run(config, model, source, strategy, amount, common)
                    runs.append(full)
                    if strategy == "random":  # a cell: its recipes' runs follow its full run,
                        runs.extend(_recipe_runs(config, full))  # then its post-training runs
                        runs.extend(_post_training_runs(config, full))
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


def recipe_run_id(full_run_id: str, label: str) -> str:
    """A recipe's run in a cell: the cell's full run id and the recipe's label."""
    return _run_id(full_run_id, label)


def recipe_steps(recipe: Recipe, full_steps: int) -> int:
    """Equal imitation data: the full run's steps, more where mixing adds examples (`mix`),
    none where nothing trains (`wise`)."""
    return math.ceil(full_steps * recipe.steps_factor()) if recipe.trains else 0


def _recipe_runs(config: StudyConfig, full: PlannedRun) -> list[PlannedRun]:
    """The runs of every recipe that applies to `full`'s cell, in the study's order."""
    cell = full.run
    runs = []
    for recipe in config.recipes_for(cell.model, cell.data_source, cell.data_examples):
        steps = recipe_steps(recipe, full.steps)
        recorded = recipe.to_dict()
        if recipe.kind == "mix":
            recorded["mix_task"] = study_cells.mix_task(config, recipe, cell.model)
        alphas = recipe.wise_alphas or (None,)
        for label, alpha in zip(recipe.labels(), alphas):
            training = dict(cell.config["training"]) | {"steps": steps}
            training["optimizer"] = (dataclasses.asdict(config.training.optimizer_for(steps))
                                     if steps else None)
            run_config = cell.config | {"training": training, "recipe": recorded | (
                {"label": label} if alpha is None
                else {"label": label, "alpha": alpha, "full_run": cell.run_id})}
            runs.append(PlannedRun(
                dataclasses.replace(cell, run_id=recipe_run_id(cell.run_id, label),
                                    config=run_config, recipe=label),
                full.model, steps, recipe, cell.run_id if alpha is not None else None))
    return runs


def prompt_count(entry: PostTraining) -> int:
    """The prompts a post-training entry samples answers to (its task's records, at most
    `limit`); a task whose files are absent needs a `limit` to be planned."""
    try:
        count = len(registry.records(entry.prompts, entry.split))
    except FileNotFoundError as error:
        if entry.limit is None:
            raise ValueError(f"post_training {entry.name!r}: task {entry.prompts!r} cannot be "
                             f"counted ({error}); give it a limit") from None
        return entry.limit
    return count if entry.limit is None else min(count, entry.limit)


def _post_training_runs(config: StudyConfig, full: PlannedRun) -> list[PlannedRun]:
    """The post-training runs of `full`'s cell, each planned at the most steps it can take
    (one pair or example per prompt); the run takes as many as its data gives."""
    cell = full.run
    runs = []
    for entry in config.post_training_for(cell.model, cell.data_source, cell.data_examples):
        if entry.compare == "checks":  # a task without a checker is named before any compute
            try:
                registry.checker(entry.prompts)
            except (KeyError, ValueError) as error:
                raise ValueError(f"post_training {entry.name!r}: {error}") from None
        steps = entry.steps(prompt_count(entry), config.training.batch_size)
        training = dict(cell.config["training"]) | {
            "steps": steps, "optimizer": dataclasses.asdict(post_optimizer(config, entry,
                                                                           steps))}
        run_config = cell.config | {"training": training, "post_training": entry.to_dict(),
                                    "recipe": {"kind": entry.kind, "label": entry.name,
                                               "full_run": cell.run_id}}
        runs.append(PlannedRun(
            dataclasses.replace(cell, run_id=recipe_run_id(cell.run_id, entry.name),
                                config=run_config, recipe=entry.name),
            full.model, steps, None, cell.run_id, entry))
    return runs


def post_optimizer(config: StudyConfig, entry: PostTraining, steps: int):
    """The study's optimizer over `steps`, at the entry's learning rate when it names one."""
    optimizer = config.training.optimizer_for(steps)
    if entry.learning_rate is None:
        return optimizer
    schedule = dataclasses.replace(optimizer.schedule, peak_learning_rate=entry.learning_rate)
    return dataclasses.replace(optimizer, schedule=schedule)


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
    rows = planned.post_training.rows_per_example if planned.post_training else 1
    spec = RunSpec(model.config, examples=max(planned.steps, 1) * batch * rows,
                   input_length=lengths["inputs"], target_length=lengths["targets"],
                   hardware=config.budget.hardware, chips=config.budget.chips,
                   batch_size=batch * rows, optimizer=config.training.optimizer.name,
                   recipe=planned.recipe or FULL)
    priced = estimate_run(spec)
    post = post_training_work(config, planned)
    # A post-training run's sampling and DPO's reference pass are priced with its training.
    train_flops = (priced.train_flops + post["sampling_flops"] + post["reference_flops"]
                   if planned.steps else 0.0)
    evaluation_flops = _evaluation_flops(config, model, examples)
    priced = dataclasses.replace(priced, train_flops=train_flops,
                                 evaluation_flops=evaluation_flops or 0.0)
    summary = priced.to_dict()
    return {"flops": priced.total_flops, "train_flops": train_flops,
            "evaluation_flops": evaluation_flops, "hardware": summary["hardware"],
            "chips": summary["chips"], "chip_hours": summary["chip_hours"],
            "hours": summary["hours"], "cost_usd": summary["cost_usd"], "mfu": summary["mfu"],
            "mfu_source": summary["mfu_source"],
            # What trains: every weight, LoRA's adapters, or nothing (wise, a given base).
            "trainable_parameters": summary["trainable_params"] if planned.steps else 0,
            **({"post_training": post} if planned.post_training else {})}


def post_training_work(config: StudyConfig, planned: PlannedRun) -> dict:
    """What a post-training run does besides its steps, at most (every prompt kept): the
    student's samples (forward passes generating up to decode_max_tokens), DPO's reference
    pass over both answers of each pair, and the calls to the target (judging: two orders per
    pair of distinct answers; revising: one per prompt; not priced in dollars). Zeros for any
    other run."""
    entry = planned.post_training
    if entry is None:
        return {"prompts": 0, "sampling_flops": 0.0, "reference_flops": 0.0, "target_calls": 0}
    prompts = prompt_count(entry)
    sampling, reference = post_training_flops(config, entry, planned.model.config, prompts,
                                              kept=prompts)
    calls = {"checks": 0, "judge": prompts * entry.samples * (entry.samples - 1),
             "revise": prompts}[entry.compare]
    return {"prompts": prompts, "sampling_flops": sampling, "reference_flops": reference,
            "target_calls": calls}


def post_training_flops(config: StudyConfig, entry: PostTraining, model_config, prompts: int,
                        kept: int) -> tuple[float, float]:
    """(sampling, reference) FLOPs of a post-training run: `samples` answers to each of
    `prompts` prompts, generating up to decode_max_tokens, and for DPO one reference pass over
    both answers of each of the `kept` pairs."""
    lengths = config.training.feature_lengths
    sampling = prompts * entry.samples * forward_flops(model_config, lengths["inputs"],
                                                        config.decode_max_tokens).total
    reference = (entry.rows_per_example * kept * forward_flops(
        model_config, lengths["inputs"], lengths["targets"]).total
        if entry.kind == "dpo" else 0.0)
    return sampling, reference


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
    post = [priced["post_training"] for priced in estimates.values()
            if priced is not None and "post_training" in priced]
    if post:
        calls = sum(work["target_calls"] for work in post)
        lines.append(f"  post-training ({len(post)} runs, priced at one pair or example per "
                     f"prompt, the most there can be): sampling "
                     f"{sum(w['sampling_flops'] for w in post):.2e} FLOPs, reference passes "
                     f"{sum(w['reference_flops'] for w in post):.2e} FLOPs"
                     + (f", {calls:,} calls to the target (judging, revising) at most "
                        f"(not priced)"
                        if calls else ""))
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
