"""NQ-synthetic: the paper's "local imitation" data (Gudibande et al. 2023).

The paper built 6,000 question-answer pairs by showing the target model 5 random pairs from a pool
of 10 Natural Questions validation examples and asking it for new ones in the same style. Here
`build_prompts` makes those few-shot prompts (deterministic for a seed) and `parse_generated_pair`
reads a reply back. A reply that holds no usable pair parses to None; `parse_generated_pairs` keeps
the index of every such reply so callers report how many were lost instead of dropping them unseen.

Pairs are written one label per line, which is also the format the reply is asked to use:

    Q: who wrote the novel pride and prejudice
    A: Jane Austen

The seed pool shipped in `fixtures/imitation/nq_seed_pairs.jsonl` is ten general-knowledge pairs
written for this project in the NQ style (lower-case questions, short answers), not NQ data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Iterable, Sequence

from arch_compare_tasks.readers import FIXTURES_DIR, DataFormatError

SEED_POOL_PATH = FIXTURES_DIR / "nq_seed_pairs.jsonl"
PAPER_SHOTS = 5  # pairs shown per prompt, out of a pool of 10

INSTRUCTION = ("Here are some trivia questions with short answers, in the style of Natural "
               "Questions. Write one new question on a different topic with its short answer, "
               "in exactly the same format.")

# A label at the start of a line, optionally in markdown emphasis: "Q:", "**Question:**", "A:".
_LABEL = r"^[ \t]*(?:\*\*|__)?(?:{names})[ \t]*:(?:\*\*|__)?[ \t]*(?P<text>.*?)[ \t]*$"
_QUESTION = re.compile(_LABEL.format(names="q|question"), re.IGNORECASE)
_ANSWER = re.compile(_LABEL.format(names="a|answer"), re.IGNORECASE)
# Both on one line: "Q: who ... A: Jane Austen". Case-sensitive, because NQ questions are lower
# case and may contain " a: " themselves.
_INLINE_ANSWER = re.compile(r"[ \t]+(?:\*\*|__)?(?:A|Answer)[ \t]*:(?:\*\*|__)?[ \t]*(?P<text>.*)$")


def format_pair(question: str, answer: str) -> str:
    return f"Q: {question}\nA: {answer}"


def load_seed_pairs(path: str | os.PathLike = SEED_POOL_PATH) -> list[tuple[str, str]]:
    """Read `{"question", "answer"}` JSON lines; a bad line raises naming the file and line."""
    pairs = []
    for line, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, line,
                                  f"invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, line, "expected a JSON object")
        for key in ("question", "answer"):
            if not isinstance(record.get(key), str):
                raise DataFormatError(path, line, f"{key!r} must be a string")
        try:
            _check_pair(record["question"], record["answer"])
        except ValueError as err:
            raise DataFormatError(path, line, str(err)) from None
        pairs.append((record["question"].strip(), record["answer"].strip()))
    return pairs


def build_prompts(seed_pairs: Sequence[tuple[str, str]], num_prompts: int, shots: int = PAPER_SHOTS,
                  seed: int = 0) -> list[str]:
    """`num_prompts` few-shot prompts, each showing `shots` distinct seed pairs in random order.

    One random stream draws the prompts in turn, so prompt i is the same whatever `num_prompts`
    is: asking for more prompts extends the list, it never reshuffles it.
    """
    pool = [tuple(pair) for pair in seed_pairs]
    seen = {}
    for index, pair in enumerate(pool):
        if len(pair) != 2:
            raise ValueError(f"seed pair {index} must be (question, answer), got {pair!r}")
        try:
            _check_pair(*pair)
        except ValueError as err:
            raise ValueError(f"seed pair {index}: {err}") from None
        question = pair[0].strip().lower()
        if question in seen:
            raise ValueError(f"seed pair {index} repeats the question of seed pair "
                             f"{seen[question]}")
        seen[question] = index
    if isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= len(pool):
        raise ValueError(f"shots must be between 1 and the pool size {len(pool)}, got {shots!r}")
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 0:
        raise ValueError(f"num_prompts must be a non-negative integer, got {num_prompts!r}")
    rng = random.Random(seed)
    prompts = []
    for _ in range(num_prompts):
        chosen = rng.sample(range(len(pool)), shots)  # distinct indices, in random order
        shown = [format_pair(pool[i][0].strip(), pool[i][1].strip()) for i in chosen]
        prompts.append("\n\n".join([INSTRUCTION, *shown]))
    return prompts


def parse_generated_pair(text: str) -> tuple[str, str] | None:
    """The first question-answer pair in a reply, or None when it holds no usable pair.

    Text before the question (a preamble) and after the answer line is ignored; the answer is the
    rest of its line, as NQ answers are short. The question is the "Q:" line right before the
    first "A:" line (blank lines allowed between them).
    """
    lines = text.splitlines()
    for index, line in enumerate(lines):
        question = _QUESTION.match(line)
        if not question:
            continue
        question_text = question.group("text")
        inline = _INLINE_ANSWER.search(question_text)
        if inline:
            return _usable(question_text[:inline.start()], inline.group("text"))
        following = [later for later in lines[index + 1:] if later.strip()]
        answer = _ANSWER.match(following[0]) if following else None
        if answer:
            return _usable(question_text, answer.group("text"))
    return None


@dataclasses.dataclass(frozen=True)
class GeneratedPairs:
    """Pairs read back from the target's replies, and the indices of replies that gave none."""

    pairs: tuple[tuple[str, str], ...]
    unusable: tuple[int, ...]

    def summary(self) -> str:
        total = len(self.pairs) + len(self.unusable)
        return f"{len(self.pairs)} of {total} replies gave a pair; {len(self.unusable)} unusable"


def parse_generated_pairs(texts: Iterable[str]) -> GeneratedPairs:
    pairs, unusable = [], []
    for index, text in enumerate(texts):
        pair = parse_generated_pair(text)
        if pair is None:
            unusable.append(index)
        else:
            pairs.append(pair)
    return GeneratedPairs(tuple(pairs), tuple(unusable))


def _usable(question: str, answer: str) -> tuple[str, str] | None:
    # Strip markdown emphasis the target may wrap around either part ("**Paris**").
    question, answer = question.strip(" \t*_"), answer.strip(" \t*_")
    return (question, answer) if question and answer else None


def _check_pair(question: str, answer: str) -> None:
    for name, value in (("question", question), ("answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if "\n" in value.strip():
            raise ValueError(f"{name} must fit on one line (the prompt format is line-based)")
