"""The target as judge (preference.judged) with plain functions as judge: what is kept, what
is dropped and counted, and that a cached judge is never asked twice."""

import re

import pytest

from arch_compare.imitation.targets import FunctionTarget, Reply
from arch_compare.preference import judged
from arch_compare.preference.build_common import (
    BOTH_BAD_VERDICT, DUPLICATE_ANSWER, EMPTY_ANSWER, NO_WINNER, OVER_LIMIT, POSITION_FLIP,
    TARGET_ERROR, TIED, TOO_FEW_ANSWERS, UNPARSEABLE)


def shown_answers(turns):
    text = turns[-1].text
    return tuple(re.search(rf"\[Answer {label}\]\n(.*?)\n\[End of answer {label}\]", text,
                           re.DOTALL).group(1) for label in "AB")


class CountingJudge:
    """A function judge that counts the prompts it is asked."""

    def __init__(self, decide, name="judge"):
        self.calls = 0
        self.target = FunctionTarget(name, self._respond)
        self.decide = decide
        self.name = name

    def _respond(self, turns):
        self.calls += 1
        return self.decide(*shown_answers(turns))

    def complete(self, prompts, settings):
        return self.target.complete(prompts, settings)


def by_quality(first, second):
    """Prefers the answer that says "good": tie when both do, both bad when neither does."""
    verdict = {(True, False): "A", (False, True): "B", (True, True): "tie",
               (False, False): "both bad"}[("good" in first, "good" in second)]
    return f"Reasons.\nVerdict: {verdict}"


PROMPTS = ["Name a prime.", "Say hi.", "Spell cat."]
SAMPLES = [["7, a good prime.", "9.", "2, also good."],   # 2 pairs, 1 tie
           ["Bye.", "Hm."],                                # both bad
           ["cat", " cat ", ""]]                           # a duplicate and an empty answer


def test_the_target_as_judge_keeps_consistent_wins_and_counts_the_rest():
    judge = CountingJudge(by_quality)
    pairs, summary = judged.pairs_from_judge(judge, PROMPTS, SAMPLES)
    assert [(p.prompt.turns[0].text, p.chosen, p.rejected) for p in pairs] == [
        ("Name a prime.", "7, a good prime.", "9."), ("Name a prime.", "2, also good.", "9.")]
    assert [(p.meta["chosen_index"], p.meta["rejected_index"]) for p in pairs] == [(0, 1), (2, 1)]
    assert {p.source for p in pairs} == {"judge"}
    assert judge.calls == 2 * 4  # 3 + 1 comparisons, each in both orders
    assert (summary.prompts, summary.candidates, summary.kept) == (3, 4, 2)
    assert summary.dropped == {TIED: 1, BOTH_BAD_VERDICT: 1, DUPLICATE_ANSWER: 1,
                               EMPTY_ANSWER: 1, TOO_FEW_ANSWERS: 1}
    assert "2 kept from 4 candidates" in summary.describe()


@pytest.mark.parametrize("decide, reason", [
    (lambda first, second: "Verdict: A", POSITION_FLIP),  # always the first shown
    (lambda first, second: "I like both.", UNPARSEABLE),
])
def test_position_flips_and_unparseable_verdicts_give_no_pairs(decide, reason):
    pairs, summary = judged.pairs_from_judge(CountingJudge(decide), PROMPTS[:1], SAMPLES[:1])
    assert pairs == [] and summary.dropped == {reason: 3}


def test_judge_errors_are_counted():
    class Failing:
        name = "down"

        def complete(self, prompts, settings):
            return [Reply(error="HTTP 500") for _ in prompts]

    pairs, summary = judged.pairs_from_judge(Failing(), PROMPTS[:1], SAMPLES[:1])
    assert pairs == [] and summary.dropped == {TARGET_ERROR: 3}


def test_a_cached_judge_is_asked_once(tmp_path):
    cache = tmp_path / "judge.jsonl"
    first = CountingJudge(by_quality)
    pairs, _ = judged.pairs_from_judge(first, PROMPTS, SAMPLES, cache_path=cache)
    again = CountingJudge(by_quality)
    assert judged.pairs_from_judge(again, PROMPTS, SAMPLES, cache_path=cache)[0] == pairs
    assert (first.calls, again.calls) == (8, 0)
    # Best of n asks the same questions: nothing is paid twice.
    judged.best_of_n_by_judge(again, PROMPTS, SAMPLES, cache_path=cache)
    assert again.calls == 0


def test_max_pairs_per_prompt():
    pairs, summary = judged.pairs_from_judge(CountingJudge(by_quality), PROMPTS, SAMPLES,
                                             max_pairs_per_prompt=1)
    assert [p.chosen for p in pairs] == ["7, a good prime."]
    assert summary.dropped[OVER_LIMIT] == 1


def test_best_of_n_by_judge_keeps_the_answer_with_most_net_wins():
    def by_length(first, second):  # the longer answer wins, equal lengths tie
        verdict = "A" if len(first) > len(second) else "B" if len(second) > len(first) else "tie"
        return f"Verdict: {verdict}"

    samples = [["ab", "abcd", "abc"], ["xy", "zw"], ["only"]]
    examples, summary = judged.best_of_n_by_judge(CountingJudge(by_length), PROMPTS, samples)
    assert [(e.history[0].text, e.target) for e in examples] == [("Name a prime.", "abcd")]
    assert examples[0].to_features()["inputs"] == "User: Name a prime.\n\nAssistant:"
    assert summary.dropped == {TIED: 1, NO_WINNER: 1, TOO_FEW_ANSWERS: 1}


def test_lengths_must_match():
    with pytest.raises(ValueError, match="3 prompts but answers for 2"):
        judged.pairs_from_judge(CountingJudge(by_quality), PROMPTS, SAMPLES[:2])
    with pytest.raises(TypeError, match="list of strings"):
        judged.pairs_from_judge(CountingJudge(by_quality), PROMPTS[:1], ["one string"])
