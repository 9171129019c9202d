"""Pairs, and best-of-n examples, from a task's check of the student's answers.

A checker (a task's `check_fn`, e.g. text2cypher's execution of the query against the gold's
result) splits a prompt's answers into passing and failing ones: a passing one is chosen over a
failing one (`pairs_from_checks`), or the first passing one becomes an ordinary imitation
example (`best_of_n_by_checks`, rejection sampling). Prompts whose answers all pass or all fail
give no pair and are counted. Inputs and the summary are as `build_common` describes.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping, Sequence

from arch_compare.data.conversations import ImitationExample, format_history
from arch_compare.imitation.targets import Prompt
from arch_compare.preference.build_common import (ALL_FAIL, ALL_PASS, TOO_FEW_ANSWERS,
                                                  BuildSummary, check_lengths,
                                                  distinct_answers)
from arch_compare.preference.pairs import PreferencePair, as_prompt

Check = Callable[[Mapping, str], bool]  # a task's check_fn: (record, answer text) -> correct


def record_prompt(record: Mapping) -> Prompt:
    """The chat prompt of a prompts-task record (`id`, and `prompt`: the user's text), checked to
    render to the record's `inputs` when it has them, so the pair reads what the task reads."""
    for key in ("id", "prompt"):
        if key not in record:
            raise KeyError(f"record {record.get('id', '?')!r} has no {key!r} (a prompts task "
                           f"record carries its id and the user's text)")
    prompt = Prompt.from_text(_text(record["id"]), _text(record["prompt"]))
    if "inputs" in record:
        if format_history(prompt.turns) != _text(record["inputs"]):
            raise ValueError(f"record {prompt.prompt_id!r}: its 'inputs' are not its 'prompt' "
                             f"as one user turn; pass the prompts explicitly")
    return prompt


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _checked(records: Sequence[Mapping], samples: Sequence[Sequence[str]], check: Check,
             dropped: collections.Counter) -> list[tuple[list, list]]:
    """Per record: (passing, failing) distinct (index, text) answers, in answer order."""
    split = []
    for record, answers in zip(records, samples):
        passing, failing = [], []
        for index, text in distinct_answers(answers, dropped):
            (passing if check(record, text) else failing).append((index, text))
        split.append((passing, failing))
    return split


def _check_drop(passing: list, failing: list, dropped: collections.Counter) -> bool:
    if not passing and not failing:
        dropped[TOO_FEW_ANSWERS] += 1
    elif not failing:
        dropped[ALL_PASS] += 1
    elif not passing:
        dropped[ALL_FAIL] += 1
    return not (passing and failing)


def pairs_from_checks(records: Sequence[Mapping], samples: Sequence[Sequence[str]],
                      check: Check, *, prompts: Sequence[Prompt | str] | None = None,
                      pairs_per_prompt: int = 1) -> tuple[list[PreferencePair], BuildSummary]:
    """Pairs of a passing (chosen) and a failing (rejected) answer to each record, by `check`
    (a task's `check_fn`, `arch_compare_tasks.registry.checker(task)`; for text2cypher it
    executes both queries on the graph and compares results, `evaluation.cypher.results_match`).

    Deterministic: the k-th distinct passing answer is paired with the k-th distinct failing
    one, in answer order, for k < `pairs_per_prompt`. Prompts are `record_prompt(record)` unless
    `prompts` gives them. Prompts with only passing or only failing answers are dropped and
    counted (`ALL_PASS`, `ALL_FAIL`). Candidates are distinct answers checked."""
    check_lengths(records, samples, "pairs_from_checks")
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_from_checks: pairs_per_prompt must be >= 1, got "
                         f"{pairs_per_prompt}")
    prompts = [as_prompt(p) for p in prompts] if prompts is not None else [
        record_prompt(record) for record in records]
    check_lengths(prompts, samples, "pairs_from_checks (prompts)")
    dropped: collections.Counter = collections.Counter()
    split = _checked(records, samples, check, dropped)
    pairs = []
    for prompt, (passing, failing) in zip(prompts, split):
        if _check_drop(passing, failing, dropped):
            continue
        for (good_index, good), (bad_index, bad) in list(zip(passing, failing))[
                :pairs_per_prompt]:
            pairs.append(PreferencePair(prompt, good, bad, "execution", {
                "chosen_index": good_index, "rejected_index": bad_index}))
    candidates = sum(len(passing) + len(failing) for passing, failing in split)
    return pairs, BuildSummary("execution checks", len(records), candidates, len(pairs), dropped)


def best_of_n_by_checks(records: Sequence[Mapping], samples: Sequence[Sequence[str]],
                        check: Check, *, prompts: Sequence[Prompt | str] | None = None
                        ) -> tuple[list[ImitationExample], BuildSummary]:
    """Rejection sampling by a checker: the first passing answer per record as an imitation
    example; records none of whose answers pass are dropped (`ALL_FAIL`). Candidates are
    distinct answers checked."""
    check_lengths(records, samples, "best_of_n_by_checks")
    prompts = [as_prompt(p) for p in prompts] if prompts is not None else [
        record_prompt(record) for record in records]
    dropped: collections.Counter = collections.Counter()
    split = _checked(records, samples, check, dropped)
    examples = []
    for prompt, answers, (passing, failing) in zip(prompts, samples, split):
        if not passing:
            dropped[ALL_FAIL if failing else TOO_FEW_ANSWERS] += 1
            continue
        examples.append(ImitationExample(f"{prompt.prompt_id}:best_of_{len(answers)}",
                                         prompt.turns, passing[0][1], "best of n by checks"))
    candidates = sum(len(passing) + len(failing) for passing, failing in split)
    return examples, BuildSummary("best of n by checks", len(records), candidates,
                                  len(examples), dropped)
