"""The training loop: initialise or resume, step, log, evaluate, checkpoint.

`train` is what `arch-compare train` runs after gin has built its arguments; it can equally be
called from Python. A run directory (`model_dir`) holds `model_config.json`, `execution.json`
(the mesh, dtypes, remat policy and microbatches that ran), `checkpoints/`, `metrics.jsonl` and
`tensorboard/`; running again with the same directory resumes from the newest checkpoint.

Recipes (`recipes.py` at the package root names them; `trainer/recipes.py` is their step side):
`lora` trains low-rank adapters on frozen base weights read from `initial_checkpoint_path`;
`l2sp_weight > 0` adds the L2-SP penalty toward those base weights, a second copy of them held
on the devices (sharded like the parameters) and re-read on resume, never checkpointed.

Preference optimisation (`preference`: DPO, IPO): the steps train on the pairs of the JSONL file
`preference_pairs` (`preference_data.py`: pair rows, the frozen reference's scores computed once
and kept in MODEL_DIR/reference_logps.npz, endless epoch-shuffled batches) from the weights of
`initial_checkpoint_path`; `data` then gives the feature lengths, the pairs per step, the seed and
the shuffle, and its task is read only by the evaluation (the token loss on its validation split).
Recipes combine with it: LoRA trains adapters on the preference loss, L2-SP adds its penalty.

The loop never waits for the device between steps: step N+1 is dispatched before step N's metrics
are read (each read is a sync point), and the next batches are prepared on a background thread
(`prefetch.Prefetcher`). Before a checkpoint or an evaluation at step N, the metrics of every step
up to N are read and checked, so a state whose loss was NaN or infinite is never saved.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
import seqio
from tqdm import tqdm

from arch_compare import optim, partitioning
from arch_compare.budget.flops import training_flops
from arch_compare.budget.recipes import penalty_flops_per_step
from arch_compare.configs import from_fields
from arch_compare.data.iterators import numpy_iterator
from arch_compare.execution import ExecutionConfig
from arch_compare.models import lora as lora_lib
from arch_compare.models.loading import load_params
from arch_compare.models.model import BaseModel, build_model
from arch_compare.preference.batches import BatchSummary
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.recipes import LoraConfig, Recipe
from arch_compare.trainer import placement, preference_data, recipes
from arch_compare.trainer.checkpoints import Checkpoints
from arch_compare.trainer.data import BatchIterator, DataConfig, SplitStats, provider_examples
from arch_compare.trainer.interrupts import StopRequests
from arch_compare.trainer.metrics import MetricsWriter
from arch_compare.trainer.prefetch import Prefetcher
from arch_compare.trainer.step_metrics import StepMetrics
from arch_compare.trainer.steps import (TrainState, abstract_train_state, make_eval_step,
                                        make_init_state)
from arch_compare_tasks.registry import seqio_provider


log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model_dir: str
    data: DataConfig
    train_steps: int
    optimizer: optim.OptimizerConfig
    # Mesh (or 'auto'), dtypes, remat policy and microbatches; a dict of its fields works too.
    execution: ExecutionConfig = ExecutionConfig()
    checkpoint_period: int = 100
    keep_checkpoints: int = 3
    eval_period: int = 0  # 0: no evaluation during training
    eval_batches: int = 8
    seed: int = 0  # parameter initialisation
    initial_checkpoint_path: str | None = None
    peak_flops_per_device: float | None = None  # for MFU; None leaves it out
    prefetch_batches: int = 2  # batches prepared ahead on a background thread
    # LoRA: adapters trained on the frozen weights of initial_checkpoint_path (a dict works too).
    lora: LoraConfig | None = None
    # L2-SP: this times ||theta - theta_base||^2 added to the loss (0: none); theta_base is
    # initial_checkpoint_path's weights.
    l2sp_weight: float = 0.0
    # Preference optimisation (a dict works too) on the pairs of the JSONL file
    # `preference_pairs`, against the frozen reference `preference_reference` (a checkpoint;
    # default initial_checkpoint_path, the policy's start).
    preference: PreferenceConfig | None = None
    preference_pairs: str | None = None
    preference_reference: str | None = None

    @property
    def reference_path(self) -> str | None:
        return self.preference_reference or self.initial_checkpoint_path

    def _check_recipe(self) -> None:
        weight = self.l2sp_weight
        if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                or not math.isfinite(weight) or weight < 0):
            raise ValueError(f"TrainConfig.l2sp_weight must be a finite number >= 0, got "
                             f"{weight!r}")
        if self.lora is not None and weight > 0:
            raise ValueError(f"TrainConfig: lora and l2sp_weight={weight} are separate recipes "
                             f"(adapters have no base weights to be pulled toward)")
        if self.initial_checkpoint_path:
            return
        if self.lora is not None:
            raise ValueError("TrainConfig.lora needs initial_checkpoint_path: the base weights "
                             "the adapters are trained on (frozen)")
        if weight > 0:
            raise ValueError(f"TrainConfig.l2sp_weight={weight} needs initial_checkpoint_path: "
                             f"the base weights the penalty pulls toward")

    def __post_init__(self):
        object.__setattr__(self, "execution",
                           ExecutionConfig.coerce(self.execution, "TrainConfig.execution"))
        object.__setattr__(self, "lora", from_fields(self.lora, LoraConfig, "TrainConfig.lora"))
        object.__setattr__(self, "preference", from_fields(self.preference, PreferenceConfig,
                                                           "TrainConfig.preference"))
        self._check_recipe()
        preference_data.check_fields(self)
        for name in ("train_steps", "checkpoint_period", "keep_checkpoints", "prefetch_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        microbatches = self.execution.microbatches
        if self.data.batch_size % microbatches:
            raise ValueError(f"batch size {self.data.batch_size} is not divisible into "
                             f"execution.microbatches={microbatches} microbatches")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    state: TrainState
    losses: dict[int, float]  # step -> loss, for the steps this call ran
    resumed_from: int | None
    execution: dict  # what ran: MODEL_DIR/execution.json (placement.place's record + recipe)
    # Per task of the training data: its examples and how many had text cut before tokenizing.
    data: tuple[SplitStats, ...] = ()
    trainable_params: int = 0  # elements that trained: all, or LoRA's adapters
    pairs: BatchSummary | None = None  # a preference run's pairs: kept, dropped, batches
    last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the last step's
    # (encoder, decoder) tokens per example a step ran over: the feature lengths' own, or the
    # widths batches were trimmed to (DataConfig.trim_padding).
    sequence_lengths: tuple[int, int] = (0, 0)


def _initial_params(model: BaseModel, config: TrainConfig, shardings: Any):
    """Random or loaded parameters, placed as `shardings` says (`model` without adapters)."""
    path = config.initial_checkpoint_path
    if not path:
        return model.init(jax.random.key(config.seed), shardings=shardings)
    # Any checkpoint kind (another run's directory, native, HF), checked against the model.
    # Read shard by shard into place: no whole copy of the model on the host.
    return load_params(model, path, shardings=shardings)


def _initial_lora_params(base: BaseModel, model: BaseModel, config: TrainConfig, shardings: Any,
                         recipe: recipes.StepRecipe):
    """The base weights (frozen, read straight into `lora.base_dtype` when given) and fresh
    adapters from the run's seed, each created in its shards."""
    frozen_shardings, adapter_shardings = recipe.split(shardings)
    dtype = config.lora.base_dtype
    reader = base if dtype is None else build_model(base.config.replace(param_dtype=dtype))
    frozen = load_params(reader, config.initial_checkpoint_path, shardings=frozen_shardings)
    adapters = lora_lib.init_adapters(model, jax.random.key(config.seed),
                                      shardings=adapter_shardings)
    return recipe.join(frozen, adapters)


