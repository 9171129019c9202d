"""The study runner: the imitation protocol over models x data sources x amounts.

For a `StudyConfig` it runs, in order, and records in the results database as it goes:

1. the grid's budget, printed before anything runs (and a confirmation above a threshold);
2. collection: the target's answers to each source's prompts (cached; see `collection.py`);
3. for each model, its base checkpoint (given, or pre-trained here) evaluated: run `base/<model>`;
4. for each model x source x amount, the base fine-tuned on the first `amount` collected
   examples (one recipe for all), then evaluated: run `imitation/<model>/<source>/<amount>`;
5. the target evaluated on the same tasks: run `target/<name>`.

A run whose row says `done` is skipped, so running the same study again resumes it: a run cut
short trains on from its last checkpoint (bitwise as if never stopped) and is evaluated again
(greedy decoding, so the same numbers). Per-run files live in `<directory>/runs/<run_id>/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import jax

from arch_compare import optim
from arch_compare.budget.cost import RunSpec, estimate_run
from arch_compare.budget.flops import forward_flops, training_flops
from arch_compare.budget.parameters import count_parameters
from arch_compare.data import amounts as amounts_lib
from arch_compare.data.vocabularies import load_vocabulary, vocabulary_for_model
from arch_compare.imitation import collection, evaluation
from arch_compare.imitation.config import Evaluation, StudyConfig, StudyModel
from arch_compare.imitation.targets import make_target
from arch_compare.models import build_model
from arch_compare.models.model import BaseModel
from arch_compare.results import DATABASE_FILE, ResultsStore, Run, Sample
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train
from arch_compare_tasks import catalogue, registry

log = logging.getLogger(__name__)


class StudyDeclined(RuntimeError):
    """The estimate was above the threshold and nobody confirmed it."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One row of the study: what runs, and how the results database describes it."""

    run: Run
    model: StudyModel | None  # None for the target
    steps: int = 0  # training steps (imitation and pre-training runs)


@dataclasses.dataclass(frozen=True)
class StudyOutcome:
    database: Path
    done: int
    skipped: int
    failed: list[str]


def database_path(config: StudyConfig) -> Path:
    return Path(config.database) if config.database else Path(config.directory) / DATABASE_FILE


# --- planning -------------------------------------------------------------------------------------

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
        for source in config.sources:
            for amount in source.amounts:
                steps = config.training.steps(amount)
                training = dataclasses.asdict(config.training) | {
                    "steps": steps, "optimizer": dataclasses.asdict(
                        config.training.optimizer_for(steps))}
                run_config = {"model": dataclasses.asdict(model), "source":
                              dataclasses.asdict(source), "examples": amount,
                              "training": training} | common
                runs.append(PlannedRun(Run(
                    _run_id("imitation", model.name, source.name, amount), "imitation",
                    config=run_config, data_source=source.name, data_examples=amount,
                    **_model_fields(model)), model, steps))
    target = config.target
    runs.append(PlannedRun(Run(_run_id("target", target["name"]), "target",
                               model=target["name"], architecture="target",
                               family=str(target.get("family", target["kind"])),
                               parameters=target.get("parameters"),
                               config={"target": dict(target), "generation":
                                       config.generation.to_dict()} | common), None))
    return runs


def _evaluation_flops(config: StudyConfig, model: StudyModel) -> float:
    """Forward passes of every evaluation prompt, generating up to decode_max_tokens."""
    lengths = config.eval_feature_lengths
    examples = sum(len(evaluation.task_records(e.task, e.split, e.max_examples))
                   for e in config.evaluations)
    return examples * forward_flops(model.config, lengths["inputs"],
                                    config.decode_max_tokens).total


def estimate(config: StudyConfig, planned: PlannedRun) -> dict | None:
    """The budget module's price of one run on the study's hardware (None for the target)."""
    model = planned.model
    if model is None:
        return None
    lengths, batch = config.training.feature_lengths, config.training.batch_size
    if planned.run.role == "base" and model.pretraining:
        lengths, batch = model.pretraining.feature_lengths, model.pretraining.batch_size
    spec = RunSpec(model.config, examples=max(planned.steps, 1) * batch,
                   input_length=lengths["inputs"], target_length=lengths["targets"],
                   hardware=config.budget.hardware, chips=config.budget.chips,
                   batch_size=batch, optimizer=config.training.optimizer.name)
    priced = estimate_run(spec)
    train_flops = priced.train_flops if planned.steps else 0.0
    priced = dataclasses.replace(priced, train_flops=train_flops,
                                 evaluation_flops=_evaluation_flops(config, model))
    summary = priced.to_dict()
    return {"flops": priced.total_flops, "train_flops": train_flops,
            "evaluation_flops": priced.evaluation_flops, "hardware": summary["hardware"],
            "chips": summary["chips"], "chip_hours": summary["chip_hours"],
            "hours": summary["hours"], "cost_usd": summary["cost_usd"], "mfu": summary["mfu"],
            "mfu_source": summary["mfu_source"]}


