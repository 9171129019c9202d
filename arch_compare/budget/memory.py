"""Memory of a run: weights, gradients, optimizer state, activations and the KV cache.

Conventions, stated because every estimator picks its own:
- Training keeps float32 master weights and float32 gradients; inference holds weights in the
  model's `param_dtype`. Activations are stored in the compute dtype (`ModelConfig.dtype`), except
  the vocabulary logits and their gradient, which the loss takes in float32.
- Attention is dense (the probabilities are stored), as this project's models run it; a fused
  flash-attention kernel would not store them.
- Rematerialisation saves each block's input only and recomputes the rest, holding one block's full
  activations at a time during the backward pass.
- Adafactor keeps no first moment (t5x's default) and factors a second moment the way optax does
  once each kernel is seen as the matrix its matmul uses (`Tensor.matrix_shape`, fan-in x fan-out,
  as t5x factors by logical axes): where the two largest dimensions are both at least 128, one row
  and one column of statistics instead of a full copy.
- Recipes (`recipe=`, arch_compare/recipes.py): only what trains has gradients and optimizer
  state. `lora` holds the frozen weights in `lora.base_dtype` (else float32) and trains float32
  adapters; its activations are full training's plus what the unmerged adapters keep per targeted
  projection and token (`x @ A`, rank numbers, for B's gradient; with dropout the dropped input
  and its mask too). `l2sp` adds the anchor, a float32 copy of the weights sharded like them,
  and the penalty's gradient (float32, like the gradients).
"""

from __future__ import annotations

import dataclasses
import math

from arch_compare.budget import recipes as recipes_lib
from arch_compare.budget.flops import kernel_tokens
from arch_compare.budget.parameters import Tensor, parameter_tensors
from arch_compare.models.config import ModelConfig
from arch_compare.recipes import FULL, Recipe

FLOAT32_BYTES = 4
ADAFACTOR_MIN_DIM_TO_FACTOR = 128  # optax.adafactor's default
# XLA, the runtime and fragmentation take their share of each chip; plan for 90% of HBM.
USABLE_HBM_FRACTION = 0.9


def _adamw_state(tensors: tuple[Tensor, ...]) -> int:
    return sum(2 * t.size for t in tensors)  # first and second moments


def _adafactor_state(tensors: tuple[Tensor, ...]) -> int:
    floats = 0
    for tensor in tensors:
        shape = tensor.matrix_shape
        largest = sorted(shape)[-2:]
        if len(shape) >= 2 and largest[0] >= ADAFACTOR_MIN_DIM_TO_FACTOR:
            floats += tensor.size // largest[0] + tensor.size // largest[1]
        else:
            floats += tensor.size
    return floats


# Optimizer name -> float32 numbers of state it keeps for the given parameter tensors.
OPTIMIZER_STATE = {"adamw": _adamw_state, "adafactor": _adafactor_state}
SHARDINGS = ("fsdp", "data")


def optimizer_state_numbers(cfg: ModelConfig, optimizer: str, recipe: Recipe = FULL) -> int:
    """float32 numbers of optimizer state a run of `recipe` keeps: for what it trains only."""
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_STATE)}")
    return OPTIMIZER_STATE[optimizer](recipes_lib.trainable_tensors(cfg, recipe))


def optimizer_state_bytes(cfg: ModelConfig, optimizer: str, recipe: Recipe = FULL) -> int:
    return optimizer_state_numbers(cfg, optimizer, recipe) * FLOAT32_BYTES


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MASK_BYTES = 1  # a dropout mask: one bool per number


def _block_activations(cfg: ModelConfig, keys: int, cross_keys: int) -> int:
    """Numbers stored per token by one block for the backward pass (no rematerialisation)."""
    d, h, kv, e, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff
    # attention sub-block: residual input, its norm, q/k/v, probabilities over `keys`, output
    attention = 2 * d + (h + 2 * kv) * e + h * keys + h * e
    cross = 2 * d + h * e + h * cross_keys + h * e if cross_keys else 0
    # MLP sub-block: residual input, its norm, the up projection(s) before and after the activation
    mlp = 2 * d + (3 if cfg.mlp_gated else 2) * f
    return attention + cross + mlp


