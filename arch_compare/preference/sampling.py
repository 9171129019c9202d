"""The student's sampled answers, the input of every preference builder, and the step from a
prompts task to pairs or best-of-n examples.

    answers = student_answers(model, params, vocabulary, prompts, samples=4, temperature=1.0,
                              seed=0, feature_lengths={"inputs": 256, "targets": 128},
                              batch_size=32, max_new_tokens=128)
    answers[i][k]  # the k-th sampled answer to prompt i (text)

The answers are drawn exactly as active selection draws them (`imitation.pool_model.PoolModel`):
the prompt is rendered as imitation data renders it (`conversations.format_history` of its
turns, the `inputs` text), tokenised and trimmed to the inputs feature length with EOS appended
(seqio's `append_eos_after_trim`: a prompt longer than that length is cut, as in training, and
counted in the log), converted by the model's own feature converter and decoded by
`decoding.search.generate`. Round k of `samples` samples batch b with the seed
`selection.sample_seed(seed, k, b)`, so one seed gives the same answers every time and every
round and batch differ. Temperature 0 means greedy decoding: every round would give the same
answer, so it is decoded once and repeated (the builders count the copies as duplicates).

The task helpers read a prompts task's records (`registry.records`, e.g. `demo_cypher_prompts`),
sample the student's answers to them and build preference pairs (written as JSONL when given a
path) or best-of-n examples, each with the builder's `BuildSummary`: by the task's checker
(`registry.checker(task)`; `pairs_for_task`, `best_of_n_for_task`) or by the target as judge
(`judged_pairs_for_task`, `judged_best_of_n_for_task`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Mapping, Sequence

import seqio
from jax.sharding import Mesh

from arch_compare.data.conversations import ImitationExample, format_history
from arch_compare.imitation.pool_model import TEXT_FEATURES, PoolModel
from arch_compare.imitation.selection import sample_seed
from arch_compare.evaluation import judge as judging
from arch_compare.imitation.targets import GenerationSettings, Prompt, Target
from arch_compare.models.model import BaseModel, Params
from arch_compare.preference import checked, judged
from arch_compare.preference.build_common import BuildSummary
from arch_compare.preference.pairs import PreferencePair, as_prompt, write_pairs
from arch_compare_tasks import registry

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StudentSampling:
    """How the student answers each prompt: `samples` answers at `temperature` (0: greedy) from
    `seed`; prompts and answers read with `feature_lengths` (`inputs`, `targets`), `batch_size`
    prompts per decoding call, at most `max_new_tokens` tokens per answer."""

    samples: int
    temperature: float
    seed: int
    feature_lengths: Mapping[str, int]
    batch_size: int
    max_new_tokens: int

    def __post_init__(self):
        for name in ("samples", "batch_size", "max_new_tokens"):
            _check_count(name, getattr(self, name), minimum=1)
        _check_count("seed", self.seed, minimum=0)
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float))
                or not math.isfinite(self.temperature) or self.temperature < 0):
            raise ValueError(f"StudentSampling.temperature must be a finite number >= 0 "
                             f"(0: greedy), got {self.temperature!r}")
        missing = [name for name in TEXT_FEATURES if name not in self.feature_lengths]
        if missing:
            raise KeyError(f"StudentSampling.feature_lengths needs {', '.join(missing)}; got "
                           f"{', '.join(self.feature_lengths) or 'none'}")
        for name in TEXT_FEATURES:
            _check_count(f"feature_lengths[{name!r}]", self.feature_lengths[name], minimum=2)
        object.__setattr__(self, "feature_lengths",
                           {name: int(self.feature_lengths[name]) for name in TEXT_FEATURES})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_count(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"StudentSampling.{name} must be an integer >= {minimum}, got "
                         f"{value!r}")


def student_answers(model: BaseModel, params: Params, vocabulary: seqio.Vocabulary,
                    prompts: Sequence[Prompt | str], *, samples: int, temperature: float,
                    seed: int, feature_lengths: Mapping[str, int], batch_size: int,
                    max_new_tokens: int, mesh: Mesh | None = None, progress: bool = True
                    ) -> list[list[str]]:
    """`samples` answers (texts) per prompt, `result[i][k]` being round k's answer to prompt i
    (see the module doc). A prompt is a `Prompt` or one user turn's text; `mesh` as for
    `decoding.search.generate`."""
    sampling = StudentSampling(samples, temperature, seed, feature_lengths, batch_size,
                               max_new_tokens)
    return sampled_answers(model, params, vocabulary, prompts, sampling, mesh=mesh,
                           progress=progress)


def sampled_answers(model: BaseModel, params: Params, vocabulary: seqio.Vocabulary,
                    prompts: Sequence[Prompt | str], sampling: StudentSampling, *,
                    mesh: Mesh | None = None, progress: bool = True) -> list[list[str]]:
    """`student_answers` with its settings as one `StudentSampling`."""
    if not prompts:
        raise ValueError("student_answers: no prompts given")
    inputs = [format_history(as_prompt(prompt).turns) for prompt in prompts]
    pool = PoolModel(model, params, vocabulary, inputs, feature_lengths=sampling.feature_lengths,
                     batch_size=sampling.batch_size, max_new_tokens=sampling.max_new_tokens,
                     mesh=mesh, progress=progress)
    room = sampling.feature_lengths["inputs"] - 1  # append_eos_after_trim keeps one for EOS
    trimmed = sum(len(tokens) > room for tokens in pool.inputs)
    if trimmed:
        log.warning("%d of %d prompts are longer than the inputs feature length (%d tokens "
                    "with EOS) and were cut to it, as training cuts them", trimmed, len(inputs),
                    sampling.feature_lengths["inputs"])
    if sampling.greedy:
        texts = pool.greedy().texts
        return [[text] * sampling.samples for text in texts]
    rounds = []
    for sample in range(sampling.samples):
        def config(batch: int, sample: int = sample):
            return pool.decode_config(method="sample", temperature=float(sampling.temperature),
                                      seed=sample_seed(sampling.seed, sample, batch))
        rounds.append(pool.answers(config, f"student samples {sample + 1}/{sampling.samples}")
                      .texts)
    return [list(answers) for answers in zip(*rounds)]


# --- from a prompts task ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TaskAnswers:
    """A prompts task's records (in task order), their prompts, and the student's answers."""

    task: str
    records: tuple[Mapping, ...]
    prompts: tuple[Prompt, ...]
    samples: tuple[tuple[str, ...], ...]


def task_records(task: str, *, split: str = "train", limit: int | None = None
                 ) -> tuple[Mapping, ...]:
    """The first `limit` (None: all) records of a prompts task's split."""
    records = registry.records(task, split)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"task {task!r}: limit must be a positive integer or None, got "
                             f"{limit!r}")
        records = records[:limit]
    if not records:
        raise ValueError(f"task {task!r} split {split!r} has no records")
    return tuple(records)


