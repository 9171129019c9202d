"""The architecture-independent half of the model wrappers: `BaseModel` (shapes,
initialisation, parameter metadata, LoRA, the decoding driver both architectures share) and the
mask and position helpers both wrappers use. `model.py` holds the two architectures; read its
docstring for the functional interface."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from arch_compare.models.config import ModelConfig
from arch_compare.models.decode_cache import DecodeCache
from arch_compare.models.layers import Adapters, KVCache
from arch_compare.models.transformer import BlockCache
from arch_compare.recipes import LoraConfig

Params = dict[str, Any]
Batch = Mapping[str, jax.Array]
# The key `decoding_params` adds: the decoder's blocks, one parameter tree per layer.
DECODER_LAYERS = "decoder_layers"


def _causal_mask(length: int) -> jax.Array:
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]  # [1, 1, l, l]


def _segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """[b, q], [b, k] -> [b, 1, q, k]: attend only within the same packed example."""
    return (query_segments[:, :, None] == key_segments[:, None, :])[:, None]


def _positions(batch: Batch, prefix: str, tokens: jax.Array) -> jax.Array:
    positions = batch.get(f"{prefix}_positions")
    if positions is None:  # unpacked: every row starts at position 0
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return positions


def _left_padded_layout(lengths: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """lengths [b] of left-padded rows of `width` -> (real-token mask [b, w], positions [b, w]).

    Positions count from each row's first real token; padding gets position 0 (a valid table
    index: learned-position lookups out of range would give NaN, even where masked)."""
    columns = jnp.arange(width)[None, :]  # [1, w]
    first = (width - lengths)[:, None]  # [b, 1]
    return columns >= first, jnp.maximum(columns - first, 0)


def _without_layers(params: Params) -> Params:
    """Plain parameters from `BaseModel.decoding_params`'s (the Flax network knows no split)."""
    return {name: value for name, value in params.items() if name != DECODER_LAYERS}


def _masked_mean(states: jax.Array, real: jax.Array) -> jax.Array:
    """states [b, l, d], real [b, l] bool -> the mean over each row's real positions [b, d]
    (float32; a row with none gives zeros)."""
    weights = real.astype(jnp.float32)[..., None]  # [b, l, 1]
    total = jnp.sum(states.astype(jnp.float32) * weights, axis=1)  # [b, d]
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def _require_unpacked(batch: Batch, model_name: str) -> None:
    packed = [name for name in batch if name.endswith("_segment_ids")]
    if packed:
        raise ValueError(f"{model_name}.pooled_states reads unpacked batches (one example per "
                         f"row); got packed features {', '.join(sorted(packed))}")


def _require(batch: Batch, names: tuple[str, ...], model_name: str) -> None:
    missing = [name for name in names if name not in batch]
    if missing:
        raise KeyError(f"{model_name} needs batch features {', '.join(missing)}; "
                       f"got {', '.join(sorted(batch)) or 'none'}")


