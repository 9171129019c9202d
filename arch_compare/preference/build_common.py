"""What the preference builders share: their summary, the reasons they drop things, and how they
read the student's answers and ask the target.

Builders take the answers as input and never sample: `samples[i]` is the list of the student's
answers to prompt i. They come from the project's decoding, `decoding.search.generate` with
`DecodeConfig(method="sample", temperature=..., seed=...)` (`decoding.sampling.sample_search`),
n rounds with distinct seeds as active selection's `PoolModel.answers` draws them
(`selection.sample_seed`); the texts are what `PoolModel.answers` decodes. The builders:

- `judged`: the target as judge of every two distinct answers to a prompt (pairs, and
  best-of-n examples);
- `checked`: a task's checker (text2cypher's execution of the query) splits the answers into
  passing and failing ones (pairs, and best-of-n examples);
- `revised`: the target critiques and revises the student's answer (pairs).

A target or judge given with `cache_path` is asked through the collection cache
(`imitation.collection.CachedTarget`), as imitation data is collected: a rerun, or another
builder asking the same question with the same settings, pays for nothing twice.
Every builder returns what it kept and a `BuildSummary` of what it dropped and why.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

from arch_compare.imitation.collection import CachedTarget
from arch_compare.imitation.targets import Prompt, Target

# Why an answer, a comparison or a prompt gave nothing (the keys of `BuildSummary.dropped`).
EMPTY_ANSWER = "empty answer"            # an answer with no text
DUPLICATE_ANSWER = "duplicate answer"    # the same text as an earlier answer to the prompt
TOO_FEW_ANSWERS = "fewer than 2 distinct answers"
TIED = "tie"
BOTH_BAD_VERDICT = "both bad"
POSITION_FLIP = "position flip"          # the two orders disagreed
UNPARSEABLE = "unparseable verdict"
TARGET_ERROR = "target error"
ALL_PASS = "all answers pass"
ALL_FAIL = "all answers fail"
NO_WINNER = "no answer won a comparison"
NO_REVISION = "no revision in the reply"
UNCHANGED = "revision identical to the answer"
OVER_LIMIT = "over max_pairs_per_prompt"


@dataclasses.dataclass(frozen=True)
class BuildSummary:
    """What a builder did: `prompts` seen, `candidates` considered (comparisons judged, answers
    checked or revised), `kept` (pairs or examples) and `dropped` (reason -> count; each
    reason counts comparisons, answers or prompts as its name says)."""

    method: str
    prompts: int
    candidates: int
    kept: int
    dropped: Mapping[str, int]

    def __post_init__(self):
        counts = (self.prompts, self.candidates, self.kept, *self.dropped.values())
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
            raise ValueError(f"BuildSummary {self.method!r}: counts must be integers >= 0")
        object.__setattr__(self, "dropped", dict(sorted(
            (reason, n) for reason, n in self.dropped.items() if n)))

    def describe(self) -> str:
        drops = "; ".join(f"{reason}: {n:,}" for reason, n in self.dropped.items()) or "none"
        return (f"{self.method}: {self.kept:,} kept from {self.candidates:,} candidates over "
                f"{self.prompts:,} prompts (dropped: {drops})")


def asked_through_cache(target: Target, cache_path: str | os.PathLike | None) -> Target:
    """`target` itself, or asked through the collection cache at `cache_path`."""
    return target if cache_path is None else CachedTarget(target, Path(cache_path),
                                                          progress=False)


def check_lengths(prompts: Sequence, samples: Sequence[Sequence[str]], what: str) -> None:
    """One list of answers per prompt (`what`: the builder, for the error)."""
    if len(prompts) != len(samples):
        raise ValueError(f"{what}: {len(prompts)} prompts but answers for {len(samples)}")
    for index, answers in enumerate(samples):
        if isinstance(answers, str):
            raise TypeError(f"{what}: the answers to prompt {index} must be a list of strings, "
                            f"got one string")


def distinct_answers(answers: Sequence[str], dropped: collections.Counter
                     ) -> list[tuple[int, str]]:
    """(index, stripped text) of the non-empty answers, the first of identical ones only; the
    others counted in `dropped`."""
    seen, kept = set(), []
    for index, answer in enumerate(answers):
        text = answer.strip()
        if not text:
            dropped[EMPTY_ANSWER] += 1
        elif text in seen:
            dropped[DUPLICATE_ANSWER] += 1
        else:
            seen.add(text)
            kept.append((index, text))
    return kept


def instruction_of(prompt: Prompt) -> str:
    """What the judge is told the instruction was: a lone user turn's text, else the history."""
    if len(prompt.turns) == 1:
        return prompt.turns[0].text
    return "\n\n".join(f"{turn.role.capitalize()}: {turn.text}" for turn in prompt.turns)
