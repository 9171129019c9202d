"""The study runner: the imitation protocol over models x data sources x amounts.

For a `StudyConfig` it runs, in order, and records in the results database as it goes:

1. every input checked at once (`preflight.py`: data files, tasks, checkpoints, the target),
   then the grid's budget, printed before anything runs (and a confirmation above a threshold);
2. collection: the target's answers to each source's first prompts (cached; see
   `collection.py`), and what they cost (`collection_cost.py`);
3. for each model, its base checkpoint (given, or pre-trained here) evaluated: run `base/<model>`;
4. for each model x source x selection strategy x amount, the base fine-tuned on `amount`
   collected examples (one recipe for all), then evaluated: run
   `imitation/<model>/<source>/<amount>` (random: the first prompts) or
   `imitation/<model>/<source>/<strategy>/<amount>`, whose prompts the strategy chooses and
   buys when the run starts (`study_sources.py`, `selection.py`);
5. the target evaluated on the same tasks: run `target/<name>`;
6. paired comparisons (imitation vs base, sources against each other, strategies against
   random), from every stored prediction (`comparisons.py`).

Planning and pricing (the runs, their budget and memory) live in `plan.py`. Each model's runs
use `config.execution_for(model)`, its mesh resolved over the devices present; a run whose
memory estimate does not fit is refused before its first step and recorded as failed.

A run whose row says `done` is skipped, so running the same study again resumes it: a run cut
short trains on from its last checkpoint (bitwise as if never stopped) and is evaluated again
(greedy decoding, so the same numbers). Per-run files live in `<directory>/runs/<run_id>/`.

On several hosts (`jax.process_count() > 1`) every process walks the same plan in lockstep and
trains and evaluates every model (each host feeds its share of each batch); process 0 alone calls
the target, writes the collection cache, the results database and study_config.json, and the
others wait for it at a barrier and then read what it wrote (the study directory must be on a
shared filesystem). Which runs are done is process 0's reading of the database, broadcast.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from arch_compare import optim
from arch_compare.budget.flops import training_flops
from arch_compare.budget import memory as memory_lib
from arch_compare.budget.memory import MemoryShortfall
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare.execution import ExecutionConfig
from arch_compare.imitation import comparisons, evaluation, preflight, study_models
from arch_compare.imitation import plan as plan_lib, plan_memory
from arch_compare.imitation.config import Evaluation, StudyConfig, StudyModel
from arch_compare.imitation.hosts import Processes
from arch_compare.imitation.plan import PlannedRun, StudyDeclined, budget_table, confirm, plan
from arch_compare.imitation.study_sources import StudySources
from arch_compare.imitation.target_kinds import make_target
from arch_compare.models.model import BaseModel
from arch_compare.results import DATABASE_FILE, ResultsStore, Sample
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train

log = logging.getLogger(__name__)
__all__ = ["PlannedRun", "StudyDeclined", "StudyOutcome", "StudyRunner", "plan", "run_study"]


@dataclasses.dataclass(frozen=True)
class StudyOutcome:
    database: Path
    done: int
    skipped: int
    failed: list[str]


def database_path(config: StudyConfig) -> Path:
    return Path(config.database) if config.database else Path(config.directory) / DATABASE_FILE


class StudyRunner:
    def __init__(self, config: StudyConfig, *, progress: bool = True, echo=print):
        self.config = config
        self.directory = Path(config.directory)
        self.progress = progress
        self.processes = Processes()
        self.echo = echo if self.processes.writer else (lambda *_: None)
        self.models = study_models.StudyModels()
        self.target = make_target(config.target)
        self.store: ResultsStore | None = None  # process 0 only
        self.sources = StudySources(config, self.target, self.processes, echo=self.echo,
                                    progress=progress, on_bought=self._bought)

    @functools.cached_property
    def reference_vocabulary(self):
        """The one tokenizer every amount is also counted in (loaded once per study)."""
        path = self.config.reference_vocabulary
        if path is None:
            return None
        return load_vocabulary("hf_tokenizer" if path.endswith(".json") else "sentencepiece", path)

    @functools.cached_property
    def devices(self) -> plan_memory.Devices:
        """The devices present: 'auto' resolves over them and each run's memory is checked
        against theirs (where the platform reports it; else the study's priced hardware)."""
        device = jax.devices()[0]
        memory = memory_lib.device_memory_bytes(device)
        if memory is None:
            memory = plan_memory.Devices.of_budget(self.config).memory_bytes
        return plan_memory.Devices(jax.device_count(), memory, device.device_kind)

    # -- imitation data

    def _bought(self, bought) -> None:
        """Process 0, after each collection: what it cost, into the results database."""
        if self.store is None:
            return
        from arch_compare.imitation.collection_cost import record_collection
        record_collection(self.store, self.config.name, self.config, bought.source,
                          preflight.collection_cache(self.config, bought.source),
                          selection=bought.selection, model=bought.model, keys=bought.keys)

    def _rank(self, planned: PlannedRun, execution: ExecutionConfig):
        """How a strategy ranks a source's pool for one model: with the student's weights (the
        base model's, or those of the strategy's run at an earlier amount), read onto the run's
        mesh."""
        def rank(source, strategy, pool, count, bought, student_amount):
            from arch_compare.imitation import selection
            study_model = planned.model
            model = self.models.model(study_model, execution)
            if student_amount is None:
                params = self._base_params(study_model, model, execution)
            else:
                run_id = plan_lib.imitation_run_id(study_model.name, source.name, strategy,
                                                   student_amount)
                params = study_models.params_from(self.directory / "runs" / run_id, model, execution,
                                           f"selection of {source.name}/{strategy} up to "
                                           f"{count} learns from run {run_id}")
            return selection.rank_pool(
                strategy, pool, count=count, model=model, params=params,
                vocabulary=self.models.vocabulary(study_model), selection=source.selection,
                prompts_task=source.prompts_task,
                feature_lengths=self.config.eval_feature_lengths,
                batch_size=self.config.eval_batch_size,
                max_new_tokens=self.config.decode_max_tokens, bought=bought,
                progress=self.progress and self.processes.writer)
        return rank

    def _imitation_data(self, planned: PlannedRun, execution: ExecutionConfig) -> str:
        """The registered task of a run's imitation data (its answers bought first if its
        strategy chooses them)."""
        run = planned.run
        path = self.sources.selected_file(run.data_source, run.selection, planned.model.name,
                                          run.data_examples, self._rank(planned, execution))
        return self.sources.task(run.data_source, run.selection, planned.model.name,
                                 run.data_examples, path)

    # -- execution

    def execution(self, planned: PlannedRun) -> tuple[ExecutionConfig, dict]:
        """The run's execution settings with the mesh resolved over the devices present, and
        its per-device memory estimates; MemoryShortfall (before any compute) when they do not
        fit."""
        memory = plan_memory.run_memory(self.config, planned, self.devices)
        if not memory.fits:
            raise MemoryShortfall(memory.shortfall)
        return memory.execution, {"per_device_training_bytes": memory.training_bytes,
                                  "per_device_evaluation_bytes": memory.evaluation_bytes,
                                  "device_bytes": memory.device_bytes,
                                  "devices": f"{self.devices.count} x {self.devices.kind}"}

    # -- training and evaluation

    def _train(self, study_model: StudyModel, execution: ExecutionConfig, run_dir: Path,
               data: DataConfig, steps: int, optimizer: optim.OptimizerConfig,
               initial: str | None, seed: int):
        model = self.models.model(study_model, execution)
        config = TrainConfig(model_dir=str(run_dir), data=data, train_steps=steps,
                             optimizer=optimizer, checkpoint_period=max(1, steps // 4),
                             keep_checkpoints=1, seed=seed, initial_checkpoint_path=initial,
                             execution=execution)
        began = time.perf_counter()
        result = train(model, self.models.vocabulary(study_model), config,
                       progress=self.progress and self.processes.writer)
        seconds = time.perf_counter() - began
        lengths = data.feature_lengths
        tokens = steps * data.batch_size * (lengths["inputs"] + lengths["targets"])
        inputs, targets = model.sequence_lengths(lengths)
        flops = steps * data.batch_size * training_flops(model.config, inputs, targets,
                                                         causal="full")
        measured = {"train_seconds": seconds, "steps": steps, "tokens": tokens,
                    "tokens_per_second": tokens / seconds if seconds else None,
                    "flops": flops, "resumed_from_step": result.resumed_from,
                    "loss": result.losses[max(result.losses)] if result.losses else None,
                    "execution": getattr(result, "execution", None),
                    "examples_cut": sum(split.cut for split in getattr(result, "data", ()))}
        return result.state.params, measured

    def _evaluate(self, run_id: str, predict: Callable[[Evaluation, Sequence], list[str]],
                  scored: Callable[[Evaluation], dict] | None) -> dict:
        """Every evaluation for one run: metrics and a few samples into the database (process 0
        writes; every process computes, as the models' evaluation runs on all of them)."""
        name = self.config.name
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
                if self.store is not None:
                    self.store.put_samples(name, [
                        Sample(run_id, spec.task, str(record["id"]),
                               str(record.get("prompt") or record["inputs"]), prediction,
                               str(record["targets"]))
                        for record, prediction in list(zip(records, predictions))[
                            :self.config.samples_per_task]])
                    self.store.put_predictions(name, run_id, spec.task, [
                        (str(record["id"]), text) for record, text in zip(records, predictions)])
            if self.store is not None:
                self.store.put_metrics(name, run_id, spec.task, metrics,
                                       {metric: spec.kind_of(metric) for metric in metrics})
        return {"eval_seconds": time.perf_counter() - began}

    def _model_evaluation(self, run_id: str, study_model: StudyModel,
                          execution: ExecutionConfig, params) -> dict:
        model = self.models.model(study_model, execution)
        vocabulary = self.models.vocabulary(study_model)
        config = self.config
        progress = self.progress and self.processes.writer

        def predict(spec: Evaluation, records):
            return evaluation.model_predictions(
                model, params, vocabulary, spec.task, spec.split, spec.max_examples,
                feature_lengths=config.eval_feature_lengths, batch_size=config.eval_batch_size,
                max_new_tokens=config.decode_max_tokens, progress=progress)

        def scored(spec: Evaluation):
            return evaluation.scored_metrics(
                model, params, vocabulary, spec.task, spec.split,
                feature_lengths=config.eval_feature_lengths, batch_size=config.eval_batch_size,
                output_path=str(self.directory / "runs" / run_id / "eval"),
                progress=progress)

        return self._evaluate(run_id, predict, scored)

    def _run_base(self, planned: PlannedRun, execution: ExecutionConfig) -> dict:
        study_model = planned.model
        if study_model.pretraining is None:
            model = self.models.model(study_model, execution)
            params = self._base_params(study_model, model, execution)
            measured = {}
        else:
            pre = study_model.pretraining
            optimizer = optim.OptimizerConfig("adamw", optim.ScheduleConfig(
                pre.learning_rate, warmup_steps=min(pre.warmup_steps, pre.steps - 1)))
            data = DataConfig(pre.task, pre.feature_lengths, batch_size=pre.batch_size,
                              seed=pre.seed)
            params, measured = self._train(study_model, execution, self.base_dir(study_model),
                                           data, pre.steps, optimizer, None, pre.seed)
        return measured | self._model_evaluation(planned.run.run_id, study_model, execution,
                                                 params)

    def _base_params(self, study_model: StudyModel, model: BaseModel,
                     execution: ExecutionConfig):
        """The base weights (given or pre-trained here), read straight onto the run's mesh."""
        return study_models.params_from(self.base_checkpoint(study_model), model, execution,
                                 f"base model {study_model.name!r}")

    def base_dir(self, study_model: StudyModel) -> Path:
        return self.directory / "runs" / "base" / study_model.name

    def base_checkpoint(self, study_model: StudyModel) -> str:
        if study_model.base_checkpoint is not None:
            return study_model.base_checkpoint
        return str(self.base_dir(study_model))

    def _run_imitation(self, planned: PlannedRun, execution: ExecutionConfig, task: str) -> dict:
        run, study_model, training = planned.run, planned.model, self.config.training
        data = DataConfig(task, training.feature_lengths, batch_size=training.batch_size,
                          seed=training.seed)
        params, measured = self._train(
            study_model, execution, self.directory / "runs" / run.run_id, data, planned.steps,
            training.optimizer_for(planned.steps), self.base_checkpoint(study_model),
            training.seed)
        return measured | self._model_evaluation(run.run_id, study_model, execution, params)

    def _run_target(self, planned: PlannedRun) -> dict:
        """Process 0 asks the target; the others have nothing to compute."""
        if not self.processes.writer:
            return {}
        cache = self.directory / "runs" / planned.run.run_id / "answers.jsonl"
        cache.parent.mkdir(parents=True, exist_ok=True)

        def predict(spec: Evaluation, records):
            return evaluation.target_predictions(self.target, records, self.config.generation,
                                                 cache, progress=self.progress)

        return self._evaluate(planned.run.run_id, predict, None)

    def _data_tokens(self, planned: PlannedRun, task: str) -> dict:
        vocabularies = {"model": self.models.vocabulary(planned.model)}
        if self.reference_vocabulary is not None:
            vocabularies["reference"] = self.reference_vocabulary
        return self.sources.data_tokens(task, vocabularies)

    # -- the whole study

    def _start(self, planned: list[PlannedRun], estimates: dict, yes: bool, ask) -> set[str]:
        """Process 0 confirms the budget, registers the study and reads which runs are done;
        every process gets its answer."""
        config, declined, done = self.config, None, set()
        if self.processes.writer:
            try:
                confirm(config, budget_table(config, estimates)[1], yes=yes, ask=ask)
            except StudyDeclined as error:
                declined = error
        if self.processes.failed_anywhere(declined is not None):
            raise declined or StudyDeclined(f"study {config.name!r}: declined on process 0")
        if self.processes.writer:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "study_config.json").write_text(
                json.dumps(config.to_dict(), indent=2, default=str) + "\n")
            self.store = ResultsStore(database_path(config))
            self.store.register_study(config.name, config.to_dict(), self.directory)
            done = {run.run_id for run in self.store.runs(config.name) if run.status == "done"}
        mask = self.processes.from_writer(
            np.array([item.run.run_id in done for item in planned], dtype=np.int32))
        return {item.run.run_id for item, flag in zip(planned, mask) if flag}

    def _put_run(self, run) -> None:
        if self.store is not None:
            self.store.put_run(self.config.name, run)

    def run(self, *, yes: bool = False, ask=None) -> StudyOutcome:
        config = self.config
        self.inputs = preflight.before_study(config, self.processes, self.echo)
        planned = plan(config)
        estimates = plan_lib.estimates(config, planned)
        self.echo(budget_table(config, estimates)[0])
        done = self._start(planned, estimates, yes, ask)
        self.sources.collect()
        failed, finished, skipped = [], 0, 0
        for index, item in enumerate(planned, start=1):
            run = item.run
            if run.run_id in done:
                skipped += 1
                continue
            self.echo(f"[{index}/{len(planned)}] {run.run_id}")
            fields = {"estimate": estimates[run.run_id], "started": time.time()}
            error = None
            began = time.perf_counter()
            try:
                if item.model is not None:
                    # Refused here, before any compute, when the memory estimate does not fit.
                    execution, memory = self.execution(item)
                    fields["config"] = run.config | {"execution": execution.to_dict()}
                    fields["estimate"] = (fields["estimate"] or {}) | memory
                if run.role == "imitation":
                    task = self._imitation_data(item, execution)
                    if self.processes.writer:
                        fields |= self._data_tokens(item, task)
                        fields["config"] = self.inputs.recorded(fields["config"],
                                                                run.data_source)
                run = dataclasses.replace(run, status="running", **fields)
                self._put_run(run)
                if run.role == "base":
                    measured = self._run_base(item, execution)
                elif run.role == "imitation":
                    measured = self._run_imitation(item, execution, task)
                else:
                    measured = self._run_target(item)
            except Exception as raised:  # recorded, and the other runs go on
                log.exception("run %s failed", run.run_id)
                error = f"{type(raised).__name__}: {raised}"
            elsewhere = self.processes.failed_anywhere(error is not None)
            if elsewhere:
                error = error or f"failed on process(es) {elsewhere} (see their logs)"
                self._put_run(dataclasses.replace(run, status="failed", error=error,
                                                  finished=time.time()))
                failed.append(run.run_id)
                continue
            measured |= {"wall_seconds": time.perf_counter() - began,
                         "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                         "processes": self.processes.count}
            self._put_run(dataclasses.replace(run, status="done", measured=measured,
                                              finished=time.time()))
            finished += 1
        if self.store is not None:
            # From every stored prediction, so a resumed study recomputes them all (cheap).
            comparisons.record(config, self.store, self.echo)
            self.store.close()
        self.processes.barrier("study done")  # the report is written after every row is in
        return StudyOutcome(database_path(config), finished, skipped, failed)


def run_study(config: StudyConfig, *, yes: bool = False, progress: bool = True,
              echo=print, ask=None) -> StudyOutcome:
    return StudyRunner(config, progress=progress, echo=echo).run(yes=yes, ask=ask)
