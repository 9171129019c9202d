"""One task, any architecture: the feature converter is the only thing that differs.

Every task yields the same `inputs` / `targets` token features (see the fairness rules in the
design notes). The converter for a model turns them into that model's batch:

- decoder-only (GPT-2, LLaMA): a prefix LM; inputs and targets are concatenated, and the loss
  weights are zero on every input position (seqio's `PrefixLMFeatureConverter` with
  `loss_on_targets_only=True`). Attention stays causal over the whole sequence, as GPT-2 and LLaMA
  were trained; `decoder_causal_attention` is carried along but not used.
- encoder-decoder (T5, UL2): inputs go to the encoder, targets to the decoder
  (seqio's `EncDecFeatureConverter`).

Two model-specific details live here too, so that no task has to know about them:
- the first decoder input is the model's own start token (`ModelConfig.decoder_start_id`: BOS for
  GPT-2 and LLaMA, pad for T5), where seqio shifts in id 0 (a real token, "!", in GPT-2);
- UL2 reads a mode token before its inputs ("[S2S]" for sequence-to-sequence fine-tuning, as the
  UL2 paper prescribes), encoded with the model's vocabulary. It takes room from the inputs'
  length budget: inputs longer than the budget lose tokens at the end.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from arch_compare.models.config import ModelConfig

# Family -> text placed before the inputs of every example.
MODE_TOKENS = {"ul2": "[S2S]"}


class _ModelDetails:
    """Mixin over a seqio converter: mode-token prefix before, start token after conversion."""

    def __init__(self, *, decoder_start_id: int, mode_ids: tuple[int, ...], **kwargs):
        self._decoder_start_id = decoder_start_id
        self._mode_ids = tuple(mode_ids)
        super().__init__(**kwargs)

    @property
    def signature(self) -> tuple:
        """Equal for two converters that turn the same examples into the same batches."""
        return type(self).__name__, self._decoder_start_id, self._mode_ids, self.pack

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths) -> tf.data.Dataset:
        if self._mode_ids:
            ds = ds.map(self._prefix_mode(task_feature_lengths["inputs"]),
                        num_parallel_calls=tf.data.AUTOTUNE)
        ds = super()._convert_features(ds, task_feature_lengths)
        if self._decoder_start_id:
            ds = ds.map(self._set_start_token, num_parallel_calls=tf.data.AUTOTUNE)
        return ds

    def _prefix_mode(self, inputs_length: int):
        mode = tf.constant(self._mode_ids, tf.int32)

        def prefix(features):
            inputs = features["inputs"][: inputs_length - len(self._mode_ids)]
            return {**features, "inputs": tf.concat([mode, inputs], axis=0)}

        return prefix

    def _set_start_token(self, features):
        tokens = features["decoder_input_tokens"]  # [length]
        if "decoder_positions" in features:  # packed: every segment starts at position 0
            starts = (features["decoder_positions"] == 0) & (features["decoder_segment_ids"] > 0)
        else:
            starts = tf.range(tf.shape(tokens)[0]) == 0
        start = tf.fill(tf.shape(tokens), tf.constant(self._decoder_start_id, tokens.dtype))
        return {**features, "decoder_input_tokens": tf.where(starts, start, tokens)}


class DecoderOnlyFeatureConverter(_ModelDetails, seqio.PrefixLMFeatureConverter):
    """seqio's prefix-LM converter, loss on targets only, with the model's start token."""

    def __init__(self, **kwargs):
        super().__init__(loss_on_targets_only=True, **kwargs)


class EncoderDecoderFeatureConverter(_ModelDetails, seqio.EncDecFeatureConverter):
    """seqio's encoder-decoder converter with the model's start token and mode token."""


CONVERTERS = {"decoder_only": DecoderOnlyFeatureConverter,
              "encoder_decoder": EncoderDecoderFeatureConverter}


def feature_converter_for(config: ModelConfig, vocabulary: seqio.Vocabulary | None = None, *,
                          pack: bool = False) -> seqio.FeatureConverter:
    """The converter that turns any task's `inputs` / `targets` into `config`'s batches.

    `vocabulary` encodes the family's mode token (UL2); it is required only for such families.
    """
    mode_text = MODE_TOKENS.get(config.family)
    if mode_text is not None and vocabulary is None:
        raise ValueError(f"family {config.family!r} reads the mode token {mode_text!r} before "
                         f"its inputs; pass its vocabulary to encode it")
    mode_ids = tuple(vocabulary.encode(mode_text)) if mode_text else ()
    return CONVERTERS[config.arch](decoder_start_id=config.decoder_start_id, mode_ids=mode_ids,
                                   pack=pack)


def prompt_tokens(config: ModelConfig, vocabulary: seqio.Vocabulary, inputs: str) -> list[int]:
    """The tokens a converted example puts before the model's first target token, for `inputs`
    text (untruncated): the mode token (UL2), the inputs and EOS; a decoder-only model reads its
    start token first. What a model generating from an `inputs` string must be given."""
    mode_text = MODE_TOKENS.get(config.family)
    mode_ids = list(vocabulary.encode(mode_text)) if mode_text else []
    tokens = mode_ids + list(vocabulary.encode(inputs)) + [vocabulary.eos_id]
    return tokens if config.is_encoder_decoder else [config.decoder_start_id] + tokens
