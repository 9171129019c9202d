"""Decoder-only and encoder-decoder networks, both built from the same `Block` and `Stack`.

A block is pre-norm: self-attention, then (decoder of an encoder-decoder only) cross-attention, then
the MLP, each with a residual. A stack holds its blocks' parameters stacked on a leading `layers`
axis and runs them with `nnx.scan`, so XLA compiles one block however deep the model is.

The networks take token arrays and ready-made masks; the wrappers in `model.py` build those from
seqio feature dictionaries.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from arch_compare.models.config import ModelConfig
from arch_compare.models.layers import Attention, Dense, Embed, Mlp, Norm, RelativePositionBias


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """What every block of a stack attends with; broadcast unchanged across the layer scan."""

    self_mask: jax.Array  # [b, 1, l, l] bool
    self_bias: jax.Array | None = None  # [1, h, l, l] relative-position bias
    positions: jax.Array | None = None  # [b, l] token positions, for rotary
    encoded: jax.Array | None = None  # [b, k, d] encoder output, for cross-attention
    cross_mask: jax.Array | None = None  # [b, 1, l, k] bool


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, cross_attention: bool, rngs: nnx.Rngs):
        self.pre_self_attention_norm = Norm(cfg, rngs=rngs)
        self.self_attention = Attention(cfg, rotary=cfg.position == "rotary", rngs=rngs)
        if cross_attention:
            self.pre_cross_attention_norm = Norm(cfg, rngs=rngs)
            self.cross_attention = Attention(cfg, rotary=False, rngs=rngs)
        self.pre_mlp_norm = Norm(cfg, rngs=rngs)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, inputs: AttentionInputs) -> jax.Array:
        """x: [b, l, d] -> [b, l, d]."""
        h = self.pre_self_attention_norm(x)
        x = x + self.self_attention(h, h, mask=inputs.self_mask, bias=inputs.self_bias,
                                    query_positions=inputs.positions,
                                    key_positions=inputs.positions)
        if hasattr(self, "cross_attention"):
            h = self.pre_cross_attention_norm(x)
            x = x + self.cross_attention(h, inputs.encoded, mask=inputs.cross_mask)
        return x + self.mlp(self.pre_mlp_norm(x))


class Stack(nnx.Module):
    """`num_layers` blocks with parameters stacked on a leading `layers` axis, then a final norm."""

    def __init__(self, cfg: ModelConfig, num_layers: int, *, cross_attention: bool,
                 rngs: nnx.Rngs):
        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, cross_attention=cross_attention, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = Norm(cfg, rngs=rngs)
        # Unrolling compiles every layer separately (slower to compile) but lets XLA's cost
        # analysis see each one: it counts a loop body once whatever the trip count.
        self.unroll = True if not cfg.scan_layers else 1
        self.remat = cfg.remat_layers

    def __call__(self, x: jax.Array, inputs: AttentionInputs) -> jax.Array:
        @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry, unroll=self.unroll,
                  transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run_block(x, block: Block, inputs: AttentionInputs):
            if self.remat:  # keep only the block input; recompute the rest in the backward pass
                return nnx.remat(lambda b, h, i: b(h, i))(block, x, inputs)
            return block(x, inputs)

        return self.final_norm(run_block(x, self.blocks, inputs))


class OutputHead(nnx.Module):
    """Vocabulary logits: the tied input embedding (optionally T5 v1.0's d_model**-0.5 scaling
    first) or a separate `[d, v]` kernel."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.scale = cfg.d_model ** -0.5 if cfg.scale_decoder_outputs else None
        if not cfg.tie_embeddings:
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
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.token_embed = Embed(cfg.vocab_size, "vocab", cfg, rngs=rngs)
        if cfg.position == "learned":
            self.position_embed = Embed(cfg.max_length, "position", cfg, rngs=rngs)
        self.decoder = Stack(cfg, cfg.num_layers, cross_attention=False, rngs=rngs)
        self.output_head = OutputHead(cfg, rngs=rngs)

    def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        """tokens, positions: [b, l]; mask: [b, 1, l, l] -> logits [b, l, v]."""
        x = self.token_embed(tokens)
        if hasattr(self, "position_embed"):
            x = x + self.position_embed(positions)
        x = self.decoder(x, AttentionInputs(self_mask=mask, positions=positions))
        return self.output_head(x, self.token_embed)


class EncoderDecoderNetwork(nnx.Module):
    """T5-style: a bidirectional encoder over inputs and a causal decoder over targets that
    cross-attends to the encoder output. The token embedding is shared by both stacks."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.token_embed = Embed(cfg.vocab_size, "vocab", cfg, rngs=rngs)
        if cfg.position == "relative":
            self.encoder_relative_bias = RelativePositionBias(cfg, bidirectional=True, rngs=rngs)
            self.decoder_relative_bias = RelativePositionBias(cfg, bidirectional=False, rngs=rngs)
        self.encoder = Stack(cfg, cfg.num_encoder_layers, cross_attention=False, rngs=rngs)
        self.decoder = Stack(cfg, cfg.num_layers, cross_attention=True, rngs=rngs)
        self.output_head = OutputHead(cfg, rngs=rngs)

    def encode(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        """tokens, positions: [b, k]; mask: [b, 1, k, k] -> encoded [b, k, d]."""
        bias = self._relative_bias("encoder_relative_bias", tokens.shape[1])
        return self.encoder(self.token_embed(tokens),
                            AttentionInputs(self_mask=mask, self_bias=bias, positions=positions))

    def decode(self, encoded: jax.Array, cross_mask: jax.Array, tokens: jax.Array,
               positions: jax.Array, mask: jax.Array) -> jax.Array:
        """encoded: [b, k, d]; cross_mask: [b, 1, l, k]; tokens, positions: [b, l];
        mask: [b, 1, l, l] -> logits [b, l, v]."""
        bias = self._relative_bias("decoder_relative_bias", tokens.shape[1])
        x = self.decoder(self.token_embed(tokens),
                         AttentionInputs(self_mask=mask, self_bias=bias, positions=positions,
                                         encoded=encoded, cross_mask=cross_mask))
        return self.output_head(x, self.token_embed)

    def _relative_bias(self, name: str, length: int) -> jax.Array | None:
        if not hasattr(self, name):
            return None
        steps = jnp.arange(length)
        return getattr(self, name)(steps, steps)
