"""Memory ONE device holds during a training step (or an evaluation), given the mesh it runs on.

The whole-batch estimate in `memory.py` prices a run before its layout is chosen; this module
follows the layout the trainer really uses, so its numbers can be checked against XLA's own
`compiled.memory_analysis()` (benchmarks/memory_vs_xla.py) and used to refuse a run that will not
fit before any compute is spent (`memory.check_training_fits`).

Parameters are split exactly as `arch_compare.partitioning` splits them: its logical-axis rules are
applied to the model's parameter tree on an `AbstractMesh` of the mesh's sizes, so a dimension that
the mesh axes do not divide (GPT-2's 50257-token vocabulary on a 2-way `tensor` axis) stays whole.
The batch splits over data x fsdp, microbatches divide the activations again, and `tensor` splits
the head, MLP and vocabulary dimensions of the activations when it divides them. Under fsdp each
weight is gathered whole (over fsdp) for its matmul and its gradient is whole until reduce-scattered;
the estimate adds the two for the output projection and for one layer, at the moments XLA holds them.

Recipes (`recipe=`): only what trains has gradients and optimizer state. LoRA's adapters are split
as the kernel they adapt (`A` takes its input axes' split, `B` its output axes'), its frozen base
is held in `lora.base_dtype` (else `param_dtype`) and gathered whole under fsdp without a whole
gradient; its activations drop what only frozen weights' gradients would read and add what the
unmerged adapters keep (`device_activations._Kept`, `_adapter_activations`). L2-SP adds the anchor,
a copy of the weights in `param_dtype` split like them (the penalty is elementwise on the local
pieces: nothing is gathered), and the penalty's gradient, which XLA holds at the peak too.
Measured against XLA's analysis of the trainer's compiled LoRA and L2-SP steps for every family,
on one device, fsdp 4 and fsdp 2 x tensor 2 (tests/budget/test_recipes.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

from arch_compare.budget import recipes as recipes_lib
from arch_compare.budget.device_activations import (FLOAT32_BYTES, KEEP_ALL,
                                                    _adapter_activations, _Kept, _kernel_bytes,
                                                    _Split, _activations, _block_bytes,
                                                    _logits_bytes, _stacks, dtype_bytes,
                                                    saved_number_bytes, split)
from arch_compare.budget.parameters import parameter_tensors
from arch_compare.mesh_config import MESH_AXES, MeshConfig
from arch_compare.models.config import ModelConfig
from arch_compare.recipes import FULL, LoraConfig, Recipe

if TYPE_CHECKING:
    from jax.sharding import AbstractMesh

ADAFACTOR_MIN_DIM_TO_FACTOR = 128  # optax's default


@dataclasses.dataclass(frozen=True)
class ParameterShard:
    """One parameter: its global shape and the shape of the piece each device holds."""

    path: str
    axes: tuple[str | None, ...]
    shape: tuple[int, ...]
    shard_shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def shard_size(self) -> int:
        return math.prod(self.shard_shape)


def abstract_mesh(mesh: MeshConfig) -> AbstractMesh:
    from jax.sharding import AbstractMesh  # JAX only where the model's parameters are laid out
    return AbstractMesh(mesh.shape, MESH_AXES)


@functools.lru_cache(maxsize=32)
def _parameter_tree(cfg: ModelConfig):
    """(logical axes, abstract params) of the model: built once per architecture (~0.1-0.6 s)."""
    from arch_compare.models.model import build_model  # models import flax; budget loads lazily
    model = build_model(cfg.replace(dtype="float32", param_dtype="float32", remat="none"))
    return model.logical_axes(), model.abstract_params()


@functools.lru_cache(maxsize=256)
def parameter_shards(cfg: ModelConfig, mesh: MeshConfig) -> tuple[ParameterShard, ...]:
    """Every parameter with the piece of it one device holds on `mesh` (the trainer's specs)."""
    import jax  # as `_parameter_tree`: the per-device estimate needs JAX, the whole-batch one not

    from arch_compare import partitioning
    logical_axes, params = _parameter_tree(cfg)
    layout = abstract_mesh(mesh)
    specs = partitioning.param_partition_specs(logical_axes, params, layout)
    axes_leaves = jax.tree_util.tree_leaves_with_path(logical_axes,
                                                      is_leaf=lambda n: isinstance(n, tuple))
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda n: isinstance(n, jax.sharding.PartitionSpec))
    shape_leaves = jax.tree.leaves(params)
    shards = []
    for (path, axes), spec, leaf in zip(axes_leaves, spec_leaves, shape_leaves):
        shard = tuple(size // _ways(entry, layout) for entry, size in zip(spec, leaf.shape))
        shards.append(ParameterShard(jax.tree_util.keystr(path, simple=True, separator="/"),
                                     tuple(axes), tuple(leaf.shape), shard))
    return tuple(shards)


def adapter_shards(cfg: ModelConfig, mesh: MeshConfig,
                   lora: LoraConfig) -> tuple[ParameterShard, ...]:
    """LoRA's `A` and `B` for each targeted kernel, split as that kernel is on `mesh` (the rank
    axis, logical name None, whole)."""
    kernels = {tensor.path: tensor for tensor in parameter_tensors(cfg)}
    wanted = {recipes_lib.adapted_kernel_path(t) for t in recipes_lib.adapter_tensors(cfg, lora)}
    r, shards = lora.rank, []
    for kernel in parameter_shards(cfg, mesh):
        if kernel.path not in wanted:
            continue
        tensor = kernels[kernel.path]
        cut = tensor.stacked + tensor.fan_in  # layer and input axes | output axes
        prefix = kernel.path.rsplit("/", 1)[0]
        shards.append(ParameterShard(f"{prefix}/lora_a", (*kernel.axes[:cut], None),
                                     (*kernel.shape[:cut], r), (*kernel.shard_shape[:cut], r)))
        layers = tensor.stacked
        shards.append(ParameterShard(
            f"{prefix}/lora_b", (*kernel.axes[:layers], None, *kernel.axes[cut:]),
            (*kernel.shape[:layers], r, *kernel.shape[cut:]),
            (*kernel.shard_shape[:layers], r, *kernel.shard_shape[cut:])))
    return tuple(shards)


def lora_kept(cfg: ModelConfig, lora: LoraConfig) -> _Kept:
    """What a LoRA step keeps for weight gradients: the inputs of the adapted projections."""
    names = {recipes_lib.kernel_name(t.path) for t in recipes_lib.adapter_tensors(cfg, lora)}
    return _Kept(norm_scales=False, kernels=frozenset(names), head=False)


def _ways(entry, layout) -> int:
    """How many pieces a PartitionSpec entry cuts its dimension into."""
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(layout.shape[axis] for axis in axes)


# -------------------------------------------------------------------------------------------------
# Optimizer state per device


def _adamw_floats(shards: tuple[ParameterShard, ...]) -> int:
    return sum(2 * shard.shard_size for shard in shards)  # mu and nu, shaped like the params


def _adafactor_floats(shards: tuple[ParameterShard, ...]) -> int:
    # Factored statistics are one row and one column per layer matrix; they are a small fraction
    # of the state, so each is priced at its share of the parameter's split.
    from arch_compare.optim import MatrixView
    floats = 0
    for shard in shards:
        view = MatrixView.from_axes(shard.path, shard.axes)
        matrices = view.matrices_shape(shard.shape)
        fraction = shard.shard_size / shard.size
        if view.is_matrix and min(matrices[1:]) >= ADAFACTOR_MIN_DIM_TO_FACTOR:
            floats += math.ceil(matrices[0] * (matrices[1] + matrices[2]) * fraction)
        else:
            floats += shard.shard_size
    return floats


OPTIMIZER_FLOATS = {"adamw": _adamw_floats, "adafactor": _adafactor_floats}


# -------------------------------------------------------------------------------------------------
# Weights gathered whole under fsdp
#
# fsdp keeps a 1/fsdp slice of every weight, so each matmul first all-gathers its weight (over
# fsdp only: a tensor split stays cut), and the backward pass produces that weight's gradient whole
# before reduce-scattering it into the sharded gradient. XLA's buffers (benchmarks/memory_vs_xla.py)
# show them live at two moments: the output projection gathered, beside the logits in the loss's
# backward pass, and one layer's weights and gradients of a stack, beside the block being
# recomputed (the layer scan gathers inside each step, so never more than one layer at a time).
# With one microbatch the output projection's gradient is not whole beside the logits, since every
# projection runs over one merged token axis (`models.fast_paths.over_tokens`): with it counted,
# every such fsdp row of memory_vs_xla.py came out 8-22% above XLA's peak, by about that
# gradient's size. Microbatched, the step's scan still holds it whole (without it, 14-44% below).


@dataclasses.dataclass(frozen=True)
class _Gathered:
    output: int  # the vocabulary projection, gathered (microbatched: and its gradient, whole)
    layer: int  # the largest stack's one layer: gathered weights and their unsharded gradients


def _gathered(cfg: ModelConfig, mesh: MeshConfig, shards: tuple[ParameterShard, ...],
              trained: bool = True, microbatches: int = 1) -> _Gathered:
    """`trained` False (LoRA's frozen base): the gathered weights have no gradient."""
    if mesh.fsdp == 1:
        return _Gathered(0, 0)
    # the tensor split alone: what an all-gather over fsdp rebuilds
    unsharded = {s.path: s for s in parameter_shards(cfg, MeshConfig(tensor=mesh.tensor))}
    extra = {s.path: unsharded[s.path].shard_size for s in shards
             if unsharded[s.path].shard_size > s.shard_size}
    # Tied embeddings project with the embedding table; otherwise the output head's kernel
    # (as large as the embedding table): the largest vocabulary-sized weight either way.
    output = max((size for path, size in extra.items()
                  if "vocab" in unsharded[path].axes), default=0)
    stacks: dict[str, int] = {}  # "encoder"/"decoder" -> numbers of one layer's gathered weights
    for shard in shards:
        if shard.path in extra and "layers" in shard.axes:
            stack = shard.path.split("/blocks/")[0]
            layers = shard.shape[shard.axes.index("layers")]
            stacks[stack] = stacks.get(stack, 0) + extra[shard.path] // layers
    # In the compute dtype: Dense casts each kernel before its matmul, and XLA gathers the cast
    # copy (a bfloat16 step's gathered weights measured at 2 bytes a number, on CPU too). A
    # layer's weights come with their gradients where they train.
    per_number = dtype_bytes(cfg.dtype)
    with_gradient = 2 if trained else 1
    layer = max(stacks.values(), default=0) * with_gradient * per_number
    return _Gathered(output * (with_gradient if microbatches > 1 else 1) * per_number, layer)


# -------------------------------------------------------------------------------------------------
# The estimate


@dataclasses.dataclass(frozen=True)
class DeviceTrainingMemory:
    """Bytes one device holds at the peak of a training step.

    `logits` (the float32 logits, the softmax's saved exponentials, the logits' gradient) are
    live in the loss's backward pass together with the output projection gathered whole under
    fsdp (`gathered_output`, with its unsharded gradient when microbatched); they are freed
    before the blocks' backward pass, where a rematerialised block's recomputed activations
    (`rematerialised`) and its layer's gathered weights and unsharded gradients
    (`gathered_layer`) become live. The peak counts the larger of the two moments. With
    microbatches the step's scan carries the summed gradients (`accumulated_gradients`) beside
    each microbatch's own.
    """

    weights: int
    gradients: int
    optimizer_state: int
    accumulated_gradients: int  # microbatches > 1: the running sum, laid out like the gradients
    activations: int  # kept from the forward pass for the backward pass
    logits: int
    rematerialised: int
    gathered_output: int  # fsdp: the vocabulary projection, whole (microbatched: its gradient too)
    gathered_layer: int  # fsdp: one layer's weights and their gradients, whole
    anchor: int = 0  # l2sp: the base weights, split like the weights
    # l2sp: the penalty's gradient, like the gradients; it does not depend on the backward pass,
    # and XLA computes it beside (measured: one more weights-sized buffer at the peak)
    penalty_gradient: int = 0

    @property
    def state(self) -> int:
        return (self.weights + self.gradients + self.optimizer_state + self.anchor
                + self.penalty_gradient)

    @property
    def total(self) -> int:
        return (self.state + self.accumulated_gradients + self.activations
                + max(self.logits + self.gathered_output,
                      self.rematerialised + self.gathered_layer))

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


def _check_batch(mesh: MeshConfig, batch_size: int, microbatches: int) -> int:
    """Examples each device runs per microbatch; ValueError naming the sizes otherwise."""
    if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches <= 0:
        raise ValueError(f"microbatches must be a positive int, got {microbatches!r}")
    ways = mesh.data * mesh.fsdp
    if batch_size <= 0 or batch_size % ways:
        raise ValueError(f"batch size {batch_size} does not split over data {mesh.data} x fsdp "
                         f"{mesh.fsdp} = {ways} devices")
    per_device = batch_size // ways
    if per_device % microbatches:
        raise ValueError(f"the per-device batch of {per_device} (batch {batch_size} over "
                         f"{ways} devices) does not split into {microbatches} microbatches")
    return per_device // microbatches


def _cpu_upcast(cfg: ModelConfig, mesh: MeshConfig, kernel_dtype: str, platform: str) -> int:
    """XLA:CPU has no bfloat16 matmul: with kernels and compute both narrow it converts the
    kernels to float32, and for LoRA's frozen layer kernels it hoists the conversion out of the
    layer loop, every layer's at once and whole over fsdp (measured on t5.1.1, bfloat16 base and
    compute, remat block: 18.0 MiB more than the float32 base, every stacked kernel in float32).
    Accelerators multiply bfloat16 natively: nothing."""
    if platform != "cpu" or FLOAT32_BYTES in (dtype_bytes(kernel_dtype), dtype_bytes(cfg.dtype)):
        return 0
    whole = parameter_shards(cfg, MeshConfig(tensor=mesh.tensor))
    return _kernel_bytes(whole, cfg.replace(dtype="float32"), stacked=True)


def per_device_training_memory(cfg: ModelConfig, mesh: MeshConfig, input_length: int,
                               target_length: int, batch_size: int, optimizer: str = "adamw",
                               microbatches: int = 1, platform: str = "gpu",
                               recipe: Recipe = FULL) -> DeviceTrainingMemory:
    """Bytes one device of `mesh` holds at the peak of a training step of `batch_size` examples
    (the global batch) with `cfg`'s dtypes and remat policy, on `platform` ("gpu" and "tpu" alike;
    "cpu" differs for bfloat16, see `saved_number_bytes`), for a run of `recipe` (ValueError for
    `wise`, which trains nothing)."""
    if optimizer not in OPTIMIZER_FLOATS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_FLOATS)}")
    if not recipe.trains:
        raise ValueError(f"recipe {recipe.name!r} ({recipe.kind}) trains nothing: it has no "
                         f"training step (see per_device_inference_memory)")
    cut = _Split(_check_batch(mesh, batch_size, microbatches), mesh.tensor,
                 saved_number_bytes(cfg, platform))
    shards = parameter_shards(cfg, mesh)
    param_bytes = dtype_bytes(cfg.param_dtype)
    lora = recipe.lora if recipe.kind == "lora" else None
    kernel_dtype = recipes_lib.frozen_dtype(cfg, recipe, cfg.param_dtype)
    trained = adapter_shards(cfg, mesh, lora) if lora else shards
    trained_bytes = sum(shard.shard_size for shard in trained) * param_bytes
    weights = trained_bytes + (sum(shard.shard_size for shard in shards)
                               * dtype_bytes(kernel_dtype) if lora else 0)
    kept = lora_kept(cfg, lora) if lora else KEEP_ALL
    activations = _activations(cfg, cut, shards, input_length, target_length, kernel_dtype, kept)
    if lora:
        # the adapters' arrays are live at both peak moments, rematerialised or not
        extra = (_adapter_activations(cfg, lora, cut, input_length, target_length)
                 + _cpu_upcast(cfg, mesh, kernel_dtype, platform))
        activations = dataclasses.replace(activations, saved=activations.saved + extra)
    gathered = _gathered(cfg, mesh, shards, trained=lora is None, microbatches=microbatches)
    return DeviceTrainingMemory(
        weights=weights,
        gradients=trained_bytes,
        optimizer_state=OPTIMIZER_FLOATS[optimizer](trained) * param_bytes,
        accumulated_gradients=trained_bytes if microbatches > 1 else 0,
        anchor=trained_bytes if recipes_lib.has_anchor(recipe) else 0,
        penalty_gradient=trained_bytes if recipes_lib.has_anchor(recipe) else 0,
        activations=activations.saved,
        logits=_logits_bytes(cfg, cut, input_length, target_length, kept),
        rematerialised=activations.working,
        gathered_output=gathered.output,
        gathered_layer=gathered.layer)


