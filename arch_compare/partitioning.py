"""Sharding: a (data, fsdp, tensor) device mesh and ONE table of logical-axis rules.

Every parameter carries logical axis names (`model.logical_axes()`, e.g. `("layers", "embed",
"heads", "kv")`); `LOGICAL_AXIS_RULES` maps each name to mesh axes, and the functions below turn
names plus shapes into `PartitionSpec`s and `NamedSharding`s. No layer knows about meshes and no
other module holds a second table, so changing how a model is split is a one-line change here.

The three mesh axes:

- `data`: plain data parallelism; parameters are replicated along it.
- `fsdp`: fully sharded data parallelism (ZeRO-3): the batch is split along it too, and every weight
  is split on its `embed` dimension, so XLA gathers each weight just before it is used.
- `tensor`: Megatron-style tensor parallelism over heads, MLP hidden units and the vocabulary.

Three rules decide a spec, applied in this order:

1. The table: each logical name maps to one mesh axis, a tuple of mesh axes, or None (unsharded).
2. A mesh axis splits at most one dimension of an array (JAX rejects a spec that names it twice).
   Dimensions are read left to right; when a dimension's mesh axes include one that an earlier
   dimension already took, that whole later dimension stays unsharded. Example: an activation
   `("batch", "length", "embed")` gets `P(("data", "fsdp"), None, None)`: batch took fsdp first.
3. Shapes: a dimension whose size is not a multiple of the product of its mesh axes' sizes is
   replicated instead (it would otherwise fail to compile). Such a dimension does NOT hand its mesh
   axes on to a later dimension, so the spec of a given array name never depends on rule order in
   surprising ways. Example: llama2-70b's 8 KV heads on a 16-way `tensor` axis stay replicated.

Run on CPU with several fake devices by setting `XLA_FLAGS=--xla_force_host_platform_device_count=8`
before JAX initialises.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from arch_compare.mesh_config import MESH_AXES, MeshConfig  # noqa: F401  (defined without JAX)

MeshAxes = str | tuple[str, ...] | None
AnyMesh = Mesh | AbstractMesh  # anything with `.shape` {axis name: size}

# Why each name goes where it goes (t5x's `standard_logical_axis_rules` with 2-D parameter
# partitioning is the model: batch on data, embed on the data-like axis, heads/mlp/vocab on model).
LOGICAL_AXIS_RULES: dict[str, MeshAxes] = {
    # Activations. fsdp devices also read different examples; only `tensor` devices share a batch.
    "batch": ("data", "fsdp"),
    "length": None,  # no sequence parallelism
    # Parameters.
    "embed": "fsdp",  # d_model appears in every weight, so this one rule spreads all of them
    "heads": "tensor",  # heads are independent: q/k/v split by column, o by row, one all-reduce
    "kv_heads": "tensor",  # GQA: fewer KV heads than devices falls back to replicated (rule 3)
    "mlp": "tensor",  # wi split by column, wo by row: one all-reduce per block
    # The largest single matrices of small models (GPT-2 small: 30% of its weights) and the
    # vocabulary-sized logits. GPT-2's 50257 is odd, so it stays replicated unless padded.
    "vocab": "tensor",
    "kv": None,  # splitting the head dimension would split each dot product across devices
    "layers": None,  # the layer scan takes one slice per step; pipelining is a different schedule
    "relpos_buckets": None,  # a [32, heads] table; its heads dimension is still split
    "position": None,  # learned [max_length, d] table; its embed dimension is still split
    "lora_rank": None,  # LoRA's rank (a few units) is never split; A and B follow their kernel
}


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes ("data", "fsdp", "tensor") over `devices` (default: all of `jax.devices()`).

    Axes are `Auto`: XLA propagates shardings through the program from the inputs' shardings, as
    in t5x, rather than JAX's explicit sharding-in-types mode (`jax.make_mesh`'s default).
    """
    source = "the given devices" if devices is not None else "jax.devices()"
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != config.num_devices:
        raise ValueError(
            f"{config} needs data x fsdp x tensor = {config.num_devices} devices, but {source} "
            f"has {len(devices)}; on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{config.num_devices} before JAX starts")
    return jax.make_mesh(config.shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def _mesh_axes_of(name: str | None, rules: Mapping[str, MeshAxes]) -> tuple[str, ...]:
    """The mesh axes one logical name maps to, as a tuple (empty: unsharded)."""
    if name is None:
        return ()
    if name not in rules:
        raise KeyError(f"logical axis {name!r} has no partitioning rule; known names: "
                       f"{', '.join(sorted(rules))}")
    target = rules[name]
    mesh_axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    unknown = [axis for axis in mesh_axes if axis not in MESH_AXES]
    if unknown:
        raise ValueError(f"partitioning rule {name!r} -> {target!r} names unknown mesh axis "
                         f"{', '.join(unknown)}; mesh axes are {', '.join(MESH_AXES)}")
    return mesh_axes


def _spec_entry(mesh_axes: tuple[str, ...]) -> MeshAxes:
    # PartitionSpec's spelling: None, a single axis name, or a tuple for several.
    return None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes


def logical_to_partition_spec(axes: Sequence[str | None],
                              rules: Mapping[str, MeshAxes] = LOGICAL_AXIS_RULES
                              ) -> PartitionSpec:
    """Logical names -> PartitionSpec by the table (rules 1 and 2 of the module docstring)."""
    used: set[str] = set()
    entries = []
    for name in axes:
        mesh_axes = _mesh_axes_of(name, rules)
        if used.intersection(mesh_axes):
            mesh_axes = ()  # an earlier dimension already splits over one of these mesh axes
        used.update(mesh_axes)
        entries.append(_spec_entry(mesh_axes))
    return PartitionSpec(*entries)


def fit_spec_to_shape(spec: PartitionSpec, shape: tuple[int, ...], mesh: AnyMesh
                      ) -> PartitionSpec:
    """Replicate every dimension of `spec` that its mesh axes do not divide evenly (rule 3)."""
    if len(spec) != len(shape):
        raise ValueError(f"spec {spec} has {len(spec)} entries for shape {shape}")
    entries = []
    for entry, size in zip(spec, shape):
        mesh_axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        ways = math.prod(mesh.shape[axis] for axis in mesh_axes)
        entries.append(entry if size % ways == 0 else None)
    return PartitionSpec(*entries)


def _is_axes_leaf(node: Any) -> bool:
    return isinstance(node, tuple)


def param_partition_specs(logical_axes: Any, abstract_params: Any, mesh: AnyMesh,
                          rules: Mapping[str, MeshAxes] = LOGICAL_AXIS_RULES) -> Any:
    """Tree of PartitionSpecs for a parameter tree.

    logical_axes: tree of axis-name tuples (`model.logical_axes()`); abstract_params: the same tree
    of anything with a `.shape` (`model.abstract_params()` or real arrays); mesh: a `Mesh` or an
    `AbstractMesh` (only the axis sizes are read, so specs can be planned without the devices).
    """
    axes_leaves, axes_def = jax.tree_util.tree_flatten_with_path(logical_axes,
                                                                 is_leaf=_is_axes_leaf)
    shape_leaves, shape_def = jax.tree.flatten(abstract_params)
    if axes_def != shape_def:
        raise ValueError(f"logical axes and parameters have different trees:\n  axes: {axes_def}"
                         f"\n  params: {shape_def}")
    specs = []
    for (path, names), leaf in zip(axes_leaves, shape_leaves):
        where = jax.tree_util.keystr(path)
        if len(names) != len(leaf.shape):
            raise ValueError(f"parameter {where}: logical axes {names} do not match its shape "
                             f"{tuple(leaf.shape)}")
        try:
            spec = logical_to_partition_spec(names, rules)
        except (KeyError, ValueError) as error:
            raise type(error)(f"parameter {where}: {error.args[0]}") from None
        specs.append(fit_spec_to_shape(spec, tuple(leaf.shape), mesh))
    return axes_def.unflatten(specs)


def param_shardings(logical_axes: Any, abstract_params: Any, mesh: AnyMesh,
                    rules: Mapping[str, MeshAxes] = LOGICAL_AXIS_RULES) -> Any:
    """Tree of NamedShardings for a parameter tree (see `param_partition_specs`)."""
    specs = param_partition_specs(logical_axes, abstract_params, mesh, rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                        is_leaf=lambda node: isinstance(node, PartitionSpec))


def shard_params(params: Any, shardings: Any) -> Any:
    """Place `params` on the devices as `shardings` (from `param_shardings`) says."""
    params_def = jax.tree.structure(params)
    shardings_def = jax.tree.structure(shardings)
    if params_def != shardings_def:
        raise ValueError(f"params and shardings have different trees:\n  params: {params_def}"
                         f"\n  shardings: {shardings_def}")
    return jax.device_put(params, shardings)


def constrain(x: jax.Array, logical_axes: Sequence[str | None],
              rules: Mapping[str, MeshAxes] = LOGICAL_AXIS_RULES) -> jax.Array:
    """Pin an activation's layout by its logical axis names, under the mesh in context.

    Without it XLA may follow the weights' fsdp split instead of the batch's and keep every
    example's activations on every device. Code that places arrays traces under
    `jax.set_mesh(mesh)`; with no mesh in context (one device) `x` is returned unchanged, so the
    layers stay mesh-agnostic.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    spec = fit_spec_to_shape(logical_to_partition_spec(logical_axes, rules), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)


class on_mesh:
    """A jitted program called (or lowered) with `mesh` in context, so that the activation
    layouts `constrain` pins while tracing are laid out on this mesh."""

    def __init__(self, mesh: Mesh, function: Callable):
        self.mesh, self.function = mesh, function

    def __call__(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.function(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.function.lower(*args, **kwargs)

    def __getattr__(self, name):  # the jitted function's own attributes (its cache, say)
        return getattr(self.function, name)


def global_array(host: Any, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full: each device gets its
    block, read from this process's copy (so the same call works on one host or several)."""
    import numpy as np  # host arrays only here

    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def batch_sharding(mesh: AnyMesh, rules: Mapping[str, MeshAxes] = LOGICAL_AXIS_RULES
                   ) -> NamedSharding:
    """Sharding of every batch feature ([batch, ...]): rows split over the `batch` rule's mesh
    axes (data x fsdp), the remaining dimensions replicated."""
    return NamedSharding(mesh, logical_to_partition_spec(("batch",), rules))


def global_batch_size_ok(batch_size: int, mesh: AnyMesh,
                         rules: Mapping[str, MeshAxes] = LOGICAL_AXIS_RULES) -> bool:
    """True if `batch_size` rows split evenly over the batch's mesh axes; raises ValueError
    naming the sizes and the nearest valid batch sizes otherwise."""
    mesh_axes = _mesh_axes_of("batch", rules)
    ways = math.prod(mesh.shape[axis] for axis in mesh_axes)
    if batch_size > 0 and batch_size % ways == 0:
        return True
    sizes = " x ".join(f"{axis}={mesh.shape[axis]}" for axis in mesh_axes)
    lower, upper = (batch_size // ways) * ways, (batch_size // ways + 1) * ways
    nearest = f"{lower} or {upper}" if lower > 0 else f"{upper}"
    raise ValueError(f"global batch size {batch_size} must be a positive multiple of {ways} "
                     f"(the batch is split over mesh {sizes}); try {nearest}")