@dataclasses.dataclass(frozen=True)
class TrainingMemory:
    """Bytes for one training step over the whole global batch (before sharding)."""

    weights: int  # trained and frozen
    gradients: int
    optimizer_state: int
    activations: int
    anchor: int = 0  # l2sp: the base weights the penalty pulls toward
    penalty_gradient: int = 0  # l2sp: the penalty's gradient, computed beside the loss's

    @property
    def state(self) -> int:
        """What sharding over fsdp divides: everything but the activations."""
        return (self.weights + self.gradients + self.optimizer_state + self.anchor
                + self.penalty_gradient)

    @property
    def total(self) -> int:
        return self.state + self.activations

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


def adapter_activation_bytes(cfg: ModelConfig, recipe: Recipe, input_length: int,
                             target_length: int, batch_size: int, remat: bool = False) -> int:
    """What LoRA's unmerged adapters keep for the backward pass, beyond full training's
    activations: per targeted projection and token `x @ A` (rank numbers, for B's gradient), and
    with dropout the dropped input (fan-in numbers) and its mask. Rematerialised: one layer's."""
    if recipe.kind != "lora":
        return 0
    lora, act = recipe.lora, DTYPE_BYTES[cfg.dtype]
    per_layer: dict[str, int] = {}  # stack -> bytes per example of one layer's adapters
    for tensor in recipes_lib.adapter_tensors(cfg, lora):
        if not tensor.path.endswith("/lora_a"):
            continue
        tokens = kernel_tokens(cfg, tensor.path, input_length, target_length)
        fan_in = tensor.matrix_shape[-2]
        numbers = lora.rank + (fan_in if lora.dropout else 0)
        per_token = numbers * act + (fan_in * MASK_BYTES if lora.dropout else 0)
        layers = math.prod(tensor.shape[:tensor.stacked])
        stack = tensor.path.split("/")[0]
        per_layer[stack] = per_layer.get(stack, 0) + tokens * per_token * (1 if remat else layers)
    kept = max(per_layer.values(), default=0) if remat else sum(per_layer.values())
    return batch_size * kept


def activation_bytes(cfg: ModelConfig, input_length: int, target_length: int, batch_size: int,
                     remat: bool = False) -> int:
    """Activations a training step keeps for its backward pass, for `batch_size` examples."""
    act = DTYPE_BYTES[cfg.dtype]
    if cfg.is_encoder_decoder:
        stacks = [(cfg.num_encoder_layers, input_length, input_length, 0),
                  (cfg.num_layers, target_length, target_length, input_length)]
        logit_tokens = target_length
    else:
        length = input_length + target_length
        stacks = [(cfg.num_layers, length, length, 0)]
        logit_tokens = length
    numbers = 0
    for layers, tokens, keys, cross_keys in stacks:
        if not tokens:
            continue
        per_block = tokens * _block_activations(cfg, keys, cross_keys)
        # Rematerialised: each block's input is kept, and one block is live at a time.
        numbers += layers * tokens * cfg.d_model + per_block if remat else layers * per_block
    logits = 2 * logit_tokens * cfg.vocab_size * FLOAT32_BYTES  # logits and their gradient
    return batch_size * (numbers * act + logits)


def training_memory(cfg: ModelConfig, input_length: int, target_length: int, batch_size: int,
                    optimizer: str = "adamw", remat: bool = False,
                    recipe: Recipe = FULL) -> TrainingMemory:
    """One step of a run of `recipe` (ValueError for `wise`, which trains nothing)."""
    if not recipe.trains:
        raise ValueError(f"recipe {recipe.name!r} ({recipe.kind}) trains nothing: price its "
                         f"evaluations (inference memory)")
    trained = sum(t.size for t in recipes_lib.trainable_tensors(cfg, recipe)) * FLOAT32_BYTES
    frozen_dtype = recipes_lib.frozen_dtype(cfg, recipe, "float32")
    frozen = sum(t.size for t in recipes_lib.frozen_tensors(cfg, recipe)) * DTYPE_BYTES[
        frozen_dtype]
    anchor = (sum(t.size for t in parameter_tensors(cfg)) * FLOAT32_BYTES
              if recipes_lib.has_anchor(recipe) else 0)
    return TrainingMemory(
        weights=trained + frozen,
        gradients=trained,
        optimizer_state=optimizer_state_bytes(cfg, optimizer, recipe),
        activations=(activation_bytes(cfg, input_length, target_length, batch_size, remat)
                     + adapter_activation_bytes(cfg, recipe, input_length, target_length,
                                                batch_size, remat)),
        anchor=anchor, penalty_gradient=anchor)