def answers_for_task(task: str, model: BaseModel, params: Params,
                     vocabulary: seqio.Vocabulary, sampling: StudentSampling, *,
                     split: str = "train", limit: int | None = None, mesh: Mesh | None = None,
                     progress: bool = True) -> TaskAnswers:
    """The student's answers to the task's records; each record's prompt is its `prompt` as one
    user turn (`checked.record_prompt`, which refuses a record whose `inputs` render otherwise),
    so the student reads the task's own `inputs`."""
    records = task_records(task, split=split, limit=limit)
    prompts = tuple(checked.record_prompt(record) for record in records)
    samples = sampled_answers(model, params, vocabulary, prompts, sampling, mesh=mesh,
                              progress=progress)
    return TaskAnswers(task, records, prompts, tuple(tuple(answers) for answers in samples))


def pairs_for_task(task: str, model: BaseModel, params: Params, vocabulary: seqio.Vocabulary,
                   sampling: StudentSampling, *, split: str = "train", limit: int | None = None,
                   pairs_per_prompt: int = 1, path: str | os.PathLike | None = None,
                   mesh: Mesh | None = None, progress: bool = True
                   ) -> tuple[list[PreferencePair], BuildSummary]:
    """Pairs of a passing (chosen) and a failing (rejected) student answer per record, by the
    task's checker (`checked.pairs_from_checks`); written to `path` as JSONL when given."""
    check = registry.checker(task)  # before any model work: a task without one is named
    answers = answers_for_task(task, model, params, vocabulary, sampling, split=split,
                               limit=limit, mesh=mesh, progress=progress)
    pairs, summary = checked.pairs_from_checks(answers.records, answers.samples, check,
                                               prompts=answers.prompts,
                                               pairs_per_prompt=pairs_per_prompt)
    return _logged(task, pairs, summary, path)


