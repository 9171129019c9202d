"""MMLU (Hendrycks et al., 2021) as k-shot prompts scored by rank classification.

Reads the standard release layout from a local folder:

    <folder>/dev/<subject>_dev.csv    5 questions per subject, the few-shot pool
    <folder>/val/<subject>_val.csv
    <folder>/test/<subject>_test.csv

Each file is headerless CSV, one question per row: `question,A,B,C,D,answer` with the answer a
letter A-D; fields may hold quoted commas and line breaks. The prompt follows the release's
evaluation script: a header naming the subject, the first k dev questions each followed by
"Answer: X", then the question ending in "Answer:". The model's log-likelihoods of the
continuations " A" .. " D" pick the answer (`arch_compare.evaluation.metrics.subject_accuracy`).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

SPLITS = ("dev", "val", "test")
LETTERS = ("A", "B", "C", "D")
# Scored continuations: the prompt ends "Answer:", so each letter carries its leading space.
CHOICES = tuple(f" {letter}" for letter in LETTERS)
FIELDS = 1 + len(LETTERS) + 1  # question, four options, answer
FEW_SHOT_SPLIT = "dev"
FIXTURES = Path(__file__).parent / "fixtures" / "mmlu"


@dataclasses.dataclass(frozen=True)
class Question:
    subject: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    source: str  # "file:line" of the row, so later errors can point back at the data

    def __post_init__(self):
        if len(self.options) != len(LETTERS):
            raise ValueError(f"{self.source}: expected {len(LETTERS)} options, "
                             f"got {len(self.options)}")
        if not 0 <= self.answer_index < len(LETTERS):
            raise ValueError(f"{self.source}: answer index {self.answer_index} is not in "
                             f"0..{len(LETTERS) - 1}")

    @property
    def answer(self) -> str:
        return LETTERS[self.answer_index]


def _parse_row(subject: str, fields: list[str], source: str) -> Question:
    if len(fields) != FIELDS:
        raise ValueError(f"{source}: expected {FIELDS} fields (question,A,B,C,D,answer), "
                         f"got {len(fields)}: {fields!r}")
    question, *options, answer = fields
    if not question.strip():
        raise ValueError(f"{source}: the question field is empty")
    if answer.strip() not in LETTERS:
        raise ValueError(f"{source}: answer must be one of {', '.join(LETTERS)}, got {answer!r}")
    return Question(subject, question, tuple(options), LETTERS.index(answer.strip()), source)


def read_csv(path: str | Path, subject: str | None = None) -> list[Question]:
    """All questions of one subject file; errors name the file and the row's first line."""
    path = Path(path)
    subject = subject or subject_of(path)
    questions = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        line = 1  # a quoted field can span lines, so a row starts one past the previous row's end
        try:
            for fields in reader:
                questions.append(_parse_row(subject, fields, f"{path}:{line}"))
                line = reader.line_num + 1
        except csv.Error as error:
            raise ValueError(f"{path}:{line}: malformed CSV: {error}") from error
    return questions


def subject_of(path: Path) -> str:
    """`astronomy` from `.../astronomy_test.csv`: the subject is the name before `_<split>`."""
    stem, _, split = path.stem.rpartition("_")
    if not stem or split not in SPLITS:
        raise ValueError(f"{path}: MMLU files are named <subject>_<split>.csv with split one of "
                         f"{', '.join(SPLITS)}")
    return stem


def split_files(folder: str | Path, split: str) -> dict[str, Path]:
    """Subject name -> CSV file of `split`, sorted by subject."""
    if split not in SPLITS:
        raise ValueError(f"unknown MMLU split {split!r}; expected one of {', '.join(SPLITS)}")
    directory = Path(folder) / split
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no MMLU {split!r} folder (expected "
                                f"<folder>/{split}/<subject>_{split}.csv files)")
    files = {}
    for path in sorted(directory.glob("*.csv")):
        if not path.name.endswith(f"_{split}.csv"):
            raise ValueError(f"{path}: a file in the {split!r} folder must be named "
                             f"<subject>_{split}.csv")
        files[subject_of(path)] = path
    if not files:
        raise FileNotFoundError(f"{directory}: no <subject>_{split}.csv files")
    return files