def kv_cache_bytes(cfg: ModelConfig, input_length: int, target_length: int,
                   batch_size: int) -> int:
    """Keys and values cached for decoding `batch_size` sequences to their full length.

    Decoder-only: self-attention over inputs + targets. Encoder-decoder: decoder self-attention
    over targets plus the cross-attention keys and values, computed once from the encoder output.
    """
    per_position = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * DTYPE_BYTES[cfg.dtype]
    # The same count for both architectures: prefix + targets, or cross (inputs) + self (targets).
    return batch_size * (input_length + target_length) * per_position


def inference_weight_bytes(cfg: ModelConfig) -> int:
    return sum(t.size for t in parameter_tensors(cfg)) * DTYPE_BYTES[cfg.param_dtype]


def min_chips(memory: TrainingMemory, hbm_bytes: float, batch_size: int,
              sharding: str = "fsdp") -> int | None:
    """The fewest chips whose memory holds the step, or None when no count does.

    fsdp shards weights, gradients and optimizer state over all chips; data parallelism replicates
    them. Both split the batch, down to one example per chip.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"unknown sharding {sharding!r}; known: {', '.join(SHARDINGS)}")
    usable = hbm_bytes * USABLE_HBM_FRACTION
    per_example = memory.activations / batch_size
    if per_example > usable or (sharding == "data" and memory.state + per_example > usable):
        return None
    if sharding == "data":  # each chip holds the state plus its share of the batch
        return min(batch_size, max(1, math.ceil(memory.activations / (usable - memory.state))))
    chips = max(1, math.ceil(memory.total / usable))
    if chips <= batch_size:
        return chips
    # Past one example per chip, only the sharded state still shrinks with more chips.
    return math.ceil(memory.state / (usable - per_example))


# -------------------------------------------------------------------------------------------------
# Per device, on the run's mesh: the check made before any compute is spent

from arch_compare.budget.device_memory import (  # noqa: E402  (after the whole-batch model)
    DeviceInferenceMemory, DeviceTrainingMemory, per_device_inference_memory,
    per_device_training_memory)
from arch_compare.mesh_config import MeshConfig  # noqa: E402

GIB = 2**30


class MemoryShortfall(ValueError):
    """A training step will not fit in one device's memory; the message gives the numbers and
    a mesh or microbatch count that would fit, if any does."""


def device_memory_bytes(device) -> int | None:
    """A device's memory in bytes (`memory_stats()['bytes_limit']`), or None where the runtime
    does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def usable_bytes(device_bytes: float) -> float:
    return device_bytes * USABLE_HBM_FRACTION


