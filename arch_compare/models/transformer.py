"""Decoder-only and encoder-decoder networks, both built from the same `Block` and `Stack`.

A block is pre-norm: self-attention, then (decoder of an encoder-decoder only) cross-attention, then
the MLP, each with a residual. A stack holds its blocks' parameters stacked on a leading `layers`
axis and runs them with `nnx.scan`, so XLA compiles one block however deep the model is.

The networks take token arrays and ready-made masks; the wrappers in `model.py` build those from
seqio feature dictionaries. For decoding, the decoder stack also runs incrementally over a
`BlockCache` (keys/values per layer, stacked on the same `layers` axis as the parameters): new
tokens are written into cache slots and attend to every slot the mask allows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from arch_compare.models.config import REMAT_CHOICES, ModelConfig
from arch_compare.partitioning import constrain
from arch_compare.models.layers import (Adapters, Attention, Dense, Embed, KVCache, Mlp, Norm,
                                        RelativePositionBias, fold)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """What every block of a stack attends with; broadcast unchanged across the layer scan."""

    self_mask: jax.Array  # [b, 1, l, l] bool
    self_bias: jax.Array | None = None  # [1, h, l, l] relative-position bias
    positions: jax.Array | None = None  # [b, l] token positions, for rotary
    encoded: jax.Array | None = None  # [b, k, d] encoder output, for cross-attention
    cross_mask: jax.Array | None = None  # [b, 1, l, k] bool
    cache_index: jax.Array | None = None  # [] int: cache slot of the first token (decoding only)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockCache:
    """What one block keeps between decoding steps; a stack's cache has a leading layers axis."""

    self_attention: KVCache  # [b, g, s, e]: s slots, filled as tokens arrive
    # [b, k, g, e]: the encoder output's keys/values, projected once per input (encoder-decoder).
    cross_attention: KVCache | None = None


# ModelConfig.remat -> what jax.checkpoint keeps of a block for the backward pass (None: no remat).
REMAT_POLICIES = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
assert tuple(REMAT_POLICIES) == REMAT_CHOICES


# The residual stream between blocks: split by examples like the batch (see partitioning.constrain).
RESIDUAL_AXES = ("batch", "length", "embed")


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, cross_attention: bool, rngs: nnx.Rngs,
                 adapters: Adapters | None = None):
        self.pre_self_attention_norm = Norm(cfg, rngs=rngs)
        self.self_attention = Attention(cfg, rotary=cfg.position == "rotary", rngs=rngs,
                                        adapters=adapters)
        if cross_attention:
            self.pre_cross_attention_norm = Norm(cfg, rngs=rngs)
            self.cross_attention = Attention(cfg, rotary=False, rngs=rngs, adapters=adapters)
        self.pre_mlp_norm = Norm(cfg, rngs=rngs)
        self.mlp = Mlp(cfg, rngs=rngs, adapters=adapters)

    def __call__(self, x: jax.Array, inputs: AttentionInputs, cache: BlockCache | None = None,
                 dropout_key: jax.Array | None = None) -> tuple[jax.Array, BlockCache | None]:
        """x: [b, l, d] -> ([b, l, d], cache). Without a cache, keys and values come from x
        (and the encoder output); with one, x's keys/values are appended at
        `inputs.cache_index` and the cross-attention keys/values are read from it.
        `dropout_key`: this layer's LoRA dropout key (training only)."""
        h = self.pre_self_attention_norm(x)
        if cache is None:
            attended = self.self_attention(h, h, mask=inputs.self_mask, bias=inputs.self_bias,
                                           query_positions=inputs.positions,
                                           key_positions=inputs.positions,
                                           dropout_key=fold(dropout_key, 0))
        else:
            attended, self_kv = self.self_attention.extend(
                h, cache.self_attention, inputs.cache_index, mask=inputs.self_mask,
                bias=inputs.self_bias, positions=inputs.positions)
            cache = dataclasses.replace(cache, self_attention=self_kv)
        x = x + attended
        if hasattr(self, "cross_attention"):
            h = self.pre_cross_attention_norm(x)
            cross_key = fold(dropout_key, 1)
            cross_kv = (self.cross_attention.project_kv(inputs.encoded, dropout_key=cross_key)
                        if cache is None else cache.cross_attention)
            x = x + self.cross_attention.attend(h, cross_kv, mask=inputs.cross_mask,
                                                dropout_key=cross_key)
        return x + self.mlp(self.pre_mlp_norm(x), fold(dropout_key, 2)), cache


