"""Preference pairs, and best-of-n examples, from the student's own answers.

Builders take the answers as input and never sample: `samples[i]` is the list of the student's
answers to prompt i. They come from the project's decoding, `decoding.search.generate` with
`DecodeConfig(method="sample", temperature=..., seed=...)` (`decoding.sampling.sample_search`),
n rounds with distinct seeds as active selection's `PoolModel.answers` draws them
(`selection.sample_seed`); the texts are what `PoolModel.answers` decodes.

- `pairs_from_judge`: the target judges every two distinct answers to a prompt in both orders
  (`evaluation.judge.judge_items`); the winner of a consistent A/B verdict is chosen. Ties,
  "both bad", position flips (the orders disagree), unparseable verdicts and errors give no pair
  and are counted.
- `pairs_from_checks`: a checker (a task's `check_fn`, e.g. text2cypher's execution of the
  query against the gold's result) splits a prompt's answers into passing and failing ones;
  a passing one is chosen over a failing one. Prompts whose answers all pass or all fail give
  no pair and are counted.
- `pairs_from_revisions`: the target critiques the student's answer and revises it
  (`REVISE_USER_TEMPLATE`); the revision is chosen over the answer (constitutional-AI style).
  Unchanged revisions, replies without a revision and errors are counted.
- `best_of_n_by_judge`, `best_of_n_by_checks`: rejection sampling, the best answer per prompt as
  an ordinary imitation example (`conversations.ImitationExample`) for the existing trainer.

A target or judge given with `cache_path` is asked through the collection cache
(`imitation.collection.CachedTarget`), as imitation data is collected: a rerun, or another
builder asking the same question with the same settings, pays for nothing twice.
Every builder returns what it kept and a `BuildSummary` of what it dropped and why.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from arch_compare.data.conversations import ImitationExample, Turn, format_history
from arch_compare.evaluation import judge as judging
from arch_compare.evaluation.pairwise import A, BOTH_BAD, TIE
from arch_compare.imitation.collection import CachedTarget
from arch_compare.imitation.targets import GenerationSettings, Prompt, Target
from arch_compare.preference.pairs import PreferencePair, as_prompt

Check = Callable[[Mapping, str], bool]  # a task's check_fn: (record, answer text) -> correct

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

_JUDGE_DROPS = {judging.INCONSISTENT: POSITION_FLIP, judging.UNPARSEABLE: UNPARSEABLE,
                judging.ERROR: TARGET_ERROR}
_VERDICT_DROPS = {TIE: TIED, BOTH_BAD: BOTH_BAD_VERDICT}


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


def _asked_through_cache(target: Target, cache_path: str | os.PathLike | None) -> Target:
    return target if cache_path is None else CachedTarget(target, Path(cache_path),
                                                          progress=False)


def _check_lengths(prompts: Sequence, samples: Sequence[Sequence[str]], what: str) -> None:
    if len(prompts) != len(samples):
        raise ValueError(f"{what}: {len(prompts)} prompts but answers for {len(samples)}")
    for index, answers in enumerate(samples):
        if isinstance(answers, str):
            raise TypeError(f"{what}: the answers to prompt {index} must be a list of strings, "
                            f"got one string")


def _distinct(answers: Sequence[str], dropped: collections.Counter) -> list[tuple[int, str]]:
    """(index, stripped text) of the non-empty answers, the first of identical ones only."""
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


# --- the target as judge --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Comparison:
    prompt: int
    first: tuple[int, str]  # (answer index, text): model_a of the judged item
    second: tuple[int, str]
    judged: judging.JudgedItem


def _judge_all(judge: Target, prompts: list[Prompt], samples: Sequence[Sequence[str]],
               settings: GenerationSettings, dropped: collections.Counter
               ) -> list[_Comparison]:
    """Every two distinct answers to each prompt, judged in both orders in one batch."""
    pending, items = [], []
    for p, (prompt, answers) in enumerate(zip(prompts, samples)):
        distinct = _distinct(answers, dropped)
        if len(distinct) < 2:
            dropped[TOO_FEW_ANSWERS] += 1
        for i, first in enumerate(distinct):
            for second in distinct[i + 1:]:
                items.append(judging.PairwiseItem(
                    f"{p}:{prompt.prompt_id}:{first[0]}-{second[0]}", instruction_of(prompt),
                    f"answer {first[0]}", first[1], f"answer {second[0]}", second[1]))
                pending.append((p, first, second))
    judged = judging.judge_items(judge, items, settings=settings) if items else []
    return [_Comparison(p, first, second, record)
            for (p, first, second), record in zip(pending, judged)]


def _decided(comparison: _Comparison, dropped: collections.Counter
             ) -> tuple[tuple[int, str], tuple[int, str]] | None:
    """(winner, loser) of a consistent A/B verdict; anything else counted and None."""
    record = comparison.judged
    if record.status != judging.CONSISTENT:
        dropped[_JUDGE_DROPS[record.status]] += 1
        return None
    if record.verdict in _VERDICT_DROPS:
        dropped[_VERDICT_DROPS[record.verdict]] += 1
        return None
    pair = (comparison.first, comparison.second)
    return pair if record.verdict == A else pair[::-1]


def pairs_from_judge(judge: Target, prompts: Sequence[Prompt | str],
                     samples: Sequence[Sequence[str]], *,
                     settings: GenerationSettings = judging.DEFAULT_JUDGE_SETTINGS,
                     cache_path: str | os.PathLike | None = None,
                     max_pairs_per_prompt: int | None = None
                     ) -> tuple[list[PreferencePair], BuildSummary]:
    """A pair for every two distinct answers to a prompt on which the judge, asked in both
    orders, consistently prefers one (see the module doc). Pairs come in prompt order, then
    answer order; `max_pairs_per_prompt` keeps the first that many of a prompt. `meta` keeps the
    answers' indices and the judge's name. Candidates are comparisons."""
    _check_lengths(prompts, samples, "pairs_from_judge")
    prompts = [as_prompt(prompt) for prompt in prompts]
    dropped: collections.Counter = collections.Counter()
    comparisons = _judge_all(_asked_through_cache(judge, cache_path), prompts, samples,
                             settings, dropped)
    pairs, per_prompt = [], collections.Counter()
    for comparison in comparisons:
        decided = _decided(comparison, dropped)
        if decided is None:
            continue
        if (max_pairs_per_prompt is not None
                and per_prompt[comparison.prompt] >= max_pairs_per_prompt):
            dropped[OVER_LIMIT] += 1
            continue
        (win_index, winner), (lose_index, loser) = decided
        per_prompt[comparison.prompt] += 1
        pairs.append(PreferencePair(prompts[comparison.prompt], winner, loser, "judge",
                                    {"chosen_index": win_index, "rejected_index": lose_index,
                                     "judge": judge.name}))
    return pairs, BuildSummary("target as judge", len(prompts), len(comparisons), len(pairs),
                               dropped)


def best_of_n_by_judge(judge: Target, prompts: Sequence[Prompt | str],
                       samples: Sequence[Sequence[str]], *,
                       settings: GenerationSettings = judging.DEFAULT_JUDGE_SETTINGS,
                       cache_path: str | os.PathLike | None = None
                       ) -> tuple[list[ImitationExample], BuildSummary]:
    """Rejection sampling by the judge: per prompt, the answer with the most wins minus losses
    over its decided comparisons (ties: the earlier answer), kept only if that score is above
    zero, i.e. the judge preferred it at least once on balance. Candidates are comparisons;
    prompts with no such answer count as `NO_WINNER`."""
    _check_lengths(prompts, samples, "best_of_n_by_judge")
    prompts = [as_prompt(prompt) for prompt in prompts]
    dropped: collections.Counter = collections.Counter()
    comparisons = _judge_all(_asked_through_cache(judge, cache_path), prompts, samples,
                             settings, dropped)
    scores: dict[int, dict[tuple[int, str], int]] = collections.defaultdict(dict)
    for comparison in comparisons:
        board = scores[comparison.prompt]
        for answer in (comparison.first, comparison.second):
            board.setdefault(answer, 0)
        decided = _decided(comparison, dropped)
        if decided is not None:
            board[decided[0]] += 1
            board[decided[1]] -= 1
    examples = []
    for p, prompt in enumerate(prompts):
        if p not in scores:
            continue  # counted as TOO_FEW_ANSWERS
        (index, text), score = max(scores[p].items(), key=lambda item: (item[1], -item[0][0]))
        if score <= 0:
            dropped[NO_WINNER] += 1
            continue
        examples.append(ImitationExample(f"{prompt.prompt_id}:best_of_{len(samples[p])}",
                                         prompt.turns, text, f"best of n by {judge.name}"))
    return examples, BuildSummary("best of n by judge", len(prompts), len(comparisons),
                                  len(examples), dropped)


# --- execution checks -----------------------------------------------------------------------

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
        for index, text in _distinct(answers, dropped):
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
    _check_lengths(records, samples, "pairs_from_checks")
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_from_checks: pairs_per_prompt must be >= 1, got "
                         f"{pairs_per_prompt}")
    prompts = [as_prompt(p) for p in prompts] if prompts is not None else [
        record_prompt(record) for record in records]
    _check_lengths(prompts, samples, "pairs_from_checks (prompts)")
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
    _check_lengths(records, samples, "best_of_n_by_checks")
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


# --- critique and revise --------------------------------------------------------------------

REVISE_SYSTEM_PROMPT = """\
You improve answers. You will see a user's instruction and an assistant's answer to it. First \
point out, in a few sentences, what is wrong or missing in the answer: mistakes, unhelpful or \
harmful content, parts of the instruction it ignores. Then write the answer as it should have \
been, complete and self-contained, keeping what was already right. Write it after one line that \
is exactly:
Revised answer:
Write nothing after the revised answer. If the answer needs no change, repeat it unchanged."""

# Placeholders: {instruction}, {answer}.
REVISE_USER_TEMPLATE = """\
[Instruction]
{instruction}

