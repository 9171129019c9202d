"""The KV cache a decoding loop carries: every decode step's state besides the parameters."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from arch_compare.models.transformer import BlockCache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeCache:
    """Everything a decode step needs besides the parameters; a pytree, so decoding loops can
    carry it through `jax.lax.while_loop` and compile once.

    Slot s of row b holds a real token iff `start[b] <= s < index`; a token in slot s has
    position `s - start[b]`.

    `layers` is stacked (one `BlockCache` of [layers, ...] arrays, as `prefill` returns it) or
    per layer (a tuple of [b, ...] `BlockCache`s, `per_layer()`): decode steps return the form
    they were given; a decoding loop carries the per-layer form, which steps update in place
    (stacked, each step splits and restacks it: a copy of the whole cache).
    """

    layers: BlockCache | tuple[BlockCache, ...]  # self [layers, b, g, s, e], cross [.., k, ..]
    index: jax.Array  # [] int32: the slot the next token goes into, shared by every row
    start: jax.Array  # [b] int32: first slot holding a real token (left padding before it)
    encoder_mask: jax.Array | None = None  # [b, k] bool: real encoder tokens (encoder-decoder)

    @property
    def num_slots(self) -> int:
        if isinstance(self.layers, tuple):
            return self.layers[0].self_attention.key.shape[2]
        return self.layers.self_attention.key.shape[3]

    def per_layer(self) -> "DecodeCache":
        """This cache with `layers` as one `BlockCache` per layer."""
        if isinstance(self.layers, tuple):
            return self
        count = self.layers.self_attention.key.shape[0]
        layers = tuple(jax.tree.map(lambda x, i=i: x[i], self.layers) for i in range(count))
        return dataclasses.replace(self, layers=layers)

    def stacked(self) -> "DecodeCache":
        """This cache with `layers` as one `BlockCache` of [layers, ...] arrays."""
        if not isinstance(self.layers, tuple):
            return self
        return dataclasses.replace(
            self, layers=jax.tree.map(lambda *xs: jnp.stack(xs), *self.layers))

    def take_rows(self, rows: jax.Array) -> "DecodeCache":
        """The cache of batch rows `rows` [b'] (repeated or reordered), e.g. one per beam.
        Stacked caches only."""
        take = lambda x, axis: jnp.take(x, rows, axis=axis)
        layers = jax.tree.map(lambda x: take(x, 1), self.layers)  # axis 0 is layers
        mask = None if self.encoder_mask is None else take(self.encoder_mask, 0)
        return DecodeCache(layers, self.index, take(self.start, 0), mask)

    def reorder_self_attention(self, rows: jax.Array) -> "DecodeCache":
        """Like `take_rows` for a reordering WITHIN each example (beam search): only the
        self-attention keys/values differ between an example's rows, so only they are moved."""
        self_kv = jax.tree.map(lambda x: jnp.take(x, rows, axis=1), self.layers.self_attention)
        return dataclasses.replace(
            self, layers=dataclasses.replace(self.layers, self_attention=self_kv))
