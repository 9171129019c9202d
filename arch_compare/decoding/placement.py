"""Where decoding and scoring run: a device mesh, the parameters on it, the batch split over it.

Inference uses training's mesh and sharding table (`arch_compare.partitioning`): parameters are
split by their logical axes (`param_shardings`), batch rows over data x fsdp (`batch_sharding`),
so the chips that trained a model can evaluate it. Every host-side batch becomes a global array
with `jax.make_array_from_callback`, which works unchanged when several processes run the same
program in lockstep: each process holds the same full host batch and hands over only the rows of
its own devices. Results come back replicated, so every process can read all of them.

    mesh = inference_mesh(ExecutionConfig(mesh={"fsdp": 4, "tensor": 2}), model,
                          batch_size=8, lengths=(64, 32))
    params = place_params(model, params, mesh)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arch_compare import partitioning
from arch_compare.partitioning import global_array
from arch_compare.execution import ExecutionConfig, candidate_meshes, mesh_description, \
    resolve_mesh
from arch_compare.models.decode_cache import DecodeCache
from arch_compare.models.model import BaseModel, Params

log = logging.getLogger(__name__)

# Logical names of the decode cache's arrays, for sharding them like the batch they belong to.
KV_AXES = ("layers", "batch", "kv_heads", "length", "kv")  # [layers, b, g, s, e]
ROW_AXES = ("batch", None)  # start [b], encoder_mask [b, k]


def batch_ways(mesh: partitioning.AnyMesh) -> int:
    """How many ways batch rows are split (data x fsdp): batches are padded to a multiple."""
    spec = partitioning.batch_sharding(mesh).spec[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(mesh.shape[axis] for axis in axes)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds all of it: what compiled inference returns, so that every process
    can read the full results with `np.asarray`."""
    return NamedSharding(mesh, PartitionSpec())


def pad_rows(host: np.ndarray, rows: int) -> np.ndarray:
    """`host` [b, ...] with its last row repeated up to `rows` rows (the copies are dropped from
    the results)."""
    extra = rows - host.shape[0]
    if extra <= 0:
        return host
    return np.concatenate([host, np.repeat(host[-1:], extra, axis=0)], axis=0)


def padded_size(batch_size: int, mesh: Mesh) -> int:
    ways = batch_ways(mesh)
    return -(-batch_size // ways) * ways


def mesh_of(params: Params) -> Mesh | None:
    """The mesh parameters were placed on (None: host arrays, or arrays without a mesh)."""
    meshes = {leaf.sharding.mesh for leaf in jax.tree.leaves(params)
              if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding)}
    if len(meshes) > 1:
        raise ValueError(f"parameters are placed on {len(meshes)} different meshes; place them "
                         f"on one with decoding.placement.place_params")
    return next(iter(meshes), None)


def single_device_mesh() -> Mesh:
    """A 1-device mesh on this process's first device (one process only)."""
    return partitioning.make_mesh(partitioning.MeshConfig(), jax.local_devices()[:1])


def param_shardings(model: BaseModel, mesh: Mesh) -> Params:
    return partitioning.param_shardings(model.logical_axes(), model.abstract_params(), mesh)


def place_params(model: BaseModel, params: Params, mesh: Mesh) -> Params:
    """`params` split over `mesh` by the partitioning table. Host arrays (which every process
    holds in full) are cut per device; arrays already on devices are moved by `device_put`;
    arrays already placed so are returned as they are."""
    shardings = param_shardings(model, mesh)

    def place(leaf, sharding):
        if isinstance(leaf, jax.Array):
            if leaf.sharding == sharding:
                return leaf
            if leaf.is_fully_addressable and not sharding.is_fully_addressable:
                return global_array(np.asarray(leaf), sharding)
            return jax.device_put(leaf, sharding)
        return global_array(leaf, sharding)

    return jax.tree.map(place, params, shardings)


def shard_shapes(params: Params) -> Params:
    """Each parameter's shape on one device (the test of "really split"; host arrays: whole)."""
    return jax.tree.map(lambda leaf: tuple(leaf.addressable_shards[0].data.shape
                                           if isinstance(leaf, jax.Array) else leaf.shape),
                        params)


def constrain_cache(cache: DecodeCache, mesh: Mesh | None) -> DecodeCache:
    """The decode cache split along its batch rows (and KV heads over `tensor` where they
    divide), inside a traced search. XLA would otherwise be free to replicate the cache, whose
    keys/values are the largest arrays of long decodes."""
    if mesh is None:
        return cache

    def constrain(array, axes):
        spec = partitioning.fit_spec_to_shape(partitioning.logical_to_partition_spec(axes),
                                              array.shape, mesh)
        return jax.lax.with_sharding_constraint(array, NamedSharding(mesh, spec))

    # A per-layer cache (`DecodeCache.per_layer`) has no layers axis.
    layers = jax.tree.map(lambda x: constrain(x, KV_AXES[-x.ndim:]), cache.layers)
    mask = (None if cache.encoder_mask is None
            else constrain(cache.encoder_mask, ROW_AXES))
    return dataclasses.replace(cache, layers=layers, start=constrain(cache.start, ("batch",)),
                               encoder_mask=mask)


# --- Choosing the mesh ----------------------------------------------------------------------------

def _memory_fits(model: BaseModel, batch_size: int, lengths: tuple[int, int],
                 devices: Sequence[jax.Device]):
    """`fits(mesh)` from the budget module's per-device inference memory estimate against the
    devices' reported memory, or None where they report none (CPU): then only the batch split
    decides."""
    from arch_compare.budget import memory

    limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    if not limit:
        return None
    usable = limit * memory.USABLE_HBM_FRACTION

    def fits(mesh: partitioning.MeshConfig) -> bool:
        needed = memory.per_device_inference_memory(model.config, mesh, *lengths, batch_size)
        return needed.total <= usable

    return fits


def inference_mesh(execution: ExecutionConfig, model: BaseModel, *, batch_size: int,
                   lengths: tuple[int, int] = (0, 0),
                   devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh `execution` asks for, over `devices` (default: every device of every process).

    `'auto'` takes the first of `candidate_meshes` over all the devices whose data x fsdp
    divides `batch_size` and, where the devices report their memory, whose per-device inference
    memory (`budget.memory.per_device_inference_memory` for `lengths`: prompt tokens, generated
    tokens) fits. A configured
    mesh smaller than the devices present uses the first of them.
    """
    devices = list(jax.devices() if devices is None else devices)
    memory_fits = (_memory_fits(model, batch_size, lengths, devices) if execution.auto_mesh
                   else None)

    def fits(mesh: partitioning.MeshConfig) -> bool:
        if batch_size % (mesh.data * mesh.fsdp):
            return False
        return memory_fits is None or memory_fits(mesh)

    config = resolve_mesh(execution, len(devices), fits, lambda: (
        f"none of {', '.join(mesh_description(m) for m in candidate_meshes(len(devices)))} "
        f"splits a batch of {batch_size} over data x fsdp"
        + (" and fits the memory estimate" if memory_fits else "")))
    if config.num_devices > len(devices):
        raise ValueError(f"execution.mesh {mesh_description(config)} needs {config.num_devices} "
                         f"devices; {len(devices)} are present")
    if config.num_devices < len(devices):
        log.info("inference mesh %s uses %d of %d devices", mesh_description(config),
                 config.num_devices, len(devices))
    return partitioning.make_mesh(config, devices[:config.num_devices])