def read_split(folder: str | Path, split: str) -> dict[str, list[Question]]:
    """Subject name -> its questions in file order."""
    files = split_files(folder, split)
    return {subject: read_csv(path, subject) for subject, path in files.items()}


def format_subject(subject: str) -> str:
    # The release's script joins words with a leading space ("about  abstract algebra."); the
    # single space here is the form most later harnesses use.
    return subject.replace("_", " ")


def format_question(question: Question, with_answer: bool) -> str:
    lines = [question.question]
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, question.options)]
    lines.append(f"Answer: {question.answer}\n\n" if with_answer else "Answer:")
    return "\n".join(lines)


def build_prompt(subject: str, shots: Sequence[Question], question: Question) -> str:
    header = (f"The following are multiple choice questions (with answers) about "
              f"{format_subject(subject)}.\n\n")
    examples = [format_question(shot, with_answer=True) for shot in shots]
    return header + "".join(examples) + format_question(question, with_answer=False)


def _few_shot_pool(folder: str | Path, subjects: Iterable[str], shots: int
                   ) -> dict[str, list[Question]]:
    if shots == 0:
        return {subject: [] for subject in subjects}
    dev_files = split_files(folder, FEW_SHOT_SPLIT)
    pool = {}
    for subject in subjects:
        if subject not in dev_files:
            raise FileNotFoundError(f"{Path(folder) / FEW_SHOT_SPLIT}: no "
                                    f"{subject}_{FEW_SHOT_SPLIT}.csv for {shots}-shot prompts")
        questions = read_csv(dev_files[subject], subject)
        if len(questions) < shots:
            raise ValueError(f"{dev_files[subject]}: {len(questions)} dev questions, but "
                             f"{shots}-shot prompts need {shots}")
        pool[subject] = questions[:shots]  # the first k, as the release's script takes them
    return pool


def build_examples(folder: str | Path, split: str = "test", shots: int = 5,
                   subjects: Sequence[str] | None = None) -> list[dict]:
    """One record per question of `split`: {"id", "subject", "inputs", "choices", "answer_index"}.

    Every question of a subject shares the same `shots` dev questions. `subjects` restricts the
    evaluation (default: every subject with a file in `split`).
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if split == FEW_SHOT_SPLIT and shots:
        raise ValueError(f"the {FEW_SHOT_SPLIT!r} split is the few-shot pool; evaluate 'val' or "
                         f"'test', or use shots=0")
    questions = read_split(folder, split)
    if subjects is not None:
        missing = sorted(set(subjects) - set(questions))
        if missing:
            raise ValueError(f"{Path(folder) / split}: no files for subjects {missing}")
        questions = {s: questions[s] for s in subjects}
    pool = _few_shot_pool(folder, questions, shots)
    return [{"id": f"{subject}/{split}/{i}", "subject": subject,
             "inputs": build_prompt(subject, pool[subject], question),
             "choices": list(CHOICES), "answer_index": question.answer_index}
            for subject, subject_questions in questions.items()
            for i, question in enumerate(subject_questions)]


def choice_rows(examples: Iterable[dict]) -> list[dict]:
    """One scoring row per (example, choice), the layout a seqio rank-classification task feeds.

    Each row's ("id", "choice_index", "is_correct") is what
    `arch_compare.evaluation.metrics.group_choice_scores` regroups after scoring.
    """
    return [{"id": example["id"], "inputs": example["inputs"], "targets": choice,
             "choice_index": c, "is_correct": c == example["answer_index"]}
            for example in examples for c, choice in enumerate(example["choices"])]