def _with_anchor(train_step, anchor, state, batch):
    return train_step(state, batch, anchor)  # positional: the jitted step's in_shardings


def step_sequence_lengths(model: BaseModel, data: DataConfig,
                          widths: dict[str, int] | None) -> tuple[int, int]:
    """(encoder, decoder) tokens per example of a step: the trimmed widths when batches are
    trimmed, else what the feature lengths make of an example."""
    if widths is None:
        return model.sequence_lengths(data.feature_lengths)
    return widths.get("encoder", 0), widths.get("decoder", 0)


def _model_flops_per_step(model: BaseModel, batch_size: int, lengths: tuple[int, int],
                          recipe: Recipe) -> float:
    inputs, targets = lengths
    # The models compute the full causal square, so count what runs. LoRA: no weight gradients
    # for the frozen weights; L2-SP: its elementwise penalty, once per step.
    return (batch_size * training_flops(model.config, inputs, targets, causal="full",
                                        recipe=recipe)
            + penalty_flops_per_step(model.config, recipe))


def evaluate_loss(model: BaseModel, params, provider: seqio.DatasetProviderBase,
                  converter: seqio.FeatureConverter, data: DataConfig, max_batches: int,
                  eval_step=None) -> dict[str, float]:
    """Mean token loss and accuracy over (up to `max_batches` batches of) a split."""
    eval_step = eval_step or jax.jit(make_eval_step(model))
    # Read as training reads (oversized text cut before tokenizing), once, in order.
    dataset, _ = provider_examples(provider, data.feature_lengths, data.split, shuffle=False,
                                   seed=data.seed, repeat=False)
    dataset = converter(dataset, dict(data.feature_lengths))
    totals = {"loss_sum": 0.0, "correct": 0.0, "weight": 0.0}
    for batch in numpy_iterator(dataset.batch(data.batch_size).take(max_batches)):
        short = data.batch_size - len(next(iter(batch.values())))
        if short:  # pad the last batch with zero-weight rows: one compiled shape
            batch = {k: np.pad(v, [(0, short)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
        for name, value in jax.device_get(eval_step(params, batch)).items():
            totals[name] += float(value)
    weight = max(totals["weight"], 1.0)
    return {"loss": totals["loss_sum"] / weight, "accuracy": totals["correct"] / weight}


def train(model: BaseModel, vocabulary: seqio.Vocabulary, config: TrainConfig, *,
          progress: bool = True) -> TrainResult:
    """Train as `config` says; Ctrl-C stops between steps (`interrupts.TrainingInterrupted`)."""
    with StopRequests() as stop:
        return _train(model, vocabulary, config, progress, stop)


def _train(model: BaseModel, vocabulary: seqio.Vocabulary, config: TrainConfig, progress: bool,
           stop: StopRequests) -> TrainResult:
    base = model = placement.model_for(model, config.execution)
    if config.lora is not None:
        model = base.with_lora(config.lora)
    preference = config.preference is not None
    # Sequences per step: a pair is two (its answers), each its own row.
    step_data = dataclasses.replace(config.data, batch_size=config.data.batch_size * (
        2 if preference else 1))
    # Mesh resolved and memory checked before anything is created or compiled.
    budget_recipe = recipes.budget_recipe(config.lora, config.l2sp_weight)
    where = placement.place(model, config.execution, config.data.feature_lengths,
                            step_data.batch_size, config.optimizer.name, recipe=budget_recipe)
    if preference:
        preference_data.check_batch_split(config.data.batch_size, where)
    execution = where.execution
    recipe = recipes.step_recipe(config.lora, config.l2sp_weight, config.seed)
    # The optimizer (and its weight-decay mask) of the trainable weights only.
    optimizer = optim.make_optimizer(config.optimizer, recipe.split(model.logical_axes())[1])
    schedule = optim.make_schedule(config.optimizer.schedule)
    checkpoints = Checkpoints(config.model_dir, model.config, keep=config.keep_checkpoints)
    # A LoRA model's frozen weights are in lora.base_dtype (when given), its adapters not.
    abstract_params = model.abstract_params()
    record = {**where.record, "recipe": recipes.run_record(
        config.lora, config.l2sp_weight, recipe, abstract_params,
        preference_data.run_record(config.preference, config.preference_pairs,
                                   config.reference_path) if preference else None)}
    if checkpoints.latest_step is not None:  # a resumed run keeps the recipe it started with
        recipes.check_resumed(Path(config.model_dir) / placement.EXECUTION_FILE, record["recipe"])
    placement.write_record(config.model_dir, record)
    # Before the state exists: the reference's weights are on the devices only while scoring.
    pairs, pair_summary = preference_data.prepare(
        base, vocabulary, config.preference_pairs, config.reference_path, config.data, where,
        config.model_dir) if preference else (None, None)

    state_shardings = placement.train_state_shardings(model, optimizer, where.param_shardings,
                                                      where.mesh, recipe)
    resumed_from, position = None, 0
    if checkpoints.latest_step is not None:
        state, position = checkpoints.restore(jax.tree.map(
            lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            abstract_train_state(optimizer, abstract_params, recipe), state_shardings))
        resumed_from = int(state.step)
    else:
        params = (_initial_params(model, config, where.param_shardings) if config.lora is None
                  else _initial_lora_params(base, model, config, where.param_shardings, recipe))
        state = partitioning.on_mesh(where.mesh, jax.jit(
            make_init_state(optimizer, recipe), out_shardings=state_shardings,
            donate_argnums=0))(params)

    # A preference run reads its task only to evaluate.
    provider = (seqio_provider(config.data.task, vocabulary)
                if not preference or config.eval_period else None)
    converter = model.feature_converter(vocabulary, pack=config.data.pack)
    train_step = placement.jit_train_step(model, optimizer, schedule, execution.microbatches,
                                          state_shardings, where.batch_sharding, where.mesh,
                                          recipe, config.preference)
    if recipe.has_anchor:
        # L2-SP's base weights: read again (also on resume; never checkpointed), sharded like
        # the parameters, read by every step.
        anchor = load_params(model, config.initial_checkpoint_path,
                             shardings=where.param_shardings)
        train_step = functools.partial(_with_anchor, train_step, anchor)
    eval_step = partitioning.on_mesh(where.mesh, jax.jit(make_eval_step(model)))
    peak = (config.peak_flops_per_device * where.mesh.devices.size
            if config.peak_flops_per_device else None)

    start = int(state.step)
    writer = MetricsWriter(config.model_dir, resume_step=start)
    losses: dict[int, float] = {}
    last_metrics: dict[str, float] = {}  # the newest step's, for the caller
    bar = tqdm(total=config.train_steps, initial=start, disable=not progress, unit="step",
               desc=f"train {Path(config.model_dir).name}")

    def report(step: int, metrics: dict[str, float], seconds: float) -> None:
        metrics.update(step_seconds=seconds, tokens_per_second=tokens / seconds)
        if peak:
            metrics["mfu"] = flops_per_step / seconds / peak
        losses[step] = metrics["loss"]
        last_metrics.clear()
        last_metrics.update(metrics)
        writer.write(step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        bar.update(1)

    def diverged(step: int, loss: float) -> TrainingDiverged:
        last = checkpoints.latest_step
        return TrainingDiverged(
            f"step {step}: loss is {loss}; stopping. The last good checkpoint (step {last}) is "
            f"kept in {checkpoints.model_dir / 'checkpoints'}" if last is not None else
            f"step {step}: loss is {loss}; stopping before any checkpoint was written")

    def place_batch(rows: dict[str, Any]) -> dict[str, Any]:
        # Every process holds the whole global batch; each device gets its rows (of every
        # feature, also a pair batch's nested ones).
        return jax.tree.map(lambda value: partitioning.global_array(value, where.batch_sharding),
                            rows)

    def interrupted() -> str:
        last = checkpoints.latest_step
        kept = f"the newest checkpoint (step {last}) is kept" if last is not None else (
            "no checkpoint was written yet")
        return f"after step {int(state.step)} of {config.train_steps}; {kept}; run again to resume"

    pending = StepMetrics(report, diverged)
    data = (preference_data.PairBatchIterator(pairs, config.data.batch_size, config.data.seed,
                                              config.data.shuffle, position) if preference else
            BatchIterator(provider, converter, config.data, position=position))
    lengths = step_sequence_lengths(model, config.data, data.widths)
    flops_per_step = _model_flops_per_step(model, step_data.batch_size, lengths, budget_recipe)
    tokens = step_data.batch_size * sum(lengths)
    batches = Prefetcher(data, place_batch, depth=config.prefetch_batches, position=position,
                         limit=config.train_steps - start,
                         while_waiting=lambda: stop.check(interrupted))
    try:
        for step in range(start + 1, config.train_steps + 1):
            stop.check(interrupted)
            pending.before_dispatch()
            state, metrics = train_step(state, next(batches))
            pending.read_until(step - 1)  # the previous step's, while this one runs
            pending.add(step, metrics)
            evaluate = config.eval_period and step % config.eval_period == 0
            save = step % config.checkpoint_period == 0 or step == config.train_steps
            if evaluate or save:
                pending.read_until(step)  # every step up to this state checked finite
            if evaluate:
                validation = dataclasses.replace(config.data, split="validation")
                writer.write(step, evaluate_loss(model, state.params, provider, converter,
                                                 validation, config.eval_batches, eval_step),
                             kind="validation")
            if save:
                # `position` counts the batches the steps so far consumed, not those queued.
                checkpoints.save(state, batches.position)
        pending.read_until(config.train_steps)
    finally:
        batches.close()
        bar.close()
        writer.close()
        checkpoints.close()
    return TrainResult(state, losses, resumed_from, record, tuple(data.stats),
                       record["recipe"]["trainable_params"], pair_summary, last_metrics, lengths)
