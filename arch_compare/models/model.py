"""Model wrappers: the seam between the two architectures.

`DecoderOnlyModel` and `EncoderDecoderModel` own everything that differs between them: which seqio
features they read, how masks are built, and (in later layers) loss, scoring and decoding. Both
expose the same functional interface over plain parameter pytrees (nested dicts of arrays), so the
trainer, the checkpoint code and the converters never see Flax modules:

    model = build_model(config)
    params = model.init(jax.random.key(0))
    logits = model.logits(params, batch)  # [batch, length, vocab]

LoRA (`with_lora`): the same class with low-rank adapters beside the targeted kernels; the
adapters' helpers (split, init, merge) are in `arch_compare.models.lora`:

    adapted = model.with_lora(LoraConfig(rank=8, targets=("q", "v")))
    logits = adapted.logits(params, batch, dropout_rng=key)  # dropout on the adapters' inputs

Decoding (KV-cached, one code path for both architectures; `arch_compare.decoding` drives it):

    logits, cache = model.prefill(params, prompts, lengths, num_steps)  # [b, v]
    logits, cache = model.decode_step(params, cache, next_tokens)  # [b] -> [b, v]

Prompts for decoding are LEFT-padded `[b, p]` arrays with per-row `lengths`: the last real token of
every row sits in the last column, so every row's next token goes into the same cache slot and one
scalar cache index serves the whole batch. A decoder-only prompt fills cache slots [0, p) and each
row's positions count from its first real token; an encoder-decoder prompt is the encoder input (run
once; its cross-attention keys/values are projected once and kept in the cache), and the decoder
starts from `decoder_start_id` in slot 0. Padding is masked but still embedded, so it must be a
token id inside the vocabulary (an id outside it, such as some GPT-2 pad ids, embeds as NaN).
"""

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
from arch_compare.models.transformer import (AttentionInputs, BlockCache, DecoderOnlyNetwork,
                                             EncoderDecoderNetwork)
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
        shape = (cfg.num_layers, batch_size, num_slots, cfg.num_kv_heads, cfg.head_dim)
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


class DecoderOnlyModel(BaseModel):
    """GPT-2 / LLaMA: reads `decoder_input_tokens` (and, when packed, `decoder_segment_ids` and
    `decoder_positions`). Attention is causal, as in pre-training; inputs and targets are told apart
    by `decoder_loss_weights` only."""

    network_class = DecoderOnlyNetwork

    def sequence_lengths(self, feature_lengths: Mapping[str, int]) -> tuple[int, int]:
        # A prefix LM reads inputs and targets as one decoder sequence.
        return 0, feature_lengths["inputs"] + feature_lengths["targets"]

    def prompts_of(self, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        # The start token, the inputs and their EOS are what the converter marks as the prefix.
        return batch["decoder_input_tokens"], batch["decoder_causal_attention"].sum(axis=1)

    def max_prompt_tokens(self, max_new_tokens: int) -> int | None:
        if self.config.position != "learned":
            return None
        return self.config.max_length - max_new_tokens  # prompt and reply share the table

    def logits(self, params: Params, batch: Batch, *,
               dropout_rng: jax.Array | None = None) -> jax.Array:
        _require(batch, ("decoder_input_tokens",), type(self).__name__)
        tokens = batch["decoder_input_tokens"]  # [b, l]
        mask = _causal_mask(tokens.shape[1])
        if "decoder_segment_ids" in batch:
            segments = batch["decoder_segment_ids"]
            mask = mask & _segment_mask(segments, segments)
        return self.network(params)(tokens, _positions(batch, "decoder", tokens), mask,
                                    dropout_key=self._dropout_key(dropout_rng))

    def pooled_states(self, params: Params, batch: Batch) -> jax.Array:
        # The decoder's final-norm output over start token, inputs and their EOS; causal
        # attention keeps the targets after them from changing these positions.
        _require(batch, ("decoder_input_tokens", "decoder_causal_attention"), type(self).__name__)
        _require_unpacked(batch, type(self).__name__)
        tokens, lengths = self.prompts_of(batch)  # [b, l], [b]
        positions = _positions(batch, "decoder", tokens)
        network = self.network(params)
        x = network.token_embed(tokens)  # [b, l, d]
        if hasattr(network, "position_embed"):
            x = x + network.position_embed(positions)
        inputs = AttentionInputs(self_mask=_causal_mask(tokens.shape[1]), positions=positions)
        states, _ = network.decoder(x, inputs)  # [b, l, d]
        real = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]  # [b, l]
        return _masked_mean(states, real)

    def prefill(self, params: Params, prompts: jax.Array, lengths: jax.Array,
                num_steps: int) -> tuple[jax.Array, DecodeCache]:
        batch_size, width = prompts.shape
        num_slots = width + num_steps
        if self.config.position == "learned" and num_slots > self.config.max_length:
            raise ValueError(
                f"prompt width {width} + {num_steps} decode steps needs {num_slots} positions; "
                f"the learned position table (ModelConfig.max_length) has "
                f"{self.config.max_length}")
        cache = self.init_cache(batch_size, num_slots)
        cache = dataclasses.replace(cache, start=(width - lengths).astype(jnp.int32))
        # Left padding: every row's last token is in the last column.
        logits, cache = self.extend(params, cache, prompts, last_only=True)
        return logits[:, 0], cache

    def _extend_network(self, network, cache, tokens, positions, mask, layers, last_only):
        return network.extend(cache.layers, cache.index, tokens, positions, mask, layers,
                              last_only)