@dataclasses.dataclass(frozen=True)
class DeviceInferenceMemory:
    """Bytes one device holds while decoding or scoring a batch."""

    weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


def per_device_inference_memory(cfg: ModelConfig, mesh: MeshConfig, input_length: int,
                                target_length: int, batch_size: int) -> DeviceInferenceMemory:
    """Weights in the param dtype, the KV cache for `batch_size` rows decoded to full length,
    and a rough activation term (one block's activations plus the float32 logits of a step)."""
    rows = _check_batch(mesh, batch_size, 1)
    cut = _Split(rows, mesh.tensor, dtype_bytes(cfg.dtype))
    shards = parameter_shards(cfg, mesh)
    weights = sum(shard.shard_size for shard in shards) * dtype_bytes(cfg.param_dtype)
    kv_heads = split(cfg.num_kv_heads, mesh.tensor)
    # Decoder-only: prefix + targets; encoder-decoder: cross (inputs) + self (targets) slots.
    kv_cache = (rows * (input_length + target_length) * 2 * cfg.num_layers * kv_heads
                * cfg.head_dim * dtype_bytes(cfg.dtype))
    stacks, _ = _stacks(cfg, input_length, target_length)
    block = max(_block_bytes(cfg, cut, q, cross) for _, q, cross in stacks if q)
    activations = rows * block + _logits_bytes(cfg, cut, input_length, target_length) // 2
    return DeviceInferenceMemory(weights, kv_cache, activations)
