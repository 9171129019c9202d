"""The training loop: initialise or resume, step, log, evaluate, checkpoint.

`train` is what `arch-compare train` runs after gin has built its arguments; it can equally be
called from Python. A run directory (`model_dir`) holds `model_config.json`, `checkpoints/`,
`metrics.jsonl` and `tensorboard/`; running again with the same directory resumes from the
newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import seqio
from tqdm import tqdm

from arch_compare import optim, partitioning
from arch_compare.budget.flops import training_flops
from arch_compare.models.loading import load_params
from arch_compare.models.model import BaseModel
from arch_compare.trainer.checkpoints import Checkpoints
from arch_compare.trainer.data import BatchIterator, DataConfig
from arch_compare.trainer.metrics import MetricsWriter
from arch_compare.trainer.steps import TrainState, make_eval_step, make_train_step
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
    microbatches: int = 1
    checkpoint_period: int = 100
    keep_checkpoints: int = 3
    eval_period: int = 0  # 0: no evaluation during training
    eval_batches: int = 8
    seed: int = 0  # parameter initialisation
    mesh: partitioning.MeshConfig = partitioning.MeshConfig()
    initial_checkpoint_path: str | None = None
    peak_flops_per_device: float | None = None  # for MFU; None leaves it out

    def __post_init__(self):
        for name in ("train_steps", "microbatches", "checkpoint_period", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.data.batch_size % self.microbatches:
            raise ValueError(f"batch size {self.data.batch_size} is not divisible into "
                             f"{self.microbatches} microbatches")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    state: TrainState
    losses: dict[int, float]  # step -> loss, for the steps this call ran
    resumed_from: int | None


def _initial_params(model: BaseModel, config: TrainConfig):
    path = config.initial_checkpoint_path
    if not path:
        return model.init(jax.random.key(config.seed))
    # Any checkpoint kind (another run's directory, native, HF), checked against the model.
    return jax.tree.map(jnp.asarray, load_params(model, path))


def _model_flops_per_step(model: BaseModel, data: DataConfig) -> float:
    inputs, targets = model.sequence_lengths(data.feature_lengths)
    # The models compute the full causal square, so count what runs.
    return data.batch_size * training_flops(model.config, inputs, targets, causal="full")


def evaluate_loss(model: BaseModel, params, provider: seqio.DatasetProviderBase,
                  converter: seqio.FeatureConverter, data: DataConfig, max_batches: int,
                  eval_step=None) -> dict[str, float]:
    """Mean token loss and accuracy over (up to `max_batches` batches of) a split."""
    eval_step = eval_step or jax.jit(make_eval_step(model))
    dataset = provider.get_dataset(dict(data.feature_lengths), split=data.split, shuffle=False,
                                   num_epochs=1, use_cached=False)
    dataset = converter(dataset, dict(data.feature_lengths))
    totals = {"loss_sum": 0.0, "correct": 0.0, "weight": 0.0}
    for batch in dataset.batch(data.batch_size).take(max_batches).as_numpy_iterator():
        short = data.batch_size - len(next(iter(batch.values())))
        if short:  # pad the last batch with zero-weight rows: one compiled shape
            batch = {k: np.pad(v, [(0, short)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
        for name, value in jax.device_get(eval_step(params, batch)).items():
            totals[name] += float(value)
    weight = max(totals["weight"], 1.0)
    return {"loss": totals["loss_sum"] / weight, "accuracy": totals["correct"] / weight}


def train(model: BaseModel, vocabulary: seqio.Vocabulary, config: TrainConfig, *,
          progress: bool = True) -> TrainResult:
    available = jax.devices()
    if config.mesh.num_devices < len(available):
        log.warning("the mesh %s uses %d of %d devices", config.mesh.shape,
                    config.mesh.num_devices, len(available))
    mesh = partitioning.make_mesh(config.mesh, available[:config.mesh.num_devices])
    abstract_params = model.abstract_params()
    param_shardings = partitioning.param_shardings(model.logical_axes(), abstract_params, mesh)
    batch_sharding = partitioning.batch_sharding(mesh)
    optimizer = optim.make_optimizer(config.optimizer, model.logical_axes())
    schedule = optim.make_schedule(config.optimizer.schedule)
    checkpoints = Checkpoints(config.model_dir, model.config, keep=config.keep_checkpoints)

    params = jax.device_put(_initial_params(model, config), param_shardings)
    state = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)))(params)
    resumed_from, position = None, 0
    if checkpoints.latest_step is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        del state, params
        state, position = checkpoints.restore(abstract)
        resumed_from = int(state.step)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)

    provider = seqio_provider(config.data.task, vocabulary)
    converter = model.feature_converter(vocabulary, pack=config.data.pack)
    batches = BatchIterator(provider, converter, config.data, position=position,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
    train_step = jax.jit(make_train_step(model, optimizer, schedule, config.microbatches),
                         in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, None), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(model))
    flops_per_step = _model_flops_per_step(model, config.data)
    peak = (config.peak_flops_per_device * mesh.devices.size
            if config.peak_flops_per_device else None)

    start = int(state.step)
    writer = MetricsWriter(config.model_dir, resume_step=start)
    losses: dict[int, float] = {}
    bar = tqdm(total=config.train_steps, initial=start, disable=not progress, unit="step",
               desc=f"train {Path(config.model_dir).name}")
    try:
        for step in range(start + 1, config.train_steps + 1):
            began = time.perf_counter()
            batch = {name: jax.make_array_from_process_local_data(batch_sharding, rows)
                     for name, rows in next(batches).items()}
            new_state, metrics = train_step(state, batch)
            metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
            seconds = time.perf_counter() - began
            if not math.isfinite(metrics["loss"]):
                last = checkpoints.latest_step
                raise TrainingDiverged(
                    f"step {step}: loss is {metrics['loss']}; stopping. The last good checkpoint "
                    f"(step {last}) is kept in {checkpoints.model_dir / 'checkpoints'}"
                    if last is not None else f"step {step}: loss is {metrics['loss']}; stopping "
                    f"before any checkpoint was written")
            state = new_state
            tokens = config.data.batch_size * sum(config.data.feature_lengths.values())
            metrics.update(step_seconds=seconds, tokens_per_second=tokens / seconds)
            if peak:
                metrics["mfu"] = flops_per_step / seconds / peak
            losses[step] = metrics["loss"]
            writer.write(step, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            bar.update(1)
            if config.eval_period and step % config.eval_period == 0:
                validation = dataclasses.replace(config.data, split="validation")
                writer.write(step, evaluate_loss(model, state.params, provider, converter,
                                                 validation, config.eval_batches, eval_step),
                             kind="validation")
            if step % config.checkpoint_period == 0 or step == config.train_steps:
                checkpoints.save(state, batches.position)
    finally:
        bar.close()
        writer.close()
        checkpoints.close()
    return TrainResult(state, losses, resumed_from)