class BaseModel:
    """Shapes, initialisation and parameter metadata common to both architectures."""

    network_class: type[nnx.Module]

    def __init__(self, config: ModelConfig, lora: LoraConfig | None = None):
        self.config = config
        self.lora = lora  # LoRA adapters on the targeted projections (None: a plain model)
        # eval_shape: building the graph allocates nothing, so 70B configs are cheap to describe.
        abstract = nnx.eval_shape(lambda: self._build_network(nnx.Rngs(0)))
        self._graphdef, self._abstract_state = nnx.split(abstract)

    def _build_network(self, rngs: nnx.Rngs) -> nnx.Module:
        if self.lora is None:
            return self.network_class(self.config, rngs=rngs)
        # Adapters in the run's param_dtype; the frozen weights in lora.base_dtype when given.
        adapters = Adapters(self.lora, self.config.param_dtype)
        base = self.config.replace(param_dtype=self.lora.base_dtype or self.config.param_dtype)
        return self.network_class(base, rngs=rngs, adapters=adapters)

    def with_lora(self, lora: LoraConfig) -> "BaseModel":
        """The same model with LoRA adapters (`lora.targets_kernel` says where): parameters
        `lora_a` [*in, r] and `lora_b` [r, *out] beside each targeted kernel, adapters in the
        config's `param_dtype`, the other weights in `lora.base_dtype` (None: `param_dtype`)."""
        if not isinstance(lora, LoraConfig):
            raise TypeError(f"with_lora takes a LoraConfig, got {type(lora).__name__}")
        if self.lora is not None:
            raise ValueError(f"{self!r} already has LoRA adapters ({self.lora}); adapters on "
                             "adapters are not supported: merge first (models.lora.merge)")
        return type(self)(self.config, lora)

    def without_lora(self) -> "BaseModel":
        """The plain model (what `models.lora.merge` returns parameters for)."""
        return self if self.lora is None else type(self)(self.config)

    def __repr__(self) -> str:
        lora = "" if self.lora is None else f", lora rank {self.lora.rank}"
        return (f"{type(self).__name__}({self.config.family}, "
                f"params={self.param_count():,}{lora})")

    def abstract_params(self) -> Params:
        """Parameter tree of `jax.ShapeDtypeStruct`s."""
        return self._abstract_state.to_pure_dict()

    def logical_axes(self) -> Params:
        """Parameter tree of logical axis-name tuples, e.g. ('layers', 'embed', 'heads', 'kv')."""
        specs = nnx.get_partition_spec(self._abstract_state).to_pure_dict()
        return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))

    def param_count(self) -> int:
        """Every parameter, adapters included (`models.lora.adapter_count`: adapters only)."""
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(self.abstract_params()))

    def init(self, rng: jax.Array, shardings: Any = None) -> Params:
        """Random parameters, created inside `jit` so large models are built once, on device.

        `shardings` (a tree of `NamedSharding`s like `abstract_params()`, e.g. from
        `partitioning.param_shardings`) makes each device create only its own shards: no device
        ever holds the whole model. None leaves the placement to JAX (one device)."""

        def make(rng):
            return nnx.state(self._build_network(nnx.Rngs(params=rng))).to_pure_dict()

        return jax.jit(make, out_shardings=shardings)(rng)

    def network(self, params: Params) -> nnx.Module:
        """The Flax module bound to `params` (for code that needs the layers themselves)."""
        return nnx.merge(self._graphdef, params)

    def logits(self, params: Params, batch: Batch, *,
               dropout_rng: jax.Array | None = None) -> jax.Array:
        """[b, l, v] logits of a converted batch. `dropout_rng` (training): LoRA dropout on
        every adapter's input, masks independent per layer and projection; ignored without
        adapters or with `lora.dropout` 0, so evaluation passes none."""
        raise NotImplementedError

    def _dropout_key(self, dropout_rng: jax.Array | None) -> jax.Array | None:
        if dropout_rng is None or self.lora is None or self.lora.dropout == 0:
            return None
        return dropout_rng

    def pooled_states(self, params: Params, batch: Batch) -> jax.Array:
        """One vector per prompt [b, d_model]: the network's final-norm hidden states of the
        prompt's tokens (what `prompts_of` calls the prompt), averaged over its real tokens, in
        float32. What prompts are compared by (active selection's k-center greedy). Unpacked
        batches from `feature_converter`."""
        raise NotImplementedError

    # What code above `models/` asks instead of branching on the architecture.

    def feature_converter(self, vocabulary, pack: bool = False):
        """The seqio feature converter that turns task examples into this model's batches."""
        from arch_compare.data.converters import feature_converter_for  # data imports models
        return feature_converter_for(self.config, vocabulary, pack=pack)

    def sequence_lengths(self, feature_lengths: Mapping[str, int]) -> tuple[int, int]:
        """(encoder tokens, decoder tokens) one example of `feature_lengths` runs through the
        network: what a step's FLOPs and activations are counted over."""
        raise NotImplementedError

    def prompts_of(self, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        """The prompt each converted example asks the model to continue, as this model's
        `generate` reads it: tokens [b, p] (real tokens first) and lengths [b]."""
        raise NotImplementedError

    def max_prompt_tokens(self, max_new_tokens: int) -> int | None:
        """The longest prompt that leaves room for `max_new_tokens` (None: no position limit)."""
        return None

    # Decoding. Subclasses say how a prompt becomes a cache (`prefill`) and which network call
    # runs cached tokens (`_extend_network`); masks, positions and slots are shared here.

    def init_cache(self, batch_size: int, num_slots: int) -> DecodeCache:
        """An empty decoder cache with `num_slots` self-attention slots per row."""
        cfg = self.config
        shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, num_slots, cfg.head_dim)
        empty = KVCache(key=jnp.zeros(shape, cfg.compute_dtype),
                        value=jnp.zeros(shape, cfg.compute_dtype))
        return DecodeCache(BlockCache(self_attention=empty), index=jnp.zeros((), jnp.int32),
                           start=jnp.zeros((batch_size,), jnp.int32))

    def prefill(self, params: Params, prompts: jax.Array, lengths: jax.Array,
                num_steps: int) -> tuple[jax.Array, DecodeCache]:
        """prompts: [b, p] left-padded, lengths: [b] -> (next-token logits [b, v], a cache with
        room for `num_steps` more `decode_step` calls)."""
        raise NotImplementedError

    def decoding_params(self, params: Params) -> Params:
        """`params` plus the decoder's blocks split into one tree per layer (`DECODER_LAYERS`):
        what `prefill` and `decode_step` read. A decoding loop calls this once before it starts;
        given plain parameters, each step splits them itself, copying every weight."""
        if DECODER_LAYERS in params:
            return params
        blocks = params["decoder"]["blocks"]
        layers = tuple(jax.tree.map(lambda a, i=i: a[i], blocks)
                       for i in range(self.config.num_layers))
        return {**params, DECODER_LAYERS: layers}

    def decode_step(self, params: Params, cache: DecodeCache,
                    tokens: jax.Array) -> tuple[jax.Array, DecodeCache]:
        """tokens: [b], one per row -> (next-token logits [b, v], cache one slot further).
        `params` plain or from `decoding_params`."""
        logits, cache = self.extend(params, cache, tokens[:, None])
        return logits[:, 0], cache

    def extend(self, params: Params, cache: DecodeCache, tokens: jax.Array,
               last_only: bool = False) -> tuple[jax.Array, DecodeCache]:
        """tokens: [b, l] into slots [index, index + l) -> (logits [b, l, v], or [b, 1, v] of
        the last position with `last_only`; cache)."""
        slots = cache.index + jnp.arange(tokens.shape[1])  # [l]
        positions = jnp.maximum(slots[None, :] - cache.start[:, None], 0)  # [b, l]
        key_slots = jnp.arange(cache.num_slots)[None, None, :]  # [1, 1, s]
        # Causal over slots, and blind to each row's left padding. A padding query sees no key
        # at all; its output is finite garbage that no real token attends to.
        mask = (key_slots <= slots[None, :, None]) & (key_slots >= cache.start[:, None, None])
        params = self.decoding_params(params)
        network = self.network(_without_layers(params))
        given = cache
        cache = cache.per_layer()
        logits, layers = self._extend_network(network, cache, tokens, positions,
                                              mask[:, None],  # mask: [b, 1, l, s]
                                              params[DECODER_LAYERS], last_only)
        index = cache.index + tokens.shape[1]
        cache = dataclasses.replace(cache, layers=layers, index=index)
        return logits, (cache if isinstance(given.layers, tuple) else cache.stacked())

    def _extend_network(self, network: nnx.Module, cache: DecodeCache, tokens: jax.Array,
                        positions: jax.Array, mask: jax.Array, layers: tuple[Params, ...],
                        last_only: bool) -> tuple[jax.Array, BlockCache]:
        raise NotImplementedError