def budget_table(config: StudyConfig, estimates: dict[str, dict | None]
                 ) -> tuple[str, float | None]:
    """The grid's estimates (run id -> `estimate`) as text, and their total in dollars (None: a
    price is unknown)."""
    lines = [f"Budget of study {config.name!r} on {config.budget.hardware} "
             f"(budget module estimate, before anything runs):",
             f"  {'run':<48} {'FLOPs':>10} {'chip-hours':>11} {'USD':>9}"]
    total_usd, total_hours, total_flops = 0.0, 0.0, 0.0
    for run_id, priced in estimates.items():
        if priced is None:
            continue
        cost = priced["cost_usd"]
        total_usd = None if cost is None or total_usd is None else total_usd + cost
        total_hours += priced["chip_hours"]
        total_flops += priced["flops"]
        usd = "n/a" if cost is None else f"{cost:.2f}"
        lines.append(f"  {run_id:<48} {priced['flops']:>10.2e} "
                     f"{priced['chip_hours']:>11.4f} {usd:>9}")
    usd = "n/a (no price for this hardware)" if total_usd is None else f"${total_usd:,.2f}"
    lines.append(f"  total: {total_flops:.3e} FLOPs, {total_hours:,.4f} chip-hours, {usd}; "
                 f"plus the target's answers (not priced here)")
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


# --- the parts of a run ---------------------------------------------------------------------------

class _Models:
    """One model object per configuration for the whole study, so compiled decoding programs
    (cached per model object) are reused by every run of that model."""

    def __init__(self):
        self._built: dict = {}
        self._vocabularies: dict = {}

    def model(self, study_model: StudyModel) -> BaseModel:
        config = study_model.config
        if config not in self._built:
            self._built[config] = build_model(config)
        return self._built[config]

    def vocabulary(self, study_model: StudyModel):
        key = (study_model.config.family, study_model.vocabulary)
        if key not in self._vocabularies:
            self._vocabularies[key] = vocabulary_for_model(study_model.config,
                                                           study_model.vocabulary)
        return self._vocabularies[key]