class Stack(nnx.Module):
    """`num_layers` blocks with parameters stacked on a leading `layers` axis, then a final norm."""

    def __init__(self, cfg: ModelConfig, num_layers: int, *, cross_attention: bool,
                 rngs: nnx.Rngs, adapters: Adapters | None = None):
        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, cross_attention=cross_attention, rngs=rngs, adapters=adapters)

        self.blocks = make_blocks(rngs)
        self.num_layers = num_layers
        self.final_norm = Norm(cfg, rngs=rngs)
        # Unrolling compiles every layer separately (slower to compile) but lets XLA's cost
        # analysis see each one: it counts a loop body once whatever the trip count.
        self.unroll = True if not cfg.scan_layers else 1
        self.remat_policy = REMAT_POLICIES[cfg.remat]

    def __call__(self, x: jax.Array, inputs: AttentionInputs, cache: BlockCache | None = None,
                 dropout_key: jax.Array | None = None) -> tuple[jax.Array, BlockCache | None]:
        """x: [b, l, d] -> ([b, l, d], cache); the cache (if any) has a leading layers axis.
        `dropout_key` (LoRA dropout, training only) becomes one key per layer, scanned like the
        parameters, so every layer draws its own masks."""
        # [layers] keys; None (no dropout) adds nothing to the scan.
        layer_keys = None if dropout_key is None else jax.random.split(dropout_key,
                                                                       self.num_layers)

        @nnx.scan(in_axes=(nnx.Carry, 0, None, 0, 0), out_axes=(nnx.Carry, 0),
                  unroll=self.unroll, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run_block(x, block: Block, inputs: AttentionInputs, cache: BlockCache | None,
                      key: jax.Array | None):
            if self.remat_policy is None:
                x, cache = block(x, inputs, cache, key)
            else:  # keep what the policy saves; recompute the rest in the backward pass
                x, cache = nnx.remat(lambda b, h, i, c, k: b(h, i, c, k),
                                     policy=self.remat_policy)(block, x, inputs, cache, key)
            return constrain(x, RESIDUAL_AXES), cache

        x, cache = run_block(constrain(x, RESIDUAL_AXES), self.blocks, inputs, cache, layer_keys)
        return self.final_norm(x), cache

    def extend(self, x: jax.Array, inputs: AttentionInputs, caches: Sequence[BlockCache],
               layers: Sequence[Any]) -> tuple[jax.Array, tuple[BlockCache, ...]]:
        """Decoding: like `__call__` with a cache, but the blocks run one after another, each
        from its own parameter tree (`layers`, from `BaseModel.decoding_params`) and its own
        cache (`caches`, one per block: [b, g, s, e] arrays). In a decoding loop the layer
        scan's slices of stacked parameters and caches are copies made on every step (every
        weight and the whole cache copied per token); separate arrays are read where they lie
        and the cache is updated in place."""
        graphdef = nnx.split(self.blocks)[0]
        updated = []
        for block_params, cache in zip(layers, caches, strict=True):
            x, cache = nnx.merge(graphdef, block_params)(x, inputs, cache)
            updated.append(cache)
        return self.final_norm(x), tuple(updated)

    def project_cross(self, encoded: jax.Array) -> KVCache:
        """encoded: [b, k, d] -> every layer's cross-attention keys/values [layers, b, g, k, e]."""

        @nnx.vmap(in_axes=(0, None), out_axes=0,
                  transform_metadata={nnx.PARTITION_NAME: "layers"})
        def project(block: Block, encoded: jax.Array) -> KVCache:
            return block.cross_attention.project_kv(encoded)

        return project(self.blocks, encoded)


class OutputHead(nnx.Module):
    """Vocabulary logits: the tied input embedding (optionally T5 v1.0's d_model**-0.5 scaling
    first) or a separate `[d, v]` kernel."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.scale = cfg.d_model ** -0.5 if cfg.scale_decoder_outputs else None
        if not cfg.tie_embeddings:  # never adapted: LoRA targets the blocks' projections
            self.projection = Dense((cfg.d_model,), (cfg.vocab_size,), ("embed",), ("vocab",),
                                    cfg, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, token_embed: Embed) -> jax.Array:
        """x: [b, l, d] -> logits [b, l, v]."""
        if self.scale is not None:
            x = x * self.scale
        if hasattr(self, "projection"):
            return self.projection(x)
        return token_embed.attend(x)


class DecoderOnlyNetwork(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, adapters: Adapters | None = None):
        self.token_embed = Embed(cfg.vocab_size, "vocab", cfg, rngs=rngs)
        if cfg.position == "learned":
            self.position_embed = Embed(cfg.max_length, "position", cfg, rngs=rngs)
        self.decoder = Stack(cfg, cfg.num_layers, cross_attention=False, rngs=rngs,
                             adapters=adapters)
        self.output_head = OutputHead(cfg, rngs=rngs)

    def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """tokens, positions: [b, l]; mask: [b, 1, l, l] -> logits [b, l, v]."""
        x, _ = self.decoder(self._embed(tokens, positions),
                            AttentionInputs(self_mask=mask, positions=positions),
                            dropout_key=dropout_key)
        return self.output_head(x, self.token_embed)

    def extend(self, cache: Sequence[BlockCache], index: jax.Array, tokens: jax.Array,
               positions: jax.Array, mask: jax.Array, layers: Sequence[Any],
               last_only: bool = False) -> tuple[jax.Array, tuple[BlockCache, ...]]:
        """Decoding: `tokens` [b, l] go into cache slots [index, index + l); mask: [b, 1, l, s]
        over all s slots; cache, layers: one per block (`Stack.extend`) -> (logits [b, l, v],
        or [b, 1, v] of the last position with `last_only`; updated cache)."""
        inputs = AttentionInputs(self_mask=mask, positions=positions, cache_index=index)
        x, cache = self.decoder.extend(self._embed(tokens, positions), inputs, cache, layers)
        if last_only:  # a prompt: only its last position predicts a token
            x = x[:, -1:]
        return self.output_head(x, self.token_embed), cache

    def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        x = self.token_embed(tokens)  # [b, l, d]
        if hasattr(self, "position_embed"):
            x = x + self.position_embed(positions)
        return x


class EncoderDecoderNetwork(nnx.Module):
    """T5-style: a bidirectional encoder over inputs and a causal decoder over targets that
    cross-attends to the encoder output. The token embedding is shared by both stacks."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, adapters: Adapters | None = None):
        self.token_embed = Embed(cfg.vocab_size, "vocab", cfg, rngs=rngs)
        if cfg.position == "relative":
            self.encoder_relative_bias = RelativePositionBias(cfg, bidirectional=True, rngs=rngs)
            self.decoder_relative_bias = RelativePositionBias(cfg, bidirectional=False, rngs=rngs)
        self.encoder = Stack(cfg, cfg.num_encoder_layers, cross_attention=False, rngs=rngs,
                             adapters=adapters)
        self.decoder = Stack(cfg, cfg.num_layers, cross_attention=True, rngs=rngs,
                             adapters=adapters)
        self.output_head = OutputHead(cfg, rngs=rngs)

    def encode(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """tokens, positions: [b, k]; mask: [b, 1, k, k] -> encoded [b, k, d]."""
        steps = jnp.arange(tokens.shape[1])
        bias = self._relative_bias("encoder_relative_bias", steps, steps)
        encoded, _ = self.encoder(
            self.token_embed(tokens),
            AttentionInputs(self_mask=mask, self_bias=bias, positions=positions),
            dropout_key=dropout_key)
        return encoded

    def decode(self, encoded: jax.Array, cross_mask: jax.Array, tokens: jax.Array,
               positions: jax.Array, mask: jax.Array,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """encoded: [b, k, d]; cross_mask: [b, 1, l, k]; tokens, positions: [b, l];
        mask: [b, 1, l, l] -> logits [b, l, v]."""
        steps = jnp.arange(tokens.shape[1])
        bias = self._relative_bias("decoder_relative_bias", steps, steps)
        x, _ = self.decoder(self.token_embed(tokens),
                            AttentionInputs(self_mask=mask, self_bias=bias, positions=positions,
                                            encoded=encoded, cross_mask=cross_mask),
                            dropout_key=dropout_key)
        return self.output_head(x, self.token_embed)

    def extend(self, cache: Sequence[BlockCache], index: jax.Array, cross_mask: jax.Array,
               tokens: jax.Array, positions: jax.Array, mask: jax.Array,
               layers: Sequence[Any], last_only: bool = False
               ) -> tuple[jax.Array, tuple[BlockCache, ...]]:
        """Decoding: like `decode`, with the encoder output's keys/values read from the cache
        (see `Stack.project_cross`) and `tokens` [b, l] written into slots [index, index + l).
        cross_mask: [b, 1, 1 or l, k]; mask: [b, 1, l, s]; layers, last_only: as for the
        decoder-only `extend` -> (logits [b, l or 1, v], cache)."""
        # Relative bias depends on key-minus-query offsets only, so slot numbers serve as
        # positions: the decoder's slot 0 is its start token.
        query_slots = index + jnp.arange(tokens.shape[1])  # [l]
        key_slots = jnp.arange(cache[0].self_attention.key.shape[2])  # [s]
        bias = self._relative_bias("decoder_relative_bias", query_slots, key_slots)
        inputs = AttentionInputs(self_mask=mask, self_bias=bias, positions=positions,
                                 cross_mask=cross_mask, cache_index=index)
        x, cache = self.decoder.extend(self.token_embed(tokens), inputs, cache, layers)
        if last_only:
            x = x[:, -1:]
        return self.output_head(x, self.token_embed), cache

    def _relative_bias(self, name: str, query_positions: jax.Array,
                       key_positions: jax.Array) -> jax.Array | None:
        if not hasattr(self, name):
            return None
        return getattr(self, name)(query_positions, key_positions)  # [1, h, q, k]
