"""Pairs, and best-of-n examples, from the target as judge of the student's answers.

The target judges every two distinct answers to a prompt in both orders
(`evaluation.judge.judge_items`); the winner of a consistent A/B verdict is chosen
(`pairs_from_judge`), or the answer with the most net wins becomes an ordinary imitation example
(`best_of_n_by_judge`, rejection sampling). Ties, "both bad", position flips (the orders
disagree), unparseable verdicts and errors decide nothing and are counted. Inputs, the cache and
the summary are as `build_common` describes.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Sequence

from arch_compare.data.conversations import ImitationExample
from arch_compare.evaluation import judge as judging
from arch_compare.evaluation.pairwise import A, BOTH_BAD, TIE
from arch_compare.imitation.targets import GenerationSettings, Prompt, Target
from arch_compare.preference.build_common import (
    BOTH_BAD_VERDICT, NO_WINNER, OVER_LIMIT, POSITION_FLIP, TARGET_ERROR, TIED, TOO_FEW_ANSWERS,
    UNPARSEABLE, BuildSummary, asked_through_cache, check_lengths, distinct_answers,
    instruction_of)
from arch_compare.preference.pairs import PreferencePair, as_prompt

_JUDGE_DROPS = {judging.INCONSISTENT: POSITION_FLIP, judging.UNPARSEABLE: UNPARSEABLE,
                judging.ERROR: TARGET_ERROR}
_VERDICT_DROPS = {TIE: TIED, BOTH_BAD: BOTH_BAD_VERDICT}


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
        distinct = distinct_answers(answers, dropped)
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
    check_lengths(prompts, samples, "pairs_from_judge")
    prompts = [as_prompt(prompt) for prompt in prompts]
    dropped: collections.Counter = collections.Counter()
    comparisons = _judge_all(asked_through_cache(judge, cache_path), prompts, samples,
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
    check_lengths(prompts, samples, "best_of_n_by_judge")
    prompts = [as_prompt(prompt) for prompt in prompts]
    dropped: collections.Counter = collections.Counter()
    comparisons = _judge_all(asked_through_cache(judge, cache_path), prompts, samples,
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