class StudyRunner:
    def __init__(self, config: StudyConfig, *, progress: bool = True, echo=print):
        self.config = config
        self.directory = Path(config.directory)
        self.progress = progress
        self.echo = echo
        self.models = _Models()
        self.target = make_target(config.target)
        self._imitation_tasks: dict[tuple[str, int], str] = {}

    @functools.cached_property
    def reference_vocabulary(self):
        """The one tokenizer every amount is also counted in (loaded once per study)."""
        path = self.config.reference_vocabulary
        if path is None:
            return None
        return load_vocabulary("hf_tokenizer" if path.endswith(".json") else "sentencepiece", path)

    # -- collection

    def collect(self) -> dict[str, Path]:
        """Each source's imitation data as an OpenAI-chat JSONL file (collected or given)."""
        files = {}
        for source in self.config.sources:
            if source.file is not None:
                files[source.name] = Path(source.file)
                continue
            records = registry.records(source.prompts_task, "train")
            needed = records[:max(source.amounts)]
            prompts = [evaluation.prompt_of(record) for record in needed]
            cache = self.directory / "collection" / f"{source.name}.jsonl"
            cache.parent.mkdir(parents=True, exist_ok=True)
            self.echo(f"collect {source.name}: {len(prompts)} prompts from "
                      f"{source.prompts_task} answered by {self.target.name}")
            result = collection.collect(self.target, prompts, self.config.generation, cache,
                                        progress=self.progress)
            self.echo(f"  {result}")
            path, count = collection.export_openai_chat(
                cache, self.directory / "collection" / f"{source.name}.openai_chat.jsonl")
            if count < max(source.amounts):
                raise RuntimeError(
                    f"data source {source.name!r}: only {count} of {len(prompts)} prompts have "
                    f"an answer (see the errors in {cache}); the largest amount needs "
                    f"{max(source.amounts)}. Run the study again to retry transient failures")
            files[source.name] = path
        return files

    def _imitation_task(self, source_name: str, amount: int, path: Path) -> str:
        """The first `amount` examples of a source as a registered task (once per process)."""
        key = (source_name, amount)
        if key not in self._imitation_tasks:
            source = next(s for s in self.config.sources if s.name == source_name)
            name = f"study:{self.config.name}:{source_name}:{amount}"
            # Collected answers are exported as OpenAI chat; a given file keeps its format.
            catalogue.register_imitation_task(name, path, source.format if source.file
                                              else "openai_chat", num_examples=amount,
                                              replace=True)
            try:
                available = len(registry.records(name, "train"))
            except ValueError as error:  # the reader counts first: "only N exist"
                raise RuntimeError(f"data source {source_name!r} ({path}): {error}; amount "
                                   f"{amount} needs more") from None
            if available < amount:
                raise RuntimeError(f"data source {source_name!r}: {path} holds only "
                                   f"{available} examples; amount {amount} needs more")
            self._imitation_tasks[key] = name
        return self._imitation_tasks[key]

    # -- training and evaluation

    def _train(self, study_model: StudyModel, run_dir: Path, data: DataConfig, steps: int,
               optimizer: optim.OptimizerConfig, initial: str | None, seed: int):
        model = self.models.model(study_model)
        config = TrainConfig(model_dir=str(run_dir), data=data, train_steps=steps,
                             optimizer=optimizer, checkpoint_period=max(1, steps // 4),
                             keep_checkpoints=1, seed=seed, initial_checkpoint_path=initial)
        began = time.perf_counter()
        result = train(model, self.models.vocabulary(study_model), config,
                       progress=self.progress)
        seconds = time.perf_counter() - began
        lengths = data.feature_lengths
        tokens = steps * data.batch_size * (lengths["inputs"] + lengths["targets"])
        inputs, targets = model.sequence_lengths(lengths)
        flops = steps * data.batch_size * training_flops(model.config, inputs, targets,
                                                         causal="full")
        measured = {"train_seconds": seconds, "steps": steps, "tokens": tokens,
                    "tokens_per_second": tokens / seconds if seconds else None,
                    "flops": flops, "resumed_from_step": result.resumed_from}
        return result.state.params, measured

    def _evaluate(self, run_id: str, predict: Callable[[Evaluation, Sequence], list[str]],
                  scored: Callable[[Evaluation], dict] | None) -> dict:
        """Every evaluation for one run: metrics and a few samples into the database."""
        store, name = self.store, self.config.name
        began = time.perf_counter()
        for spec in self.config.evaluations:
            if evaluation.is_scored(spec.task):
                if scored is None:
                    continue  # a chat target gives no log-likelihoods: n/a in the report
                metrics = scored(spec)
            else:
                records = evaluation.task_records(spec.task, spec.split, spec.max_examples)
                predictions = predict(spec, records)
                metrics = evaluation.score_predictions(spec.task, records, predictions)
                store.put_samples(name, [
                    Sample(run_id, spec.task, str(record["id"]),
                           str(record.get("prompt") or record["inputs"]), prediction,
                           str(record["targets"]))
                    for record, prediction in list(zip(records, predictions))[
                        :self.config.samples_per_task]])
            store.put_metrics(name, run_id, spec.task, metrics,
                              {metric: spec.kind_of(metric) for metric in metrics})
        return {"eval_seconds": time.perf_counter() - began}

    def _model_evaluation(self, run_id: str, study_model: StudyModel, params) -> dict:
        model = self.models.model(study_model)
        vocabulary = self.models.vocabulary(study_model)
        config = self.config

        def predict(spec: Evaluation, records):
            return evaluation.model_predictions(
                model, params, vocabulary, spec.task, spec.split, spec.max_examples,
                feature_lengths=config.eval_feature_lengths, batch_size=config.eval_batch_size,
                max_new_tokens=config.decode_max_tokens, progress=self.progress)

        def scored(spec: Evaluation):
            return evaluation.scored_metrics(
                model, params, vocabulary, spec.task, spec.split,
                feature_lengths=config.eval_feature_lengths, batch_size=config.eval_batch_size,
                output_path=str(self.directory / "runs" / run_id / "eval"),
                progress=self.progress)

        return self._evaluate(run_id, predict, scored)

    def _run_base(self, planned: PlannedRun) -> dict:
        study_model = planned.model
        if study_model.pretraining is None:
            from arch_compare.trainer.inference import load_params
            params = load_params(self.models.model(study_model), study_model.base_checkpoint)
            measured = {}
        else:
            pre = study_model.pretraining
            optimizer = optim.OptimizerConfig("adamw", optim.ScheduleConfig(
                pre.learning_rate, warmup_steps=min(pre.warmup_steps, pre.steps - 1)))
            data = DataConfig(pre.task, pre.feature_lengths, batch_size=pre.batch_size,
                              seed=pre.seed)
            params, measured = self._train(study_model, self.base_dir(study_model), data,
                                           pre.steps, optimizer, None, pre.seed)
        return measured | self._model_evaluation(planned.run.run_id, study_model, params)

    def base_dir(self, study_model: StudyModel) -> Path:
        return self.directory / "runs" / "base" / study_model.name

    def base_checkpoint(self, study_model: StudyModel) -> str:
        if study_model.base_checkpoint is not None:
            return study_model.base_checkpoint
        return str(self.base_dir(study_model))

    def _run_imitation(self, planned: PlannedRun, files: dict[str, Path]) -> dict:
        run, study_model, training = planned.run, planned.model, self.config.training
        task = self._imitation_task(run.data_source, run.data_examples, files[run.data_source])
        data = DataConfig(task, training.feature_lengths, batch_size=training.batch_size,
                          seed=training.seed)
        params, measured = self._train(
            study_model, self.directory / "runs" / run.run_id, data, planned.steps,
            training.optimizer_for(planned.steps), self.base_checkpoint(study_model),
            training.seed)
        return measured | self._model_evaluation(run.run_id, study_model, params)

    def _run_target(self, planned: PlannedRun) -> dict:
        cache = self.directory / "runs" / planned.run.run_id / "answers.jsonl"
        cache.parent.mkdir(parents=True, exist_ok=True)

        def predict(spec: Evaluation, records):
            return evaluation.target_predictions(self.target, records, self.config.generation,
                                                 cache, progress=self.progress)

        return self._evaluate(planned.run.run_id, predict, None)

    def _data_tokens(self, planned: PlannedRun, files: dict[str, Path]) -> dict:
        run = planned.run
        task = self._imitation_task(run.data_source, run.data_examples, files[run.data_source])
        records = registry.records(task, "train")
        vocabularies = {"model": self.models.vocabulary(planned.model)}
        reference = self.reference_vocabulary
        if reference is not None:
            vocabularies["reference"] = reference
        counts = amounts_lib.count_tokens(records, vocabularies)
        return {"data_tokens": counts["model"].total,
                "data_reference_tokens": counts["reference"].total if reference else None}

    # -- the whole study

    def run(self, *, yes: bool = False, ask=None) -> StudyOutcome:
        config = self.config
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "study_config.json").write_text(
            json.dumps(config.to_dict(), indent=2, default=str) + "\n")
        planned = plan(config)
        estimates = {item.run.run_id: estimate(config, item) for item in planned}
        table, total_usd = budget_table(config, estimates)
        self.echo(table)
        confirm(config, total_usd, yes=yes, ask=ask)
        self.store = ResultsStore(database_path(config))
        self.store.register_study(config.name, config.to_dict(), self.directory)
        done = {run.run_id for run in self.store.runs(config.name) if run.status == "done"}
        files = self.collect()
        failed, finished, skipped = [], 0, 0
        for index, item in enumerate(planned, start=1):
            run = item.run
            if run.run_id in done:
                skipped += 1
                continue
            self.echo(f"[{index}/{len(planned)}] {run.run_id}")
            fields = {"estimate": estimates[run.run_id], "started": time.time()}
            if run.role == "imitation":
                fields |= self._data_tokens(item, files)
            run = dataclasses.replace(run, status="running", **fields)
            self.store.put_run(config.name, run)
            began = time.perf_counter()
            try:
                if run.role == "base":
                    measured = self._run_base(item)
                elif run.role == "imitation":
                    measured = self._run_imitation(item, files)
                else:
                    measured = self._run_target(item)
            except Exception as error:  # recorded, and the other runs go on
                log.exception("run %s failed", run.run_id)
                self.store.put_run(config.name, dataclasses.replace(
                    run, status="failed", error=f"{type(error).__name__}: {error}",
                    finished=time.time()))
                failed.append(run.run_id)
                continue
            measured |= {"wall_seconds": time.perf_counter() - began,
                         "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}
            self.store.put_run(config.name, dataclasses.replace(
                run, status="done", measured=measured, finished=time.time()))
            finished += 1
        self.store.close()
        return StudyOutcome(database_path(config), finished, skipped, failed)


def run_study(config: StudyConfig, *, yes: bool = False, progress: bool = True,
              echo=print, ask=None) -> StudyOutcome:
    return StudyRunner(config, progress=progress, echo=echo).run(yes=yes, ask=ask)