def best_of_n_for_task(task: str, model: BaseModel, params: Params,
                       vocabulary: seqio.Vocabulary, sampling: StudentSampling, *,
                       split: str = "train", limit: int | None = None,
                       mesh: Mesh | None = None, progress: bool = True
                       ) -> tuple[list[ImitationExample], BuildSummary]:
    """Rejection sampling: per record, the student's first answer the task's checker passes, as
    an imitation example (`checked.best_of_n_by_checks`)."""
    check = registry.checker(task)
    answers = answers_for_task(task, model, params, vocabulary, sampling, split=split,
                               limit=limit, mesh=mesh, progress=progress)
    examples, summary = checked.best_of_n_by_checks(answers.records, answers.samples, check,
                                                    prompts=answers.prompts)
    return _logged(task, examples, summary)


def judged_pairs_for_task(task: str, judge: Target, model: BaseModel, params: Params,
                          vocabulary: seqio.Vocabulary, sampling: StudentSampling, *,
                          split: str = "train", limit: int | None = None,
                          settings: GenerationSettings = judging.DEFAULT_JUDGE_SETTINGS,
                          cache_path: str | os.PathLike | None = None,
                          max_pairs_per_prompt: int | None = None,
                          path: str | os.PathLike | None = None, mesh: Mesh | None = None,
                          progress: bool = True) -> tuple[list[PreferencePair], BuildSummary]:
    """Pairs of the student's answers on which `judge` (the target), asked in both orders,
    consistently prefers one (`judged.pairs_from_judge`; asked through the collection cache at
    `cache_path` when given); written to `path` as JSONL when given."""
    answers = answers_for_task(task, model, params, vocabulary, sampling, split=split,
                               limit=limit, mesh=mesh, progress=progress)
    pairs, summary = judged.pairs_from_judge(judge, answers.prompts, answers.samples,
                                             settings=settings, cache_path=cache_path,
                                             max_pairs_per_prompt=max_pairs_per_prompt)
    return _logged(task, pairs, summary, path)


def judged_best_of_n_for_task(task: str, judge: Target, model: BaseModel, params: Params,
                              vocabulary: seqio.Vocabulary, sampling: StudentSampling, *,
                              split: str = "train", limit: int | None = None,
                              settings: GenerationSettings = judging.DEFAULT_JUDGE_SETTINGS,
                              cache_path: str | os.PathLike | None = None,
                              mesh: Mesh | None = None, progress: bool = True
                              ) -> tuple[list[ImitationExample], BuildSummary]:
    """Rejection sampling by the judge: per record, the student's answer with the most net wins
    (`judged.best_of_n_by_judge`)."""
    answers = answers_for_task(task, model, params, vocabulary, sampling, split=split,
                               limit=limit, mesh=mesh, progress=progress)
    examples, summary = judged.best_of_n_by_judge(judge, answers.prompts, answers.samples,
                                                  settings=settings, cache_path=cache_path)
    return _logged(task, examples, summary)


def _logged(task: str, kept: list, summary: BuildSummary,
            path: str | os.PathLike | None = None) -> tuple[list, BuildSummary]:
    """`kept` and `summary`, the summary logged and the pairs written to `path` when given
    (also when there are none, so a rerun finds the file it expects)."""
    log.info("%s: %s", task, summary.describe())
    if path is not None:
        write_pairs(path, kept)
    return kept, summary
