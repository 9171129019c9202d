"""Preference pairs -> training batches `{"chosen": Batch, "rejected": Batch}` for any model.

Each answer becomes a model batch row exactly as an imitation example does in training
(`trainer.data`): the prompt's `inputs` text (`PreferencePair.inputs`) and the answer as
`targets`, tokenized by seqio's `tokenize`, EOS appended by `append_eos_after_trim`, then the
model's own feature converter (`model.feature_converter(vocabulary)`, unpacked). So row i of
`chosen` and row i of `rejected` carry the same prompt tokens, placed where that model reads a
prompt: before the answer with loss weight 0 for a decoder-only model, in
`encoder_input_tokens` for an encoder-decoder model; the keys are a training batch's keys.

Nothing is cut. The trainer trims an over-long example to the feature lengths; a preference pair
cut that way would compare answers the model never sees whole (or lose the end of the prompt),
so a pair whose prompt or either answer does not fit is dropped and counted instead
(`BatchSummary.dropped`), as is a pair whose two answers tokenize to the same tokens (different
only in whitespace the vocabulary normalises away), which carries no preference.

Batches have `batch_size` rows, so one compiled step serves them all. The last batch is filled
with padding rows: copies of its last real row with `decoder_loss_weights` all zero, so they
add nothing to any weighted sum and no padding row is an all-padding sequence (which would be a
row of attention with no key to attend to). `PairBatches.rows` says how many rows of each batch
are real; `padding_rows(batch)` finds them from the weights alone.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from arch_compare.data.converters import MODE_TOKENS
from arch_compare.data.iterators import numpy_iterator
from arch_compare.preference.pairs import PreferencePair

TEXT_FEATURES = ("inputs", "targets")
SIDES = ("chosen", "rejected")
LOSS_WEIGHTS = "decoder_loss_weights"
TARGET_TOKENS = "decoder_target_tokens"

PROMPT_TOO_LONG = "prompt longer than the inputs length"
CHOSEN_TOO_LONG = "chosen answer longer than the targets length"
REJECTED_TOO_LONG = "rejected answer longer than the targets length"
SAME_TOKENS = "chosen and rejected tokenize the same"


@dataclasses.dataclass(frozen=True)
class BatchSummary:
    """How pairs became batches: `pairs` given, `kept`, `dropped` (reason -> pairs; a pair is
    counted once, under the first reason that applies), `batches` and `padding_rows` made."""

    pairs: int
    kept: int
    dropped: Mapping[str, int]
    batches: int
    padding_rows: int
    feature_lengths: Mapping[str, int]

    def describe(self) -> str:
        drops = "; ".join(f"{reason}: {n:,}" for reason, n in self.dropped.items()) or "none"
        lengths = " / ".join(f"{name} {n}" for name, n in self.feature_lengths.items())
        return (f"{self.kept:,} of {self.pairs:,} pairs in {self.batches:,} batches "
                f"({self.padding_rows} padding rows; feature lengths {lengths}); dropped, "
                f"never cut: {drops}")


@dataclasses.dataclass(frozen=True)
class PairBatches:
    """`batches[b]` = {"chosen": Batch, "rejected": Batch} of `batch_size` rows, of which the
    first `rows[b]` are real; `pair_indices[b]` are those rows' indices into the given pairs
    (for attaching per-pair values such as reference log-probabilities)."""

    batches: tuple[dict[str, dict[str, np.ndarray]], ...]
    rows: tuple[int, ...]
    pair_indices: tuple[tuple[int, ...], ...]
    summary: BatchSummary


def padding_rows(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """[b] bool: the rows of a converted batch with no weighted token (padding rows)."""
    return np.asarray(batch[LOSS_WEIGHTS]).sum(axis=-1) == 0


def _mode_length(model, vocabulary: seqio.Vocabulary) -> int:
    """Tokens the model's converter puts before the inputs (UL2's mode token), which take room
    from the inputs length."""
    text = MODE_TOKENS.get(model.config.family)
    return len(vocabulary.encode(text)) if text else 0


def _tokenized(vocabulary: seqio.Vocabulary, pairs: Sequence[PreferencePair]
               ) -> list[dict[str, np.ndarray]]:
    """Each pair's inputs, chosen and rejected tokens (no EOS), by seqio's `tokenize` as a
    task tokenizes its records."""
    texts = {"inputs": [pair.inputs for pair in pairs],
             "chosen": [pair.chosen for pair in pairs],
             "rejected": [pair.rejected for pair in pairs]}
    features = {name: seqio.Feature(vocabulary, add_eos=True) for name in texts}
    dataset = tf.data.Dataset.from_tensor_slices(texts)
    return list(numpy_iterator(seqio.preprocessors.tokenize(dataset, features,
                                                            copy_pretokenized=False)))


def _fits(tokens: Mapping[str, np.ndarray], lengths: Mapping[str, int], mode: int) -> str | None:
    """Why a tokenized pair cannot be a batch row whole (None: it can). EOS takes one token."""
    if mode + len(tokens["inputs"]) + 1 > lengths["inputs"]:
        return PROMPT_TOO_LONG
    for side, reason in (("chosen", CHOSEN_TOO_LONG), ("rejected", REJECTED_TOO_LONG)):
        if len(tokens[side]) + 1 > lengths["targets"]:
            return reason
    if np.array_equal(tokens["chosen"], tokens["rejected"]):
        return SAME_TOKENS
    return None


def _converted(model, vocabulary: seqio.Vocabulary, examples: list[dict[str, np.ndarray]],
               lengths: Mapping[str, int]) -> list[dict[str, np.ndarray]]:
    """Token examples -> the model's converted rows, through the training path's last steps."""
    spec = {name: tf.TensorSpec([None], tf.int32) for name in TEXT_FEATURES}
    dataset = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)
    features = {name: seqio.Feature(vocabulary, add_eos=True) for name in TEXT_FEATURES}
    dataset = seqio.preprocessors.append_eos_after_trim(
        dataset, output_features=features, sequence_length=dict(lengths))
    converter = model.feature_converter(vocabulary)
    return list(numpy_iterator(converter(dataset, dict(lengths))))


def _check_whole(rows: list[dict[str, np.ndarray]], answers: list[np.ndarray], eos: int,
                 side: str) -> None:
    """Every row's weighted tokens are its whole answer and EOS (what the fit check promised)."""
    for index, (row, answer) in enumerate(zip(rows, answers)):
        weighted = row[TARGET_TOKENS][row[LOSS_WEIGHTS] > 0]
        if not np.array_equal(weighted, np.append(answer, eos)):
            raise AssertionError(f"pair batches: {side} row {index}: the converter weighted "
                                 f"{len(weighted)} tokens for an answer of {len(answer)} + EOS")


