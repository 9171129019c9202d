"""Evaluating models and the target on the same tasks, with the same metric functions.

Generation tasks are scored on text: a model's greedy answers (decoded from the same prompts the
feature converter builds for training) and the target's answers go through the task's own
post-processing and metric functions, so a number means the same thing in every row of the
report. Rank-classification tasks (metric functions over `scores`, MMLU) need log-likelihoods,
which a chat endpoint does not give: models are scored by seqio's Evaluator and the target is
left out of those tasks (the report shows n/a).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping, Sequence

import seqio

from arch_compare.decoding.config import DecodeConfig
from arch_compare.evaluation import intervals
from arch_compare.evaluation.intervals import MetricValue
from arch_compare.imitation import collection
from arch_compare.imitation.targets import GenerationSettings, Prompt, Target
from arch_compare.models.model import BaseModel, Params
from arch_compare.trainer import inference
from arch_compare_tasks import registry


def is_scored(task: str) -> bool:
    """Whether the task's metrics read scores (rank classification) rather than predictions."""
    return any("scores" in inspect.signature(fn).parameters
               for fn in registry.get_task(task).metric_fns)


def task_records(task: str, split: str, max_examples: int | None) -> tuple[Mapping, ...]:
    records = registry.records(task, split)
    return records[:max_examples] if max_examples else records


def postprocessed(task: str, records: Sequence[Mapping], predictions: Sequence[str]
                  ) -> tuple[list, list]:
    """(targets, outputs) as the task's metric functions take them (seqio's conventions: both go
    through `postprocess_fn` with their example). Done once per run and task: for a task whose
    postprocessing is expensive the metric functions, re-run on resamples, never repeat it."""
    return postprocessed_targets(task, records), postprocessed_outputs(task, records, predictions)


def _postprocess_fn(task: str):
    return (registry.get_task(task).postprocess_fn
            or (lambda text, example=None, is_target=False: text))


def postprocessed_targets(task: str, records: Sequence[Mapping]) -> list:
    post = _postprocess_fn(task)
    return [post(record["targets"], example=record, is_target=True) for record in records]


def postprocessed_outputs(task: str, records: Sequence[Mapping], predictions: Sequence[str]
                          ) -> list:
    if len(records) != len(predictions):
        raise ValueError(f"{task}: {len(records)} examples but {len(predictions)} predictions")
    post = _postprocess_fn(task)
    return [post(text, example=record, is_target=False)
            for text, record in zip(predictions, records)]


def score_postprocessed(task: str, targets: Sequence, outputs: Sequence
                        ) -> dict[str, MetricValue]:
    """Every metric of the task with its 95% interval (Wilson for shares of examples, the
    bootstrap over examples otherwise; see `evaluation/intervals.py`)."""
    metrics: dict[str, MetricValue] = {}
    for metric_fn in registry.get_task(task).metric_fns:
        metrics.update(intervals.metric_values(metric_fn, targets, outputs))
    return metrics


def score_predictions(task: str, records: Sequence[Mapping], predictions: Sequence[str]
                      ) -> dict[str, MetricValue]:
    """The task's metrics for `predictions`, one per record, with their intervals
    (`float(value)` is the number alone)."""
    return score_postprocessed(task, *postprocessed(task, records, predictions))


def model_predictions(model: BaseModel, params: Params, vocabulary: seqio.Vocabulary, task: str,
                      split: str, max_examples: int | None, *, feature_lengths: Mapping[str, int],
                      batch_size: int, max_new_tokens: int, mesh: Any = None,
                      progress: bool = True) -> list[str]:
    """Greedy answers of a model to a task split's prompts, in record order. `mesh` (a
    `jax.sharding.Mesh`; None: the one `params` are placed on) is where it decodes."""
    config = inference.InferenceConfig(
        checkpoint_path="", output_path="", feature_lengths=dict(feature_lengths),
        batch_size=batch_size, decode=DecodeConfig(max_new_tokens=max_new_tokens), split=split)
    limit = len(task_records(task, split, max_examples))
    predictions = []
    for row in inference.predict(model, params, vocabulary, task, config, mesh=mesh,
                                 progress=progress):
        if row["index"] >= limit:
            break
        predictions.append(row["prediction"])
    return predictions


def scored_metrics(model: BaseModel, params: Params, vocabulary: seqio.Vocabulary, task: str,
                   split: str, *, feature_lengths: Mapping[str, int], batch_size: int,
                   output_path: str, mesh: Any = None, progress: bool = True
                   ) -> dict[str, float]:
    """A rank-classification task through seqio's Evaluator (models only); `mesh` as for
    `model_predictions`."""
    config = inference.InferenceConfig(
        checkpoint_path="", output_path=output_path, feature_lengths=dict(feature_lengths),
        batch_size=batch_size, decode=DecodeConfig(max_new_tokens=1), split=split)
    return inference.evaluate(model, params, vocabulary, [task], config, mesh=mesh,
                              progress=progress)[task]


def prompt_of(record: Mapping) -> Prompt:
    """What the target is asked: the record's raw chat message when it has one (`prompt`),
    else its rendered `inputs` as one user message (few-shot benchmark prompts)."""
    return Prompt.from_text(str(record["id"]), str(record.get("prompt") or record["inputs"]))


def target_predictions(target: Target, records: Sequence[Mapping], settings: GenerationSettings,
                       cache_path, *, progress: bool = True) -> list[str]:
    """The target's answers, through the collection cache (an API target is asked only once,
    and a restarted study reuses what it already paid for). A prompt the target failed on
    stays a failure: the run stops and says so rather than scoring an empty answer."""
    prompts = [prompt_of(record) for record in records]
    replies = collection.CachedTarget(target, Path(cache_path), progress).complete(prompts,
                                                                                   settings)
    failed = [(prompt.prompt_id, reply.error) for prompt, reply in zip(prompts, replies)
              if reply.error is not None]
    if failed:
        raise RuntimeError(f"the target gave no answer for {len(failed)} evaluation prompts "
                           f"(first: {failed[0][0]}: {failed[0][1]})")
    return [reply.text for reply in replies]