[Answer]
{answer}
[End of answer]"""

REVISION_MARKER = "Revised answer:"
# The last marker line decides (the critique may quote the format first); markup around it is
# tolerated as the judge's verdict line tolerates it.
_MARKER_LINE = re.compile(r"^[\s*#_`>]*revised answer\s*:[\s*_`]*", re.IGNORECASE | re.MULTILINE)
DEFAULT_REVISE_SETTINGS = GenerationSettings(max_tokens=1024, temperature=0.0)


def revise_prompt(prompt: Prompt, answer: str, index: int = 0) -> Prompt:
    """What the target is asked to critique and revise `answer` to `prompt`."""
    user = REVISE_USER_TEMPLATE.format(instruction=instruction_of(prompt), answer=answer)
    return Prompt(f"{prompt.prompt_id}:revise:{index}",
                  (Turn("system", REVISE_SYSTEM_PROMPT), Turn("user", user)))


def parse_revision(reply: str) -> str | None:
    """The text after the last `Revised answer:` line (None if there is none or it is empty)."""
    markers = list(_MARKER_LINE.finditer(reply))
    if not markers:
        return None
    revision = reply[markers[-1].end():].strip()
    return revision or None


def pairs_from_revisions(target: Target, prompts: Sequence[Prompt | str], answers: Sequence[str],
                         *, settings: GenerationSettings = DEFAULT_REVISE_SETTINGS,
                         cache_path: str | os.PathLike | None = None
                         ) -> tuple[list[PreferencePair], BuildSummary]:
    """The target's revision of the student's answer (chosen) over that answer (rejected), one
    per prompt. Empty answers are not sent; error replies, replies without a revision and
    revisions identical to the answer (surrounding and repeated whitespace ignored) are dropped
    and counted. `meta` keeps the target's critique. Candidates are answers sent."""
    if len(prompts) != len(answers):
        raise ValueError(f"pairs_from_revisions: {len(prompts)} prompts but {len(answers)} "
                         f"answers")
    prompts = [as_prompt(prompt) for prompt in prompts]
    dropped: collections.Counter = collections.Counter()
    asked = []
    for prompt, answer in zip(prompts, answers):
        if answer.strip():
            asked.append((prompt, answer.strip()))
        else:
            dropped[EMPTY_ANSWER] += 1
    requests = [revise_prompt(prompt, answer, index)
                for index, (prompt, answer) in enumerate(asked)]
    reviser = _asked_through_cache(target, cache_path)
    replies = reviser.complete(requests, settings) if requests else []
    if len(replies) != len(requests):
        raise RuntimeError(f"target {target.name!r} returned {len(replies)} replies for "
                           f"{len(requests)} prompts")
    pairs = []
    for (prompt, answer), reply in zip(asked, replies):
        if reply.error is not None:
            dropped[TARGET_ERROR] += 1
            continue
        revision = parse_revision(reply.text or "")
        if revision is None:
            dropped[NO_REVISION] += 1
        elif " ".join(revision.split()) == " ".join(answer.split()):
            dropped[UNCHANGED] += 1
        else:
            marker = list(_MARKER_LINE.finditer(reply.text))[-1]
            pairs.append(PreferencePair(prompt, revision, answer, "revision",
                                        {"critique": reply.text[:marker.start()].strip(),
                                         "reviser": target.name}))
    return pairs, BuildSummary("critique and revise", len(prompts), len(requests), len(pairs),
                               dropped)
