"""Where a training run goes: the model its execution settings give, the mesh, the memory check.

`place` runs before anything compiles. It applies `ExecutionConfig.apply` to the model (dtypes,
remat policy), resolves an `'auto'` mesh over the devices present, checks the budget module's
per-device memory estimate against the device's memory where JAX reports it, and returns the
shardings the loop creates every array with, plus the record written to `MODEL_DIR/execution.json`.

Optimizer state is laid out like the parameters it belongs to: optax nests parameter-shaped trees
in its state (AdamW's `mu` and `nu`; Adafactor's unfactored `v`, per parameter), so a state leaf
whose path contains a parameter's path and has that parameter's shape gets its sharding. The rest
(step counts, Adafactor's factored row and column statistics, a few numbers per layer) is
replicated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arch_compare import partitioning
from arch_compare.budget import memory
from arch_compare.execution import (ExecutionConfig, candidate_meshes, mesh_description,
                                    resolve_mesh)
from arch_compare.models import build_model
from arch_compare.models.config import ModelConfig
from arch_compare.models.model import BaseModel
from arch_compare.partitioning import MeshConfig
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.recipes import FULL as FULL_RECIPE
from arch_compare.recipes import Recipe
from arch_compare.trainer.preference_steps import make_preference_step
from arch_compare.trainer.recipes import FULL, StepRecipe
from arch_compare.trainer.steps import TrainState, abstract_train_state, make_train_step

log = logging.getLogger(__name__)

EXECUTION_FILE = "execution.json"
EXECUTION_FIELDS = ("dtype", "param_dtype", "remat")


def model_for(model: BaseModel, execution: ExecutionConfig) -> BaseModel:
    """`model` as `execution` runs it: rebuilt when the settings change its config."""
    config = execution.apply(model.config)
    if config == model.config:
        return model
    defaults = ModelConfig.__dataclass_fields__
    for name in EXECUTION_FIELDS:
        old, new = getattr(model.config, name), getattr(config, name)
        # A non-default value set on the model (e.g. MODEL_CONFIG_OVERRIDES) is being replaced:
        # say so, since the execution settings are where a run's dtype and remat now live.
        if old != new and old != defaults[name].default:
            log.warning("the model config's %s=%r is replaced by the execution settings' %r "
                        "(set execution.%s instead)", name, old, new, name)
    return build_model(config)


@dataclasses.dataclass(frozen=True)
class Placement:
    """A run's resolved layout: what `train` creates its arrays with."""

    execution: ExecutionConfig  # with the mesh resolved (never 'auto')
    mesh: Mesh
    param_shardings: Any  # tree like model.abstract_params()
    batch_sharding: NamedSharding
    record: dict  # what MODEL_DIR/execution.json holds


def _shortfall(args: Callable[[MeshConfig], tuple], num_devices: int, batch_size: int,
               microbatches: int, device_bytes: int | None, recipe: Recipe) -> str:
    """Why no mesh over `num_devices` fits, mesh by mesh (for `resolve_mesh`'s error)."""
    reasons = []
    for mesh in candidate_meshes(num_devices):
        ways = mesh.data * mesh.fsdp * microbatches
        if batch_size % ways:
            reasons.append(f"{mesh_description(mesh)}: batch {batch_size} does not split over "
                           f"data x fsdp x microbatches = {ways}")
        else:
            needed = memory.per_device_training_memory(*args(mesh), recipe=recipe).total
            reasons.append(f"{mesh_description(mesh)}: {needed / 2**30:.2f} GiB per device of "
                           f"{memory.usable_bytes(device_bytes) / 2**30:.2f} GiB usable")
    return "; ".join(reasons)


