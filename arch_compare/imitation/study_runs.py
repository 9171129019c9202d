"""What each role's run does in a study (`study.py` walks the plan and records the rows): a base
model pre-trained here or read from its checkpoint, an imitation run fine-tuned as its recipe
says (`study_recipes.py`: `full`, `mix`, `l2sp`, `lora`, or `wise`'s interpolation without
training), the target asked; each then evaluated on every evaluation task, its metrics, samples
and predictions written to the results database by process 0.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from arch_compare import optim
from arch_compare.budget.flops import training_flops
from arch_compare.execution import ExecutionConfig
from arch_compare.imitation import (evaluation, study_models, study_post_training,
                                    study_recipes)
from arch_compare.imitation.config import Evaluation, StudyModel
from arch_compare.imitation.plan import PlannedRun
from arch_compare.models.model import BaseModel
from arch_compare.recipes import FULL, Recipe
from arch_compare.results import Sample
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train


class RoleRuns:
    """The runs of each role, for `StudyRunner` (whose state they use: `config`, `directory`,
    `models`, `processes`, `progress`, `store`, `target`)."""

    def _train(self, study_model: StudyModel, execution: ExecutionConfig, run_dir: Path,
               data: DataConfig, steps: int, optimizer: optim.OptimizerConfig,
               initial: str | None, seed: int, recipe: Recipe = FULL, rows: int = 1,
               **options):
        """Train `steps` steps as `recipe` says, with any other TrainConfig `options` (a
        preference run's; `rows` sequences per example): (the whole parameter tree,
        measured)."""
        model = self.models.model(study_model, execution)
        config = TrainConfig(model_dir=str(run_dir), data=data, train_steps=steps,
                             optimizer=optimizer, checkpoint_period=max(1, steps // 4),
                             keep_checkpoints=1, seed=seed, initial_checkpoint_path=initial,
                             execution=execution, **study_recipes.train_options(recipe),
                             **options)
        began = time.perf_counter()
        result = train(model, self.models.vocabulary(study_model), config,
                       progress=self.progress and self.processes.writer)
        seconds = time.perf_counter() - began
        # What the steps ran over: the feature lengths, or the widths batches were trimmed to.
        inputs, targets = result.sequence_lengths
        tokens = steps * data.batch_size * rows * (inputs + targets)
        flops = steps * data.batch_size * rows * training_flops(
            model.config, inputs, targets, causal="full", recipe=recipe)
        splits = getattr(result, "data", ())
        measured = {"train_seconds": seconds, "steps": steps, "tokens": tokens,
                    "tokens_per_second": tokens / seconds if seconds else None,
                    "flops": flops, "resumed_from_step": result.resumed_from,
                    "loss": result.losses[max(result.losses)] if result.losses else None,
                    "execution": getattr(result, "execution", None),
                    "examples_cut": sum(split.cut for split in splits),
                    "trainable_parameters": getattr(result, "trainable_params", None),
                    # What it trained on: each task of its data (a mixture's two) and its size.
                    "data": [{"task": split.task.split("#")[0], "examples": split.examples,
                              "cut": split.cut} for split in splits]}
        return model, result.state.params, measured

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
                              seed=pre.seed, trim_padding=pre.trim_padding)
            _, params, measured = self._train(study_model, execution,
                                              self.base_dir(study_model), data, pre.steps,
                                              optimizer, None, pre.seed)
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
        """Fine-tune the base on the run's imitation data as its recipe says (a `wise` run only
        interpolates weights), then evaluate."""
        run, study_model, training = planned.run, planned.model, self.config.training
        recipe = planned.recipe or FULL
        if planned.post_training is not None:
            return study_post_training.run(self, planned, execution, task)
        if not recipe.trains:
            return self._run_wise(planned, execution)
        run_dir = self.directory / "runs" / run.run_id
        data = DataConfig(study_recipes.training_task(planned, task), training.feature_lengths,
                          batch_size=training.batch_size, seed=training.seed,
                          trim_padding=training.trim_padding)
        model, params, measured = self._train(
            study_model, execution, run_dir, data, planned.steps,
            training.optimizer_for(planned.steps), self.base_checkpoint(study_model),
            training.seed, recipe)
        if recipe.kind == "lora":  # evaluated (and served) with the adapters merged in
            adapters = study_recipes.host_adapters(params)  # on every process
            if self.processes.writer:
                measured["peft_adapters"] = study_recipes.export_adapters(
                    model, recipe, adapters, run_dir / "peft_adapters",
                    self.base_checkpoint(study_model))
            params = study_recipes.merged(model, recipe, params)
        return measured | self._model_evaluation(run.run_id, study_model, execution, params)

    def _run_wise(self, planned: PlannedRun, execution: ExecutionConfig) -> dict:
        """No training: `(1 - alpha) * base + alpha * full` of the base weights and those the
        cell's full run trained, read onto the run's mesh, evaluated."""
        study_model, alpha = planned.model, planned.run.config["recipe"]["alpha"]
        model = self.models.model(study_model, execution)
        base = self._base_params(study_model, model, execution)
        full = study_models.params_from(self.directory / "runs" / planned.full_run, model,
                                        execution, f"{planned.run.run_id} interpolates run "
                                        f"{planned.full_run}")
        params = study_recipes.interpolate(base, full, alpha)
        del base, full  # the evaluation holds one copy of the weights, as any run's does
        measured = {"steps": 0, "flops": 0.0, "train_seconds": 0.0, "trainable_parameters": 0,
                    "interpolated": {"base": self.base_checkpoint(study_model),
                                     "full": planned.full_run, "alpha": alpha}}
        return measured | self._model_evaluation(planned.run.run_id, study_model, execution,
                                                 params)

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
