"""The runner's side of post-training (`arch_compare/post_training.py`): a cell's full run
answers the entry's prompts, its answers are compared, and the run trains on what was kept.

Every process samples (the weights may be sharded over all of them); process 0 alone compares
(the target is asked once, through the collection cache in the run's directory) and writes the
pairs or examples and what the builder kept and dropped, which every process then reads from the
study's directory, as it reads the imitation data. A run that keeps nothing fails, saying what
was dropped and why.

Files in `runs/<run id>/`: `pairs.jsonl` (DPO) or `examples.jsonl` (rejection sampling, OpenAI
chat), `post_training.json` (the builder's summary and the sampling time) and, when the target
judges or revises, `judge_answers.jsonl` or `revisions.jsonl` (its cached replies).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from arch_compare.evaluation import judge as judging
from arch_compare.imitation import plan as planning
from arch_compare.imitation import study_models
from arch_compare.imitation.collection_cache import write_openai_chat
from arch_compare.imitation.plan import PlannedRun
from arch_compare.imitation.study_sources import write_json
from arch_compare.post_training import PostTraining
from arch_compare.preference import checked, judged, revised
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.preference.pairs import write_pairs
from arch_compare.preference.sampling import StudentSampling, answers_for_task
from arch_compare.trainer.data import DataConfig
from arch_compare_tasks import catalogue, registry

if TYPE_CHECKING:
    from arch_compare.execution import ExecutionConfig
    from arch_compare.imitation.study_runs import RoleRuns

SUMMARY = "post_training.json"


def run(runs: "RoleRuns", planned: PlannedRun, execution: "ExecutionConfig",
        imitation_task: str) -> dict:
    """Sample, compare, train and evaluate one post-training run; its measurements."""
    entry, study_model, config = planned.post_training, planned.model, runs.config
    run_dir = runs.directory / "runs" / planned.run.run_id
    full_dir = runs.directory / "runs" / planned.full_run
    model = runs.models.model(study_model, execution)
    vocabulary = runs.models.vocabulary(study_model)
    summary = _summary_if_done(run_dir)
    if summary is None:  # a resumed run keeps the data it built (and its training's position)
        summary = _sample_and_compare(runs, entry, model, vocabulary, execution, run_dir,
                                      full_dir, planned)
    kept = summary["kept"]
    if not kept:
        raise RuntimeError(f"post_training {entry.name!r}: nothing to train on; "
                           f"{summary['describe']}")
    training = config.training
    steps = entry.steps(kept, training.batch_size)
    if entry.kind == "dpo":
        data_task = imitation_task  # a preference run reads its task only to evaluate
        options = {"preference": PreferenceConfig(entry.objective, entry.beta,
                                                  entry.label_smoothing),
                   "preference_pairs": str(run_dir / "pairs.jsonl")}
    else:
        data_task = _examples_task(config.name, planned.run.run_id, run_dir / "examples.jsonl")
        options = {}
    data = DataConfig(data_task, training.feature_lengths, batch_size=training.batch_size,
                      seed=training.seed, trim_padding=training.trim_padding and not options)
    _, params, measured = runs._train(
        study_model, execution, run_dir, data, steps,
        planning.post_optimizer(config, entry, steps), str(full_dir), training.seed,
        rows=entry.rows_per_example, **options)
    # The samples drawn and DPO's one reference pass over the kept pairs count with the steps.
    sampling, reference = planning.post_training_flops(config, entry, model.config,
                                                       summary["prompts"], kept)
    measured["flops"] += sampling + reference
    measured["post_training"] = summary | {"from_run": planned.full_run,
                                           "sampling_flops": sampling,
                                           "reference_flops": reference}
    return measured | runs._model_evaluation(planned.run.run_id, study_model, execution,
                                             params)


def _sample_and_compare(runs: "RoleRuns", entry: PostTraining, model, vocabulary,
                        execution, run_dir: Path, full_dir: Path, planned: PlannedRun) -> dict:
    config = runs.config
    params = study_models.params_from(full_dir, model, execution,
                                      f"{planned.run.run_id} starts from {planned.full_run}")
    sampling = StudentSampling(entry.samples, float(entry.temperature), entry.seed,
                               config.training.feature_lengths, config.eval_batch_size,
                               config.decode_max_tokens)
    began = time.perf_counter()
    answers = answers_for_task(entry.prompts, model, params, vocabulary, sampling,
                               split=entry.split, limit=entry.limit,
                               progress=runs.progress and runs.processes.writer)
    sampling_seconds = time.perf_counter() - began
    del params  # training reads the full run's weights again, as its initial checkpoint
    failed = None
    if runs.processes.writer:
        try:
            _compare_and_write(runs, entry, answers, run_dir, sampling_seconds)
        except Exception as error:  # every process learns of it, then it is raised here
            failed = error
    if runs.processes.failed_anywhere(failed is not None):
        if failed is not None:
            raise failed
        raise RuntimeError(f"post_training {entry.name!r}: comparing the answers failed on "
                           f"process 0 (its log says why)")
    return json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))


def _compare_and_write(runs: "RoleRuns", entry: PostTraining, answers, run_dir: Path,
                       sampling_seconds: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    if entry.compare == "checks":
        check = registry.checker(entry.prompts)
        if entry.kind == "dpo":
            kept, summary = checked.pairs_from_checks(answers.records, answers.samples, check,
                                                      prompts=answers.prompts)
        else:
            kept, summary = checked.best_of_n_by_checks(answers.records, answers.samples,
                                                        check, prompts=answers.prompts)
    elif entry.compare == "revise":
        kept, summary = revised.pairs_from_revisions(
            runs.target, answers.prompts, [samples[0] for samples in answers.samples],
            cache_path=run_dir / "revisions.jsonl")
    else:
        asked = {"settings": judging.DEFAULT_JUDGE_SETTINGS,
                 "cache_path": run_dir / "judge_answers.jsonl"}
        if entry.kind == "dpo":
            kept, summary = judged.pairs_from_judge(runs.target, answers.prompts,
                                                    answers.samples, max_pairs_per_prompt=1,
                                                    **asked)
        else:
            kept, summary = judged.best_of_n_by_judge(runs.target, answers.prompts,
                                                      answers.samples, **asked)
    if entry.kind == "dpo":
        write_pairs(run_dir / "pairs.jsonl", kept)
    else:
        write_openai_chat(run_dir / "examples.jsonl", (
            (example.example_id, [{"role": turn.role, "content": turn.text}
                                  for turn in example.history]
             + [{"role": "assistant", "content": example.target}]) for example in kept))
    # Written last: its presence means the data is whole.
    write_json(run_dir / SUMMARY, {
        "method": summary.method, "prompts": summary.prompts,
        "candidates": summary.candidates, "kept": summary.kept,
        "dropped": dict(summary.dropped), "describe": summary.describe(),
        "samples_per_prompt": entry.samples, "sampling_seconds": sampling_seconds,
        "compare_seconds": time.perf_counter() - began})


def _summary_if_done(run_dir: Path) -> dict | None:
    path = run_dir / SUMMARY
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _examples_task(study: str, run_id: str, path: Path) -> str:
    """Rejection sampling's kept answers as a registered imitation task (once per process)."""
    # seqio task names allow only word characters, '.', ':' and '#'.
    name = ":".join(re.sub(r"[^\w.]", "_", part) for part in ("study", study, run_id))
    catalogue.register_imitation_task(name, path, "openai_chat", replace=True)
    return name