def _stacked(rows: list[dict[str, np.ndarray]], batch_size: int) -> dict[str, np.ndarray]:
    """`rows` as one batch of `batch_size` rows, padded with zero-weight copies of the last."""
    padding = {**rows[-1], LOSS_WEIGHTS: np.zeros_like(rows[-1][LOSS_WEIGHTS])}
    rows = rows + [padding] * (batch_size - len(rows))
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}  # [b, l] each


def pair_batches(model, vocabulary: seqio.Vocabulary, pairs: Sequence[PreferencePair], *,
                 feature_lengths: Mapping[str, int], batch_size: int) -> PairBatches:
    """`pairs` as fixed-shape numpy batches for `model` (see the module doc). `feature_lengths`
    are the task lengths {"inputs", "targets"} a training run of the model uses."""
    if set(feature_lengths) != set(TEXT_FEATURES) or min(
            int(feature_lengths[name]) for name in TEXT_FEATURES) < 1:
        raise ValueError(f"pair_batches: feature_lengths needs positive 'inputs' and 'targets', "
                         f"got {dict(feature_lengths)}")
    lengths = {name: int(feature_lengths[name]) for name in TEXT_FEATURES}
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"pair_batches: batch_size must be a positive integer, got "
                         f"{batch_size!r}")
    pairs = list(pairs)
    mode = _mode_length(model, vocabulary)
    dropped: collections.Counter = collections.Counter()
    kept, tokens = [], []
    for index, pair_tokens in enumerate(_tokenized(vocabulary, pairs) if pairs else []):
        reason = _fits(pair_tokens, lengths, mode)
        if reason is None:
            kept.append(index)
            tokens.append(pair_tokens)
        else:
            dropped[reason] += 1
    sides: dict[str, list[dict[str, np.ndarray]]] = {}
    for side in SIDES:
        answers = [t[side].astype(np.int32) for t in tokens]
        sides[side] = _converted(model, vocabulary, [
            {"inputs": t["inputs"].astype(np.int32), "targets": answer}
            for t, answer in zip(tokens, answers)], lengths) if tokens else []
        _check_whole(sides[side], answers, vocabulary.eos_id, side)
    batches, rows, indices = [], [], []
    for start in range(0, len(kept), batch_size):
        stop = min(start + batch_size, len(kept))
        batches.append({side: _stacked(sides[side][start:stop], batch_size) for side in SIDES})
        rows.append(stop - start)
        indices.append(tuple(kept[start:stop]))
    summary = BatchSummary(len(pairs), len(kept), dict(sorted(dropped.items())), len(batches),
                           batch_size * len(batches) - len(kept), lengths)
    return PairBatches(tuple(batches), tuple(rows), tuple(indices), summary)


def example_rows(batches: PairBatches) -> list[dict[str, Any]]:
    """Per kept pair: its index and its chosen and rejected rows (for inspection and tests)."""
    out = []
    for batch, rows, indices in zip(batches.batches, batches.rows, batches.pair_indices):
        for row, index in zip(range(rows), indices):
            out.append({"pair": index, **{side: {name: value[row] for name, value in
                                                batch[side].items()} for side in SIDES}})
    return out
