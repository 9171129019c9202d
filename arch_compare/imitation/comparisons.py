"""Paired comparisons between a study's runs: did imitation change a metric, beyond the noise of
which examples were asked?

Every done imitation run is compared, on the same evaluation examples, with
- its model's base run (imitation minus base), and
- every done imitation run of the same model and the same amount from an earlier data source in
  the study's list (later source minus earlier: in the demo, local minus broad), both with their
  answers bought at random, and
- for a run whose answers a selection strategy chose (`uncertainty`, `diversity`,
  `student_first`), the random run of the same model, source and amount (strategy minus random),
- for a run of a fine-tuning recipe (`mix`, `l2sp`, `lora`, `wise@alpha`: `StudyConfig.recipes`),
  the `full` run of its cell (recipe minus full: at equal imitation data, did it keep more of the
  base's capability, and how much style did it give up?),
by the paired bootstrap (`evaluation/intervals.py`: the same resampled examples for both runs).

Everything is recomputed from the predictions the study stored (table `predictions`), after the
last run and again on every resume: it is cheap (each run's resamples are computed once per task
and shared by all its comparisons), and a comparison never goes stale when a run is redone.

Rank-classification tasks (MMLU) are scored by seqio's Evaluator from log-likelihoods, so no
per-example outputs are stored for them: they have no comparisons (the report says so).
Metrics recorded as "other" (the target's own list rate, mean lengths) have no direction to
improve in and are left out, as in the report's gap table.
"""

from __future__ import annotations

import logging
import time

from arch_compare.evaluation import intervals
from arch_compare.imitation import evaluation
from arch_compare.imitation.config import StudyConfig
from arch_compare.recipes import FULL
from arch_compare.results import Comparison, ResultsStore, Run
from arch_compare_tasks import registry

log = logging.getLogger(__name__)


def pairs(config: StudyConfig, runs: list[Run]) -> list[tuple[Run, Run]]:
    """(run, baseline) for every comparison the study records, among its done runs."""
    done = [run for run in runs if run.status == "done"]
    bases = {run.model: run for run in done if run.role == "base"}
    imitation = [run for run in done if run.role == "imitation"]
    order = {source.name: i for i, source in enumerate(config.sources)}
    result = [(run, bases[run.model]) for run in imitation if run.model in bases]
    # Sources are compared on the answers they give when nothing chooses them (random against
    # random) and every weight is fine-tuned: a strategy or recipe run is compared with its own
    # cell's run below, not with other sources.
    plain = [run for run in imitation if run.selection == "random" and run.recipe == FULL.name]
    for run in plain:
        result += [(run, other) for other in plain
                   if other.model == run.model and other.data_examples == run.data_examples
                   and order.get(other.data_source, -1) < order.get(run.data_source, -1)]
    # Did the strategy beat buying the same number of answers at random?
    random_runs = {(run.model, run.data_source, run.data_examples): run for run in plain}
    for run in imitation:
        same = random_runs.get((run.model, run.data_source, run.data_examples))
        if run.selection != "random" and same is not None:
            result.append((run, same))
    # Did the recipe beat fine-tuning every weight on the same data? (A recipe's runs are all
    # random-data cells, whose full run is the plain run of the same model, source and amount.)
    for run in imitation:
        full = random_runs.get((run.model, run.data_source, run.data_examples))
        if run.recipe != FULL.name and full is not None:
            result.append((run, full))
    return result


class _Resamples:
    """Each (run, task)'s postprocessed outputs resampled once, for all its comparisons."""

    def __init__(self, store: ResultsStore, study: str, task: str, records):
        self.store, self.study, self.task, self.records = store, study, task, records
        self.ids = [str(record["id"]) for record in records]
        self.cache: dict[str, list | None] = {}
        self._targets: list | None = None  # postprocessed once: the same for every run

    def of(self, run_id: str) -> list | None:
        """One `intervals.resampled` per metric function; None when the run's stored
        predictions do not cover this task's examples (then it has no comparisons here)."""
        if run_id not in self.cache:
            stored = self.store.predictions(self.study, run_id, self.task)
            if [p.example_id for p in stored] != self.ids:
                log.warning("%s on %s: %d stored predictions do not match the %d evaluation "
                            "examples; no comparisons", run_id, self.task, len(stored),
                            len(self.ids))
                self.cache[run_id] = None
            else:
                if self._targets is None:
                    self._targets = evaluation.postprocessed_targets(self.task, self.records)
                outputs = evaluation.postprocessed_outputs(self.task, self.records,
                                                           [p.output for p in stored])
                self.cache[run_id] = [intervals.resampled(fn, self._targets, outputs)
                                      for fn in registry.get_task(self.task).metric_fns]
        return self.cache[run_id]


def compare(config: StudyConfig, store: ResultsStore) -> list[Comparison]:
    """Every comparison of the study, from its stored predictions."""
    chosen = pairs(config, store.runs(config.name))
    comparisons = []
    for spec in config.evaluations:
        if evaluation.is_scored(spec.task):
            continue  # log-likelihood scoring: no per-example outputs to resample (see above)
        records = evaluation.task_records(spec.task, spec.split, spec.max_examples)
        resamples = _Resamples(store, config.name, spec.task, records)
        for run, baseline in chosen:
            a, b = resamples.of(run.run_id), resamples.of(baseline.run_id)
            if a is None or b is None:
                continue
            for one, other in zip(a, b):
                for metric, paired in intervals.paired_differences(one, other).items():
                    if spec.kind_of(metric) == "other":
                        continue
                    comparisons.append(Comparison(
                        run.run_id, baseline.run_id, spec.task, metric, paired.difference,
                        paired.low, paired.high, paired.significant))
    return comparisons


def record(config: StudyConfig, store: ResultsStore, echo=print) -> list[Comparison]:
    """Compute every comparison and write it to the `comparisons` table."""
    began = time.perf_counter()
    comparisons = compare(config, store)
    store.put_comparisons(config.name, comparisons)
    significant = sum(c.significant for c in comparisons)
    echo(f"comparisons: {len(comparisons)} paired ({significant} significant at 95%) in "
         f"{time.perf_counter() - began:.1f} s")
    return comparisons
