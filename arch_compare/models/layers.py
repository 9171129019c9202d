"""The one copy of every Transformer layer, shared by all families.

Every parameter is created by `_param`, which attaches its logical axis names (t5x vocabulary:
`vocab`, `embed`, `heads`, `kv_heads`, `kv` for the per-head dimension, `mlp`, `relpos_buckets`,
`position`; stacks add `layers`; LoRA adapters add `lora_rank`). The partitioning rules map those
names to mesh axes, so no layer knows about meshes.

LoRA: a `Dense` given an `Adapter` holds `lora_a` [*in, r] and `lora_b` [r, *out] beside its
kernel and adds `scale * ((dropout(x) A) B)` to its output, unmerged, so a frozen kernel never gets
a full-size gradient. A layer without one runs exactly the code it ran before adapters existed.

Shape letters in comments: b batch, l/q query length, k key length, d d_model, h query heads,
g kv heads, e head_dim, f d_ff, v vocab.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from arch_compare.models.config import ModelConfig
from arch_compare.models.fast_paths import (activate, activate_gated, attention_core,
                                            over_tokens, two_projections)
from arch_compare.recipes import LoraConfig

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]

ACTIVATION_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def _param(rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], axes: tuple[str, ...],
           dtype: jnp.dtype) -> nnx.Param:
    assert len(shape) == len(axes), (shape, axes)
    # eager_sharding=False: the logical names are metadata only; the trainer places the arrays.
    return nnx.Param(init(rngs.params(), shape, dtype), sharding_names=axes, eager_sharding=False)


def _fan_in_normal(fan_in: int, scale: float = 1.0) -> Initializer:
    std = scale / math.sqrt(fan_in)
    return lambda key, shape, dtype: std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def _fan_in_uniform(fan_in: int) -> Initializer:
    # PEFT's lora_A init (kaiming_uniform_ with a=sqrt(5)) is uniform on +-1/sqrt(fan_in).
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class Adapters:
    """The LoRA settings a network is built with: which projections get adapters and the dtype
    the adapters are held in (the run's `param_dtype`; the frozen weights may be narrower)."""

    lora: LoraConfig
    dtype: str

    def for_kernel(self, name: str) -> "Adapter | None":
        if not self.lora.targets_kernel(name):
            return None
        return Adapter(self.lora.rank, self.lora.scale, self.lora.dropout, self.dtype)


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One projection's adapter: rank, scale (alpha / rank), input dropout rate, dtype."""

    rank: int
    scale: float
    dropout: float
    dtype: str


def adapter_for(adapters: Adapters | None, name: str) -> Adapter | None:
    return None if adapters is None else adapters.for_kernel(name)


def fold(key: jax.Array | None, index: int) -> jax.Array | None:
    """An independent dropout key for the `index`-th consumer of `key` (None stays None)."""
    return None if key is None else jax.random.fold_in(key, index)


class Dense(nnx.Module):
    """A linear map that contracts the trailing `in_shape` axes of its input into `out_shape`.

    Multi-axis shapes keep heads explicit (`[d] -> [h, e]`) so head axes can be sharded by name.
    With an `adapter`, also LoRA's `lora_a` [*in, r] (uniform +-1/sqrt(fan_in), as PEFT) and
    `lora_b` [r, *out] (zeros: an adapted model starts equal to its base).
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 in_axes: tuple[str, ...], out_axes: tuple[str, ...], cfg: ModelConfig, *,
                 rngs: nnx.Rngs, use_bias: bool | None = None, init_scale: float = 1.0,
                 adapter: Adapter | None = None):
        self.num_contracted = len(in_shape)
        self.dtype = cfg.compute_dtype
        fan_in = math.prod(in_shape)
        self.kernel = _param(rngs, _fan_in_normal(fan_in, init_scale), in_shape + out_shape,
                             in_axes + out_axes, cfg.weight_dtype)
        use_bias = cfg.use_bias if use_bias is None else use_bias
        self.bias = (_param(rngs, nnx.initializers.zeros, out_shape, out_axes, cfg.weight_dtype)
                     if use_bias else None)
        self.adapter = adapter
        if adapter is not None:
            dtype, rank = jnp.dtype(adapter.dtype), adapter.rank
            self.lora_a = _param(rngs, _fan_in_uniform(fan_in), in_shape + (rank,),
                                 in_axes + ("lora_rank",), dtype)
            self.lora_b = _param(rngs, nnx.initializers.zeros, (rank,) + out_shape,
                                 ("lora_rank",) + out_axes, dtype)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        y = over_tokens(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                        self.num_contracted)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return self.add_adapter(y, x, dropout_key)

    def add_adapter(self, y: jax.Array, x: jax.Array, dropout_key: jax.Array | None
                    ) -> jax.Array:
        """y + scale * ((dropout(x) A) B): y [..., *out], x [..., *in]; y itself without an
        adapter. Dropout (inverted, rate `adapter.dropout`) only with a key: training."""
        if self.adapter is None:
            return y
        x = x.astype(self.dtype)
        rate = self.adapter.dropout
        if dropout_key is not None and rate > 0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - rate, x.shape)
            x = jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
        low = over_tokens(x, self.lora_a[...].astype(self.dtype), self.num_contracted)  # [..., r]
        delta = over_tokens(low, self.lora_b[...].astype(self.dtype), 1)  # [..., *out]
        return y + (self.adapter.scale * delta).astype(y.dtype)


class Norm(nnx.Module):
    """LayerNorm (GPT-2) or RMSNorm (LLaMA, T5), computed in float32 like the references."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.kind = cfg.norm
        self.eps = cfg.norm_eps
        self.dtype = cfg.compute_dtype
        self.scale = _param(rngs, nnx.initializers.ones, (cfg.d_model,), ("embed",),
                            cfg.weight_dtype)
        self.bias = (_param(rngs, nnx.initializers.zeros, (cfg.d_model,), ("embed",),
                            cfg.weight_dtype) if cfg.norm == "layernorm" else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - x.mean(axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class Embed(nnx.Module):
    """A lookup table `[num_embeddings, d]`; `attend` reuses it as a tied output layer."""

    def __init__(self, num_embeddings: int, axis_name: str, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = cfg.compute_dtype
        init = nnx.initializers.normal(cfg.embedding_init_std)
        self.embedding = _param(rngs, init, (num_embeddings, cfg.d_model), (axis_name, "embed"),
                                cfg.weight_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)  # [b, l, d]

    def attend(self, x: jax.Array) -> jax.Array:
        """x: [..., d] -> logits [..., v]."""
        return over_tokens(x, self.embedding[...].astype(self.dtype).T, 1)


class Mlp(nnx.Module):
    """Plain (`act(x W_i) W_o`) or gated (`act(x W_i0) * (x W_i1) W_o`, SwiGLU / GeGLU) MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, adapters: Adapters | None = None):
        self.activation = ACTIVATION_FUNCTIONS[cfg.mlp_activation]
        up = lambda name: Dense((cfg.d_model,), (cfg.d_ff,), ("embed",), ("mlp",), cfg,
                                rngs=rngs, adapter=adapter_for(adapters, name))
        if cfg.mlp_gated:
            self.wi_0, self.wi_1 = up("wi_0"), up("wi_1")  # wi_0 goes through the activation
        else:
            self.wi = up("wi")
        self.wo = Dense((cfg.d_ff,), (cfg.d_model,), ("mlp",), ("embed",), cfg, rngs=rngs,
                        adapter=adapter_for(adapters, "wo"))

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """x: [b, l, d] -> [b, l, d]; `dropout_key` (training with LoRA dropout) gives each
        projection's adapter its own key."""
        if hasattr(self, "wi"):
            hidden = activate(self.activation, self.wi(x, fold(dropout_key, 0)))  # [b, l, f]
        else:
            dtype = self.wi_0.dtype
            gate, up = two_projections(x.astype(dtype), self.wi_0.kernel[...].astype(dtype),
                                       self.wi_1.kernel[...].astype(dtype))  # [b, l, f] each
            if self.wi_0.bias is not None:
                gate = gate + self.wi_0.bias[...].astype(dtype)
                up = up + self.wi_1.bias[...].astype(dtype)
            # Adapters (if any) add their low-rank terms to each half; without, no-ops.
            gate = self.wi_0.add_adapter(gate, x, fold(dropout_key, 1))
            up = self.wi_1.add_adapter(up, x, fold(dropout_key, 2))
            hidden = activate_gated(self.activation, gate, up)  # [b, l, f]
        return self.wo(hidden, fold(dropout_key, 3))


def apply_rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding in the half-split layout that HF LLaMA checkpoints use.

    x: [b, l, n, e]; positions: [b, l]. The two halves of the head dimension form the pairs.
    """
    half = x.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [e/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, e/2]
    cos = jnp.cos(angles)[:, :, None, :]  # [b, l, 1, e/2]
    sin = jnp.sin(angles)[:, :, None, :]
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
    """T5's bucketing of key-minus-query offsets: exact buckets for small offsets, then
    logarithmically wider ones up to `max_distance`; a causal stack only sees the past."""
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0) * num_buckets  # keys after the query
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)
    num_exact = num_buckets // 2
    log_ratio = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / num_exact)
                 / math.log(max_distance / num_exact))
    far_bucket = num_exact + (log_ratio * (num_buckets - num_exact)).astype(distance.dtype)
    far_bucket = jnp.minimum(far_bucket, num_buckets - 1)
    return bucket + jnp.where(distance < num_exact, distance, far_bucket)


class RelativePositionBias(nnx.Module):
    """T5's learned per-head bias over bucketed offsets; one per stack, shared by its layers."""

    def __init__(self, cfg: ModelConfig, *, bidirectional: bool, rngs: nnx.Rngs):
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_buckets
        self.max_distance = cfg.relative_max_distance
        self.dtype = cfg.compute_dtype
        self.embedding = _param(rngs, nnx.initializers.normal(cfg.d_model ** -0.5),
                                (cfg.relative_buckets, cfg.num_heads), ("relpos_buckets", "heads"),
                                cfg.weight_dtype)

    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """query_positions: [q], key_positions: [k] -> bias [1, h, q, k]."""
        buckets = relative_position_bucket(
            key_positions[None, :] - query_positions[:, None], bidirectional=self.bidirectional,
            num_buckets=self.num_buckets, max_distance=self.max_distance)  # [q, k]
        bias = jnp.take(self.embedding[...], buckets, axis=0)  # [q, k, h]
        return jnp.transpose(bias, (2, 0, 1))[None].astype(self.dtype)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                          bias: jax.Array | None, mask: jax.Array | None,
                          scale: float) -> jax.Array:
    """softmax(scale * q k^T + bias, masked) v with grouped KV heads, as two batched matmuls.

    query: [b, q, h, e]; key, value: [b, g, k, e] (heads first, as `KVCache` holds them); bias:
    [1 or b, h, q, k]; mask: [b, 1, q or 1, k] bool -> [b, q, h, e]. The numbers of
    `jax.nn.dot_product_attention`'s XLA path (scores and softmax in float32, masked scores at
    -0.7 * float32 max, probabilities in the value dtype), written as einsums over (b, g) blocks
    whose rows are the r = h / g query heads sharing a KV head times the q queries: XLA:CPU runs
    those, and their gradients, faster than the vmapped dot_general the library builds, and with
    no size-1 group axis left over (ungrouped heads), whose gradient sums it ran as slow reductions.
    """
    b, q, h, e = query.shape
    g, k = key.shape[1], key.shape[2]
    r = h // g
    rows = query.reshape(b, q, g, r, e).transpose(0, 2, 3, 1, 4).reshape(b, g, r * q, e)
    if bias is not None:
        bias = bias.reshape(bias.shape[0], g, r * q, k).astype(jnp.float32)
    if mask is not None and r > 1:  # the same mask for each of a KV head's query heads
        mask = jnp.broadcast_to(mask[:, :, None], (mask.shape[0], 1, r, q, k)).reshape(
            mask.shape[0], 1, r * q, k)
    out = attention_core(rows, key, value, bias, mask, scale)  # [b, g, r * q, e]
    return out.reshape(b, g, r, q, e).transpose(0, 3, 1, 2, 4).reshape(b, q, h, e)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """The keys and values one attention layer attends to, already projected (and rotated).

    Self-attention fills a fixed number of slots as decoding proceeds; cross-attention holds the
    encoder's keys/values, projected once per input. A scanned stack adds a leading layers axis.
    Heads come before slots: the attention matmuls batch over (b, g), so this layout is read
    where it lies; slots first, XLA:CPU transposed each layer's whole cache on every decode step.
    """

    key: jax.Array  # [b, g, s, e]
    value: jax.Array  # [b, g, s, e]


class Attention(nnx.Module):
    """Multi-head attention with grouped KV heads (`num_kv_heads` <= `num_heads`).

    Used for self-attention (keys from the same sequence) and cross-attention (keys from the
    encoder). Rotary embeddings, when configured, rotate queries and keys of self-attention only.
    `project_kv` and `attend` are the two halves of `__call__`; decoding calls them separately so
    that keys/values computed once are kept in a `KVCache`.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, rotary: bool,
                 adapters: Adapters | None = None):
        d, h, g, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.rotary = rotary
        self.rope_theta = cfg.rope_theta
        self.scale = e ** -0.5 if cfg.scale_attention else 1.0
        # Without score scaling (T5) the 1/sqrt(e) moves into the query initialisation.
        query_init_scale = 1.0 if cfg.scale_attention else e ** -0.5
        dense = lambda name, *shapes, **kwargs: Dense(*shapes, cfg, rngs=rngs, **kwargs,
                                                      adapter=adapter_for(adapters, name))
        self.q = dense("q", (d,), (h, e), ("embed",), ("heads", "kv"),
                       init_scale=query_init_scale)
        self.k = dense("k", (d,), (g, e), ("embed",), ("kv_heads", "kv"))
        self.v = dense("v", (d,), (g, e), ("embed",), ("kv_heads", "kv"))
        self.o = dense("o", (h, e), (d,), ("heads", "kv"), ("embed",))

    def __call__(self, x: jax.Array, context: jax.Array, *, mask: jax.Array | None,
                 bias: jax.Array | None = None, query_positions: jax.Array | None = None,
                 key_positions: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """x: [b, q, d] queries; context: [b, k, d] keys/values; mask: [b, 1, q, k] bool;
        bias: [1 or b, h, q, k]; positions: [b, q] and [b, k] (rotary only); dropout_key:
        LoRA dropout (training), split between the four projections."""
        return self.attend(x, self.project_kv(context, key_positions, dropout_key), mask=mask,
                           bias=bias, query_positions=query_positions, dropout_key=dropout_key)

    def project_kv(self, context: jax.Array, positions: jax.Array | None = None,
                   dropout_key: jax.Array | None = None) -> KVCache:
        """context: [b, k, d]; positions: [b, k] (rotary only) -> keys/values [b, g, k, e]."""
        key = self.k(context, fold(dropout_key, 1))  # [b, k, g, e]
        if self.rotary:
            key = apply_rotary(key, positions, self.rope_theta)
        value = self.v(context, fold(dropout_key, 2))  # [b, k, g, e]
        return KVCache(key=jnp.swapaxes(key, 1, 2), value=jnp.swapaxes(value, 1, 2))

    def attend(self, x: jax.Array, kv: KVCache, *, mask: jax.Array | None,
               bias: jax.Array | None = None, query_positions: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """x: [b, q, d] queries over kv's [b, g, k, e] -> [b, q, d]."""
        query = self.q(x, fold(dropout_key, 0))  # [b, q, h, e]
        if self.rotary:
            query = apply_rotary(query, query_positions, self.rope_theta)
        out = dot_product_attention(query, kv.key, kv.value, bias=bias, mask=mask,
                                    scale=self.scale)  # [b, q, h, e]
        return self.o(out, fold(dropout_key, 3))  # [b, q, d]

    def extend(self, x: jax.Array, cache: KVCache, index: jax.Array, *, mask: jax.Array,
               bias: jax.Array | None = None,
               positions: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Cached self-attention: write x's keys/values into slots [index, index + q) of the
        cache, then attend over every slot (the mask says which are visible).

        x: [b, q, d]; cache: [b, g, s, e]; index: [] int; mask: [b, 1, q, s];
        bias: [1, h, q, s]; positions: [b, q] -> ([b, q, d], updated cache).
        """
        new = self.project_kv(x, positions)  # [b, g, q, e]
        write = lambda slots, rows: jax.lax.dynamic_update_slice_in_dim(
            slots, rows.astype(slots.dtype), index, axis=2)
        cache = KVCache(key=write(cache.key, new.key), value=write(cache.value, new.value))
        return self.attend(x, cache, mask=mask, bias=bias, query_positions=positions), cache
