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
   buys when the run starts (`study_sources.py`, `selection.py`); each recipe of
   `StudyConfig.recipes` that applies to a random-data cell adds a run after the cell's:
   `imitation/<model>/<source>/<amount>/<label>` (`study_runs.py`, `study_recipes.py`);
5. the target evaluated on the same tasks: run `target/<name>`;
6. paired comparisons (imitation vs base, sources against each other, strategies against
   random, recipes against full), from every stored prediction (`comparisons.py`).

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

import jax
import numpy as np

from arch_compare.budget import memory as memory_lib
from arch_compare.budget.memory import MemoryShortfall
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare.execution import ExecutionConfig
from arch_compare.imitation import comparisons, preflight, study_models
from arch_compare.imitation import plan as plan_lib, plan_memory
from arch_compare.imitation.config import StudyConfig
from arch_compare.imitation.hosts import Processes
from arch_compare.imitation.plan import PlannedRun, StudyDeclined, budget_table, confirm, plan
from arch_compare.imitation.study_runs import RoleRuns
from arch_compare.imitation.study_sources import StudySources
from arch_compare.imitation.target_kinds import make_target
from arch_compare.results import DATABASE_FILE, ResultsStore

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


class StudyRunner(RoleRuns):
    """Walks the plan, recording each run as it goes; what each role's run does is
    `study_runs.RoleRuns`."""

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
