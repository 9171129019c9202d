"""Preference pairs as token ids, in the batch layouts the feature converters produce.

Chosen and rejected answers are padded to widths of their own (the step must not assume they
match); id 0 pads (T5's pad id; for GPT-2 any id inside the vocabulary will do, weighted 0).
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD = 0


@dataclasses.dataclass(frozen=True)
class Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def make_pairs(vocab: int, lengths: list[tuple[int, int, int]], seed: int = 0) -> list[Pair]:
    """Random pairs of (prompt, chosen, rejected) lengths, tokens in [1, vocab)."""
    rng = np.random.default_rng(seed)
    tokens = lambda n: rng.integers(1, vocab, size=n).tolist()
    return [Pair(tokens(p), tokens(c), tokens(r)) for p, c, r in lengths]


def random_lengths(count: int, seed: int, longest: int = 8) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(n) for n in rng.integers(1, longest + 1, size=3)) for _ in range(count)]


def padded(rows: list[list[int]], width: int) -> np.ndarray:
    return np.array([row + [PAD] * (width - len(row)) for row in rows], np.int32)


def decoder_only_batch(prompts, answers, extra: int, longest: int | None = None
                       ) -> dict[str, np.ndarray]:
    """The prefix-LM layout: the prompt's first token plays the start token's part, the loss
    weights are 1 on the answer only. Width: the longest row, or `2 * longest` when given (the
    same shapes for every batch of such pairs), plus `extra`."""
    sequences = [p + a for p, a in zip(prompts, answers)]
    width = (max(map(len, sequences)) - 1 if longest is None else 2 * longest) + extra
    weights = [[0] * (len(p) - 1) + [1] * len(a) for p, a in zip(prompts, answers)]
    return {"decoder_input_tokens": padded([s[:-1] for s in sequences], width),
            "decoder_target_tokens": padded([s[1:] for s in sequences], width),
            "decoder_loss_weights": padded(weights, width)}


def encoder_decoder_batch(prompts, answers, extra: int, longest: int | None = None
                          ) -> dict[str, np.ndarray]:
    """The prompt on the encoder side; the decoder starts from PAD (T5's start id)."""
    fit = lambda rows: max(map(len, rows)) if longest is None else longest
    width = fit(answers) + extra
    return {"encoder_input_tokens": padded(prompts, fit(prompts) + extra),
            "decoder_input_tokens": padded([[PAD] + a[:-1] for a in answers], width),
            "decoder_target_tokens": padded(answers, width),
            "decoder_loss_weights": padded([[1] * len(a) for a in answers], width)}


def pair_batch(pairs: list[Pair], encoder_decoder: bool, longest: int | None = None) -> dict:
    """{"chosen": batch, "rejected": batch} without reference log-probabilities; `longest`: the
    longest prompt or answer any pair may have, for shapes that do not depend on the pairs."""
    build = encoder_decoder_batch if encoder_decoder else decoder_only_batch
    prompts = [p.prompt for p in pairs]
    return {"chosen": build(prompts, [p.chosen for p in pairs], extra=1, longest=longest),
            "rejected": build(prompts, [p.rejected for p in pairs], extra=3, longest=longest)}