class EncoderDecoderModel(BaseModel):
    """T5 / UL2: `encoder_input_tokens` (0 is padding) feed the encoder, `decoder_input_tokens`
    (targets shifted right) the decoder."""

    network_class = EncoderDecoderNetwork

    def sequence_lengths(self, feature_lengths: Mapping[str, int]) -> tuple[int, int]:
        return feature_lengths["inputs"], feature_lengths["targets"]

    def prompts_of(self, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        tokens = batch["encoder_input_tokens"]  # the encoder input; 0 pads it
        return tokens, (tokens != self.config.pad_id).sum(axis=1)

    def logits(self, params: Params, batch: Batch, *,
               dropout_rng: jax.Array | None = None) -> jax.Array:
        _require(batch, ("encoder_input_tokens", "decoder_input_tokens"), type(self).__name__)
        inputs = batch["encoder_input_tokens"]  # [b, k]
        targets = batch["decoder_input_tokens"]  # [b, l]
        # Padding is masked on the key side; segment ids additionally separate packed examples.
        input_keys = (inputs != self.config.pad_id)[:, None, None, :]  # [b, 1, 1, k]
        encoder_mask = input_keys
        decoder_mask = _causal_mask(targets.shape[1])
        cross_mask = input_keys
        if "encoder_segment_ids" in batch:
            input_segments = batch["encoder_segment_ids"]
            target_segments = batch["decoder_segment_ids"]
            encoder_mask = encoder_mask & _segment_mask(input_segments, input_segments)
            decoder_mask = decoder_mask & _segment_mask(target_segments, target_segments)
            cross_mask = cross_mask & _segment_mask(target_segments, input_segments)
        network = self.network(params)
        key = self._dropout_key(dropout_rng)
        encoded = network.encode(inputs, _positions(batch, "encoder", inputs), encoder_mask,
                                 dropout_key=None if key is None else jax.random.fold_in(key, 0))
        return network.decode(encoded, cross_mask, targets,
                              _positions(batch, "decoder", targets), decoder_mask,
                              dropout_key=None if key is None else jax.random.fold_in(key, 1))

    def pooled_states(self, params: Params, batch: Batch) -> jax.Array:
        # The encoder's output (after its final norm) over the real input tokens.
        _require(batch, ("encoder_input_tokens",), type(self).__name__)
        _require_unpacked(batch, type(self).__name__)
        inputs = batch["encoder_input_tokens"]  # [b, k]
        real = inputs != self.config.pad_id  # [b, k]
        encoded = self.network(params).encode(inputs, _positions(batch, "encoder", inputs),
                                              real[:, None, None, :])  # [b, k, d]
        return _masked_mean(encoded, real)

    def encode(self, params: Params, inputs: jax.Array, lengths: jax.Array) -> jax.Array:
        """inputs: [b, k] left-padded, lengths: [b] -> encoder output [b, k, d]."""
        real, positions = _left_padded_layout(lengths, inputs.shape[1])
        return self.network(params).encode(inputs, positions, real[:, None, None, :])

    def prefill(self, params: Params, prompts: jax.Array, lengths: jax.Array,
                num_steps: int) -> tuple[jax.Array, DecodeCache]:
        """The encoder runs once on `prompts`; the decoder then reads `decoder_start_id`."""
        batch_size = prompts.shape[0]
        plain = _without_layers(params)
        network = self.network(plain)
        encoded = self.encode(plain, prompts, lengths)  # [b, k, d]
        real, _ = _left_padded_layout(lengths, prompts.shape[1])
        cache = self.init_cache(batch_size, 1 + num_steps)  # + 1: the start token's slot
        layers = dataclasses.replace(cache.layers,
                                     cross_attention=network.decoder.project_cross(encoded))
        cache = dataclasses.replace(cache, layers=layers, encoder_mask=real)
        start = jnp.full((batch_size,), self.config.decoder_start_id, jnp.int32)
        return self.decode_step(params, cache, start)

    def _extend_network(self, network, cache, tokens, positions, mask, layers, last_only):
        cross_mask = cache.encoder_mask[:, None, None, :]  # [b, 1, 1, k]
        return network.extend(cache.layers, cache.index, cross_mask, tokens, positions, mask,
                              layers, last_only)


MODEL_CLASSES: dict[str, type[BaseModel]] = {
    "decoder_only": DecoderOnlyModel,
    "encoder_decoder": EncoderDecoderModel,
}


def build_model(config: ModelConfig, lora: LoraConfig | None = None) -> BaseModel:
    return MODEL_CLASSES[config.arch](config, lora)