def place(model: BaseModel, execution: ExecutionConfig, feature_lengths, batch_size: int,
          optimizer: str, devices: Sequence[jax.Device] | None = None,
          recipe: Recipe = FULL_RECIPE) -> Placement:
    """Resolve the mesh and check memory for `model` (already `model_for(model, execution)`,
    with its adapters for a LoRA run): MemoryShortfall when the budget's per-device estimate of a
    run of `recipe` exceeds the device's memory, NoMeshFits when no 'auto' mesh holds the run,
    ValueError when the batch does not split over the mesh."""
    devices = list(jax.devices() if devices is None else devices)
    device_bytes = memory.device_memory_bytes(devices[0])
    inputs, targets = model.sequence_lengths(feature_lengths)
    microbatches = execution.microbatches

    def args(mesh: MeshConfig) -> tuple:
        return (model.config, mesh, inputs, targets, batch_size, optimizer, microbatches)

    mesh_config = resolve_mesh(
        execution, len(devices),
        lambda mesh: memory.training_fits(*args(mesh), device_bytes=device_bytes,
                                          recipe=recipe),
        lambda: _shortfall(args, len(devices), batch_size, microbatches, device_bytes, recipe))
    if mesh_config.num_devices < len(devices):
        log.warning("the mesh %s uses %d of %d devices", mesh_description(mesh_config),
                    mesh_config.num_devices, len(devices))
    if device_bytes is None:
        log.debug("%s reports no memory size; skipping the memory check", devices[0])
    try:  # with device_bytes None this only estimates (and checks the batch split)
        estimate = memory.check_training_fits(*args(mesh_config), device_bytes=device_bytes,
                                              recipe=recipe)
    except memory.MemoryShortfall:
        raise
    except ValueError as error:  # the batch does not split over this mesh and microbatches
        raise ValueError(f"execution.mesh {mesh_description(mesh_config)} with "
                         f"{microbatches} microbatch(es): {error}") from None
    mesh = partitioning.make_mesh(mesh_config, devices[:mesh_config.num_devices])
    resolved = execution.with_mesh(mesh_config)
    record = {**resolved.to_dict(), "mesh_requested": execution.to_dict()["mesh"],
              "mesh_description": mesh_description(mesh_config),
              "devices": mesh_config.num_devices, "devices_present": len(devices),
              "device_kind": devices[0].device_kind, "platform": devices[0].platform,
              "process_count": jax.process_count(), "device_memory_bytes": device_bytes,
              "estimated_bytes_per_device": int(estimate.total)}
    return Placement(resolved, mesh,
                     partitioning.param_shardings(model.logical_axes(), model.abstract_params(),
                                                  mesh),
                     partitioning.batch_sharding(mesh), record)


def write_record(model_dir: str | Path, record: dict) -> None:
    if jax.process_index() == 0:
        (Path(model_dir) / EXECUTION_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _contains(path: tuple, part: tuple) -> bool:
    n = len(part)
    return any(path[i:i + n] == part for i in range(len(path) - n + 1))


def train_state_shardings(model: BaseModel, optimizer, param_shardings: Any, mesh: Mesh,
                          recipe: StepRecipe = FULL):
    """Shardings of the whole `TrainState`: the step replicated, parameters by the table, the
    optimizer state like the (trainable) parameters it belongs to."""
    abstract_params = model.abstract_params()
    abstract_state = abstract_train_state(optimizer, abstract_params, recipe)
    return TrainState(NamedSharding(mesh, PartitionSpec()), param_shardings,
                      opt_state_shardings(abstract_state.opt_state,
                                          recipe.split(abstract_params)[1],
                                          recipe.split(param_shardings)[1], mesh))


def jit_train_step(model: BaseModel, optimizer, schedule, microbatches: int, state_shardings,
                   batch_sharding: NamedSharding, mesh: Mesh, recipe: StepRecipe = FULL,
                   preference: PreferenceConfig | None = None):
    """The compiled training step exactly as `train` runs it (also what the memory benchmark
    measures): state donated, laid out by `state_shardings`, traced with `mesh` in context. With
    an L2-SP penalty the step takes the anchor third, laid out like the parameters (not
    donated: every step reads it). With `preference` it is the preference step
    (`preference_steps.make_preference_step`) on pair batches, whose every leaf (both answers'
    features, the reference scores) has its rows split like a token batch's."""
    step = (make_train_step(model, optimizer, schedule, microbatches, recipe)
            if preference is None else
            make_preference_step(model, optimizer, schedule, preference, microbatches, recipe))
    in_shardings = (state_shardings, batch_sharding)
    if recipe.has_anchor:
        in_shardings += (state_shardings.params,)
    return partitioning.on_mesh(mesh, jax.jit(
        step, in_shardings=in_shardings, out_shardings=(state_shardings, None),
        donate_argnums=(0,)))


def opt_state_shardings(abstract_opt_state: Any, abstract_params: Any, param_shardings: Any,
                        mesh: Mesh) -> Any:
    """Shardings for an optimizer state tree (see the module docstring for the rule)."""
    params = [(path, leaf.shape, sharding) for (path, leaf), sharding in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0],
        jax.tree.leaves(param_shardings))]
    params.sort(key=lambda entry: -len(entry[0]))  # the most specific path wins
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharding_of(path, leaf):
        for param_path, shape, sharding in params:
            if tuple(leaf.shape) == tuple(shape) and _contains(path, param_path):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(sharding_of, abstract_opt_state)
