"""LoRA adapters as parameter trees: tell them apart, initialise, merge, count.

A model from `BaseModel.with_lora(lora)` holds, beside each targeted `kernel` [*in, *out],
`lora_a` [*in, r] and `lora_b` [r, *out] (a scanned stack adds its leading `layers` axis to all
three); its forward pass adds `(alpha / r) * ((dropout(x) A) B)` to the projection. Training
differentiates only the adapters:

    frozen, adapters = lora.split(params)
    grads = jax.grad(lambda a: loss(model.logits(lora.join(frozen, a), batch)))(adapters)

and evaluation or serving merges them into the plain model's weights (`merge`). The PEFT export
is `arch_compare.models.hf.peft`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from arch_compare.models.model import BaseModel, Params

ADAPTER_NAMES = ("lora_a", "lora_b")


def _key_name(key: Any) -> Hashable:
    # jax tree paths hold DictKey / GetAttrKey entries; nested-dict paths hold the names.
    for attribute in ("key", "name"):
        if hasattr(key, attribute):
            return getattr(key, attribute)
    return key


def is_adapter(path: Sequence[Any]) -> bool:
    """Whether the leaf at `path` (a tuple of keys, from a nested dict or a jax tree path) is a
    LoRA adapter matrix."""
    return bool(path) and _key_name(path[-1]) in ADAPTER_NAMES


def split_tree(tree: Mapping, trainable: Callable[[tuple], bool], prefix: tuple = ()
               ) -> tuple[dict, dict]:
    """A nested-dict tree -> `(frozen, trainable)` nested dicts holding the leaves for which
    `trainable(path)` is False and True; anything that is not a Mapping is a leaf (arrays,
    shardings, logical-axes tuples). Empty sub-dicts are left out of either side."""
    frozen, trained = {}, {}
    for key, node in tree.items():
        path = (*prefix, key)
        if isinstance(node, Mapping):
            f, t = split_tree(node, trainable, path)
            if f:
                frozen[key] = f
            if t:
                trained[key] = t
        elif trainable(path):
            trained[key] = node
        else:
            frozen[key] = node
    return frozen, trained


def join_trees(frozen: Mapping, trained: Mapping) -> dict:
    """The inverse of `split_tree`: one nested dict with the leaves of both."""
    joined = dict(frozen)
    for key, node in trained.items():
        if key in joined:
            if not (isinstance(node, Mapping) and isinstance(joined[key], Mapping)):
                raise ValueError(f"join: {key!r} is in both halves")
            joined[key] = join_trees(joined[key], node)
        else:
            joined[key] = node
    return joined


def split(params: Params) -> tuple[Params, Params]:
    """(frozen, adapters): two nested dicts whose leaves partition those of `params`."""
    return split_tree(params, is_adapter)


def join(frozen: Params, adapters: Params) -> Params:
    """`split`'s inverse: one tree with the leaves of both halves."""
    misplaced = [path for path in traverse_util.flatten_dict(adapters) if not is_adapter(path)]
    if misplaced:
        raise ValueError(f"join: the adapters half holds a non-adapter leaf "
                         f"{'/'.join(map(str, misplaced[0]))}")
    return join_trees(frozen, adapters)


def _require_lora(model: BaseModel, what: str) -> None:
    if getattr(model, "lora", None) is None:
        raise ValueError(f"{what} needs a model with LoRA adapters (BaseModel.with_lora); "
                         f"got {model!r}")


def init_adapters(model: BaseModel, rng: jax.Array, shardings: Any = None) -> Params:
    """Fresh adapters of `model` (from `with_lora`): A uniform on +-1/sqrt(fan_in) (PEFT's
    kaiming-uniform), B zeros, so the adapted model starts equal to its base. Created inside
    `jit`; `shardings` (a tree like the adapters half of `split`, e.g. from
    `partitioning.param_shardings` over `split(model.logical_axes())[1]`) makes each device
    create only its own shards. The base weights the network would also draw are dead code
    there, so XLA never computes them."""
    _require_lora(model, "init_adapters")

    def make(rng):
        state = nnx.state(model._build_network(nnx.Rngs(params=rng))).to_pure_dict()
        return split(state)[1]

    return jax.jit(make, out_shardings=shardings)(rng)


def _stacked_layers(axes: tuple[str, ...]) -> int:
    return sum(1 for name in axes if name == "layers")


def low_rank_delta(lora_a: jax.Array, lora_b: jax.Array, leading: int) -> jax.Array:
    """A @ B in float32: lora_a [*lead, *in, r], lora_b [*lead, r, *out] -> [*lead, *in, *out],
    with `leading` leading (layer) axes shared by both."""
    lead = lora_a.shape[:leading]
    rank = lora_a.shape[-1]
    ins, outs = lora_a.shape[leading:-1], lora_b.shape[leading + 1:]
    a = lora_a.astype(jnp.float32).reshape(*lead, math.prod(ins), rank)  # [*lead, in, r]
    b = lora_b.astype(jnp.float32).reshape(*lead, rank, math.prod(outs))  # [*lead, r, out]
    return jnp.matmul(a, b).reshape(*lead, *ins, *outs)


def merge(model: BaseModel, params: Params) -> Params:
    """Parameters of the plain model (`model.without_lora()`): every targeted kernel becomes
    W + (alpha / r) * A @ B, computed in float32 and cast to the kernel's dtype; the adapters go.
    The tree equals `model.without_lora().abstract_params()` in structure."""
    _require_lora(model, "merge")
    flat = traverse_util.flatten_dict(params)
    axes = traverse_util.flatten_dict(model.logical_axes(),
                                      is_leaf=lambda _, node: isinstance(node, tuple))
    expected = traverse_util.flatten_dict(model.abstract_params()).keys()
    if flat.keys() != expected:
        differ = sorted(set(flat) ^ set(expected))
        raise ValueError(f"merge: params do not match {model!r} (differs at "
                         f"{', '.join('/'.join(map(str, p)) for p in differ[:5])})")
    scale = model.lora.scale
    merged = {}
    for path, leaf in flat.items():
        if is_adapter(path):
            continue
        if path[-1] == "kernel" and path[:-1] + ("lora_a",) in flat:
            a_path = path[:-1] + ("lora_a",)
            delta = low_rank_delta(flat[a_path], flat[path[:-1] + ("lora_b",)],
                                   _stacked_layers(axes[a_path]))
            leaf = (leaf.astype(jnp.float32) + scale * delta).astype(leaf.dtype)
        merged[path] = leaf
    return traverse_util.unflatten_dict(merged)


def adapter_count(model: BaseModel) -> int:
    """Trainable parameters of a LoRA model: the elements of every adapter matrix."""
    _require_lora(model, "adapter_count")
    adapters = split(model.abstract_params())[1]
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(adapters))