def _batch_splits(mesh: MeshConfig, batch_size: int, microbatches: int) -> bool:
    ways = mesh.data * mesh.fsdp
    return batch_size % ways == 0 and (batch_size // ways) % microbatches == 0


def training_fits(cfg: ModelConfig, mesh: MeshConfig, input_length: int, target_length: int,
                  batch_size: int, optimizer: str = "adamw", microbatches: int = 1,
                  device_bytes: int | None = None, platform: str = "gpu",
                  recipe: Recipe = FULL) -> bool:
    """True when the batch splits over `mesh` into `microbatches` and the per-device estimate
    fits in `USABLE_HBM_FRACTION` of `device_bytes` (None, unknown: only the split is checked).
    Suits `arch_compare.execution.resolve_mesh`'s `fits` callback."""
    if not _batch_splits(mesh, batch_size, microbatches):
        return False
    if device_bytes is None:
        return True
    memory = per_device_training_memory(cfg, mesh, input_length, target_length, batch_size,
                                        optimizer, microbatches, platform, recipe)
    return memory.total <= usable_bytes(device_bytes)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _mesh_words(mesh: MeshConfig) -> str:
    from arch_compare.execution import mesh_description  # execution imports the budget's users
    return mesh_description(mesh)


def fitting_alternatives(cfg: ModelConfig, mesh: MeshConfig, input_length: int,
                         target_length: int, batch_size: int, optimizer: str,
                         microbatches: int, device_bytes: int, limit: int = 3,
                         platform: str = "gpu", recipe: Recipe = FULL
                         ) -> list[tuple[MeshConfig, int, DeviceTrainingMemory]]:
    """Up to `limit` (mesh, microbatches, estimate) over the same number of devices that fit:
    first more microbatches on the same mesh, then other meshes (in `candidate_meshes` order,
    with the fewest microbatches each needs)."""
    from arch_compare.execution import candidate_meshes
    found = []
    meshes = [mesh] + [m for m in candidate_meshes(mesh.num_devices) if m != mesh]
    for candidate in meshes:
        if batch_size % (candidate.data * candidate.fsdp):
            continue
        per_device = batch_size // (candidate.data * candidate.fsdp)
        for micro in range(1, per_device + 1):
            if per_device % micro or (candidate, micro) == (mesh, microbatches):
                continue
            memory = per_device_training_memory(cfg, candidate, input_length, target_length,
                                                batch_size, optimizer, micro, platform, recipe)
            if memory.total <= usable_bytes(device_bytes):
                found.append((candidate, micro, memory))
                break  # the fewest microbatches this mesh needs
        if len(found) >= limit:
            break
    return found


def check_training_fits(cfg: ModelConfig, mesh: MeshConfig, input_length: int,
                        target_length: int, batch_size: int, optimizer: str = "adamw",
                        microbatches: int = 1, device_bytes: int | None = None,
                        platform: str = "gpu", recipe: Recipe = FULL) -> DeviceTrainingMemory:
    """The per-device estimate (of a run of `recipe`), or MemoryShortfall when it exceeds the usable share of
    `device_bytes` (None: unknown, as on CPU; nothing is refused). `platform`: see
    `device_memory.saved_number_bytes` (pass `jax.default_backend()` for the devices present)."""
    memory = per_device_training_memory(cfg, mesh, input_length, target_length, batch_size,
                                        optimizer, microbatches, platform, recipe)
    if device_bytes is None or memory.total <= usable_bytes(device_bytes):
        return memory
    parts = ", ".join(f"{name} {_gib(value)}" for name, value in memory.to_dict().items()
                      if name != "total")
    alternatives = fitting_alternatives(cfg, mesh, input_length, target_length, batch_size,
                                        optimizer, microbatches, device_bytes, platform=platform,
                                        recipe=recipe)
    if alternatives:
        advice = "; would fit: " + "; ".join(
            f"mesh {_mesh_words(m)} with {micro} microbatch{'es' if micro > 1 else ''} "
            f"({_gib(est.total)} per device)" for m, micro, est in alternatives)
    else:
        advice = (f"; no mesh over {mesh.num_devices} devices and no microbatch count fits: "
                  f"use more devices, a smaller batch or model, remat, bfloat16 or adafactor")
    raise MemoryShortfall(
        f"{cfg.family} training{'' if recipe.kind == 'full' else f' ({recipe.kind})'} needs {_gib(memory.total)} per device on mesh "
        f"{_mesh_words(mesh)} with {microbatches} microbatch{'es' if microbatches > 1 else ''} "
        f"(batch {batch_size}, lengths {input_length} + {target_length}, {optimizer}, "
        f"{cfg.dtype} compute, {cfg.param_dtype} params, remat {cfg.remat}), but "
        f"{_gib(usable_bytes(device_bytes))} is usable ({USABLE_HBM_FRACTION:.0%} of "
        f"{_gib(device_bytes)}); breakdown: {parts}{advice}")
