"""Model wrappers: the seam between the two architectures.

`DecoderOnlyModel` and `EncoderDecoderModel` (their common base `BaseModel` is in `base_model.py`)
own everything that differs between them: which seqio features they read, how masks are built,
and (in later layers) loss, scoring and decoding. Both expose the same functional interface over plain parameter pytrees (nested dicts of arrays), so the
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
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from arch_compare.models.base_model import (DECODER_LAYERS, BaseModel, Batch, Params,
                                            _causal_mask, _left_padded_layout, _masked_mean,
                                            _positions, _require, _require_unpacked,
                                            _segment_mask, _without_layers)
from arch_compare.models.config import ModelConfig
from arch_compare.models.decode_cache import DecodeCache
from arch_compare.models.transformer import (AttentionInputs, DecoderOnlyNetwork,
                                             EncoderDecoderNetwork)
from arch_compare.recipes import LoraConfig

__all__ = ["DECODER_LAYERS", "BaseModel", "Batch", "DecoderOnlyModel", "EncoderDecoderModel",
           "MODEL_CLASSES", "Params", "build_model"]

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
