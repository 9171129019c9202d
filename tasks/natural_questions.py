"""Natural Questions (open-domain) as k-shot "Q: ... A: ..." prompts, scored by exact match.

The data is NQ-open (Lee et al., 2019): one question with a list of acceptable short answers. It is
read from a local JSONL file with one `{"question": str, "answer": [str, ...]}` object per line (the
shape of the release's NQ-open.*.jsonl files and of TFDS `natural_questions_open`), or from a TFDS
data_dir where that dataset has already been prepared. The paper evaluates it 3-shot; a model's
generation is cut at its first line (`postprocess`) and compared with every alias
(`arch_compare.evaluation.metrics.exact_match`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Sequence

from arch_compare.evaluation.metrics import first_line_answer, normalize_answer

TFDS_NAME = "natural_questions_open"
FIXTURES = Path(__file__).parent / "fixtures" / "natural_questions"


@dataclasses.dataclass(frozen=True)
class QAPair:
    question: str
    answers: tuple[str, ...]
    source: str  # "file:line" (or the TFDS record) it came from, for error messages

    def __post_init__(self):
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"{self.source}: 'question' must be a non-empty string, "
                             f"got {self.question!r}")
        if not self.answers or not all(isinstance(a, str) and a.strip() for a in self.answers):
            raise ValueError(f"{self.source}: 'answer' must be a non-empty list of non-empty "
                             f"strings, got {list(self.answers)!r}")

    @property
    def key(self) -> str:
        """What makes two questions the same: their text after answer normalisation."""
        return normalize_answer(self.question)


def _parse_line(text: str, source: str) -> QAPair:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("question", "answer") if k not in record]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}")
    answers = record["answer"]
    if not isinstance(answers, list):
        raise ValueError(f"{source}: 'answer' must be a list of aliases, got {answers!r}")
    return QAPair(record["question"], tuple(answers), source)


def read_jsonl(path: str | Path) -> list[QAPair]:
    """Every question of a JSONL file; blank lines are skipped, anything else must parse."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        return [_parse_line(text, f"{path}:{number}")
                for number, text in enumerate(f, start=1) if text.strip()]


def read_tfds(split: str, data_dir: str | Path) -> list[QAPair]:
    """Read `natural_questions_open` from a TFDS data_dir where it was prepared beforehand.

    Nothing is downloaded: preparing needs the network, so it is done elsewhere
    (`tfds build natural_questions_open --data_dir=DIR`) and DIR copied here.
    """
    import tensorflow_datasets as tfds  # heavy, and only this reader needs it

    builder = tfds.builder(TFDS_NAME, data_dir=str(data_dir))
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{data_dir}: {TFDS_NAME} is not prepared in this data_dir (looked for "
            f"{builder.data_dir}). Prepare it where the network is reachable with "
            f"`tfds build {TFDS_NAME} --data_dir=<dir>` and copy <dir> here.")
    if split not in builder.info.splits:
        raise ValueError(f"{data_dir}: {TFDS_NAME} has no split {split!r}; available: "
                         f"{sorted(builder.info.splits)}")
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    return [QAPair(record["question"].decode("utf-8"),
                   tuple(a.decode("utf-8") for a in record["answer"]),
                   f"{builder.data_dir}[{split}][{i}]")
            for i, record in enumerate(tfds.as_numpy(dataset))]


def format_shot(pair: QAPair) -> str:
    return f"Q: {pair.question}\nA: {pair.answers[0]}\n\n"


def build_prompt(shots: Sequence[QAPair], question: str) -> str:
    return "".join(format_shot(s) for s in shots) + f"Q: {question}\nA:"


def select_shots(pool: Sequence[QAPair], question: QAPair, shots: int, seed: int) -> list[QAPair]:
    """`shots` pool questions for `question`, never the question itself, chosen reproducibly.

    The draw is seeded by (seed, question text), so an example gets the same shots whatever
    else is evaluated alongside it and in whatever order. Pool duplicates count once.
    """
    eligible, seen = [], {question.key}
    for candidate in pool:
        if candidate.key not in seen:
            seen.add(candidate.key)
            eligible.append(candidate)
    if len(eligible) < shots:
        raise ValueError(f"{question.source}: the few-shot pool has {len(eligible)} usable "
                         f"questions, {shots}-shot prompts need {shots}")
    # A str seed is hashed with SHA-512 by `random`, so it is stable across processes.
    return random.Random(f"{seed}:{question.question}").sample(eligible, shots)


def examples_from_pairs(pairs: Sequence[QAPair], pool: Sequence[QAPair], shots: int = 3,
                        seed: int = 0, name: str = "nq") -> list[dict]:
    """Records {"id", "inputs", "targets" (first alias), "answers" (all aliases)}."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    return [{"id": f"{name}/{i}",
             "inputs": build_prompt(select_shots(pool, pair, shots, seed), pair.question),
             "targets": pair.answers[0], "answers": list(pair.answers)}
            for i, pair in enumerate(pairs)]


def build_examples(path: str | Path, fewshot_path: str | Path, shots: int = 3,
                   seed: int = 0) -> list[dict]:
    """k-shot examples for every question in `path`, shots drawn from `fewshot_path`."""
    return examples_from_pairs(read_jsonl(path), read_jsonl(fewshot_path), shots, seed,
                               name=Path(path).stem)


def postprocess(output: str | bytes, example: dict | None = None, is_target: bool = False):
    """seqio postprocess_fn: a target becomes its example's alias list, a generation its answer.

    seqio calls this on both sides; exact_match then compares a prediction with every alias.
    """
    if is_target and example is not None and "answers" in example:
        return [_text(a) for a in example["answers"]]
    return first_line_answer(_text(output))


def _text(value: str | bytes) -> str:
    # seqio hands back example fields as numpy bytes; decoded model outputs are already str.
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
