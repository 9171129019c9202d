"""Model wrappers: the seam between the two architectures.

`DecoderOnlyModel` and `EncoderDecoderModel` own everything that differs between them: which seqio
features they read, how masks are built, and (in later layers) loss, scoring and decoding. Both
expose the same functional interface over plain parameter pytrees (nested dicts of arrays), so the
trainer, the checkpoint code and the converters never see Flax modules:

    model = build_model(config)
    params = model.init(jax.random.key(0))
    logits = model.logits(params, batch)  # [batch, length, vocab]
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from arch_compare.models.config import ModelConfig
from arch_compare.models.transformer import DecoderOnlyNetwork, EncoderDecoderNetwork

Params = dict[str, Any]
Batch = Mapping[str, jax.Array]


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


def _require(batch: Batch, names: tuple[str, ...], model_name: str) -> None:
    missing = [name for name in names if name not in batch]
    if missing:
        raise KeyError(f"{model_name} needs batch features {', '.join(missing)}; "
                       f"got {', '.join(sorted(batch)) or 'none'}")


class BaseModel:
    """Shapes, initialisation and parameter metadata common to both architectures."""

    network_class: type[nnx.Module]

    def __init__(self, config: ModelConfig):
        self.config = config
        # eval_shape: building the graph allocates nothing, so 70B configs are cheap to describe.
        abstract = nnx.eval_shape(lambda: self.network_class(config, rngs=nnx.Rngs(0)))
        self._graphdef, self._abstract_state = nnx.split(abstract)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.family}, params={self.param_count():,})"

    def abstract_params(self) -> Params:
        """Parameter tree of `jax.ShapeDtypeStruct`s."""
        return self._abstract_state.to_pure_dict()

    def logical_axes(self) -> Params:
        """Parameter tree of logical axis-name tuples, e.g. ('layers', 'embed', 'heads', 'kv')."""
        specs = nnx.get_partition_spec(self._abstract_state).to_pure_dict()
        return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))

    def param_count(self) -> int:
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(self.abstract_params()))

    def init(self, rng: jax.Array) -> Params:
        """Random parameters (jit-compiled, so large models are created once, on device)."""

        @jax.jit
        def make(rng):
            return nnx.state(self.network_class(self.config, rngs=nnx.Rngs(params=rng)))

        return make(rng).to_pure_dict()

    def network(self, params: Params) -> nnx.Module:
        """The Flax module bound to `params` (for code that needs the layers themselves)."""
        return nnx.merge(self._graphdef, params)

    def logits(self, params: Params, batch: Batch) -> jax.Array:
        raise NotImplementedError


class DecoderOnlyModel(BaseModel):
    """GPT-2 / LLaMA: reads `decoder_input_tokens` (and, when packed, `decoder_segment_ids` and
    `decoder_positions`). Attention is causal, as in pre-training; inputs and targets are told apart
    by `decoder_loss_weights` only."""

    network_class = DecoderOnlyNetwork

    def logits(self, params: Params, batch: Batch) -> jax.Array:
        _require(batch, ("decoder_input_tokens",), type(self).__name__)
        tokens = batch["decoder_input_tokens"]  # [b, l]
        mask = _causal_mask(tokens.shape[1])
        if "decoder_segment_ids" in batch:
            segments = batch["decoder_segment_ids"]
            mask = mask & _segment_mask(segments, segments)
        return self.network(params)(tokens, _positions(batch, "decoder", tokens), mask)


class EncoderDecoderModel(BaseModel):
    """T5 / UL2: `encoder_input_tokens` (0 is padding) feed the encoder, `decoder_input_tokens`
    (targets shifted right) the decoder."""

    network_class = EncoderDecoderNetwork

    def logits(self, params: Params, batch: Batch) -> jax.Array:
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
        encoded = network.encode(inputs, _positions(batch, "encoder", inputs), encoder_mask)
        return network.decode(encoded, cross_mask, targets,
                              _positions(batch, "decoder", targets), decoder_mask)


MODEL_CLASSES: dict[str, type[BaseModel]] = {
    "decoder_only": DecoderOnlyModel,
    "encoder_decoder": EncoderDecoderModel,
}


def build_model(config: ModelConfig) -> BaseModel:
    return MODEL_CLASSES[config.arch](config)
