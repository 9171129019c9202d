"""The automatic pairwise judge, with plain functions (`FunctionTarget`) as judges."""

import dataclasses
import math
import re

import pytest

from arch_compare.evaluation import judge as jd
from arch_compare.evaluation import pairwise as pw
from arch_compare.evaluation.pairwise import A, B, BOTH_BAD, TIE, Rating
from arch_compare.imitation.targets import FunctionTarget, Reply


def shown_answers(turns):
    """The two answers in a judge prompt, in the order shown."""
    text = turns[-1].text
    return tuple(re.search(rf"\[Answer {label}\]\n(.*?)\n\[End of answer {label}\]", text,
                           re.DOTALL).group(1) for label in "AB")


def quality_judge(turns):
    """Prefers the answer that says "good"; both bad when neither does; tie when both do."""
    first, second = ("good" in answer for answer in shown_answers(turns))
    verdict = {(True, False): "A", (False, True): "B", (True, True): "tie",
               (False, False): "both bad"}[(first, second)]
    return f"Answer {'A' if first else 'B'} is more helpful.\n\n**Verdict: {verdict}**"


ITEMS = [
    jd.PairwiseItem("i1", "Name a prime.", "llama", "7, a good prime.", "chatgpt", "Nine."),
    jd.PairwiseItem("i2", "Say hi.", "llama", "Bye.", "chatgpt", "Hi, good day!"),
    jd.PairwiseItem("i3", "Add 2+2.", "llama", "4, good.", "chatgpt", "It is 4, good."),
    jd.PairwiseItem("i4", "Spell cat.", "llama", "dog", "chatgpt", "kat"),
]


# --- parsing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, verdict", [
    ("Reasoning...\nVerdict: A", A),
    ("verdict: b", B),
    ("**Verdict:** Tie.", TIE),
    ("Verdict: **both bad**", BOTH_BAD),
    ("### Final verdict: [[B]]", B),
    ("VERDICT = both_bad", BOTH_BAD),
    ("Verdict: Both-Bad!", BOTH_BAD),
    ("`Verdict: answer a`", A),
    ("Format: 'Verdict: A'...\nI compared them.\nVerdict: B", B),  # the last line decides
])
def test_parse_verdict_tolerates_case_and_markup(reply, verdict):
    assert jd.parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", [
    "", "A is better.", "Verdict:", "Verdict: C", "Verdict: A is better than B",
    "Verdict: A or B", "The verdict is A",
])
def test_parse_verdict_returns_none_when_unreadable(reply):
    assert jd.parse_verdict(reply) is None


# --- judging --------------------------------------------------------------------------------------

def test_prompts_show_both_orders_and_ask_for_the_verdict_line():
    first, second = jd.judge_prompts(ITEMS[0])
    assert (first.prompt_id, second.prompt_id) == ("i1:ab", "i1:ba")
    assert shown_answers(first.turns) == ("7, a good prime.", "Nine.")
    assert shown_answers(second.turns) == ("Nine.", "7, a good prime.")
    assert first.turns[0].role == "system" and "Verdict: both bad" in first.turns[0].text
    assert "Name a prime." in first.turns[-1].text


def test_a_consistent_judge_gives_the_same_verdict_in_both_orders():
    judged = jd.judge_items(FunctionTarget("fair", quality_judge), ITEMS)
    assert [r.status for r in judged] == [jd.CONSISTENT] * 4
    assert [r.order_verdicts for r in judged] == [(A, B), (B, A), (TIE, TIE),
                                                  (BOTH_BAD, BOTH_BAD)]
    assert [r.verdict for r in judged] == [A, B, TIE, BOTH_BAD]
    assert [r.decision for r in judged] == ["llama", "chatgpt", TIE, BOTH_BAD]
    assert "more helpful" in judged[0].replies[0] and judged[0].errors == (None, None)
    # The records feed the ordinary statistics: llama wins 1, loses 1, ties 2.
    ratings = jd.judge_ratings(judged)
    assert list(pw.outcomes_for(ratings, "llama", "chatgpt")) == [1.0, 0.0, 0.5, 0.5]
    assert pw.position_bias(jd.judge_order_ratings(judged)).left_rate == 0.5


def test_a_judge_that_always_answers_a_makes_every_item_a_tie():
    judged = jd.judge_items(FunctionTarget("lefty", lambda turns: "Verdict: A"), ITEMS)
    assert [r.status for r in judged] == [jd.INCONSISTENT] * 4
    assert [r.verdict for r in judged] == [TIE] * 4
    assert pw.win_rate(pw.outcomes_for(jd.judge_ratings(judged), "llama"),
                       n_bootstrap=100).rate == 0.5
    bias = pw.position_bias(jd.judge_order_ratings(judged))
    assert (bias.left_rate, bias.n_decisive) == (1.0, 8)


def test_unparseable_replies_are_counted_not_tied():
    def sometimes_rambles(turns):
        return "I cannot decide." if "prime" in turns[-1].text else quality_judge(turns)

    judged = jd.judge_items(FunctionTarget("rambler", sometimes_rambles), ITEMS)
    assert judged[0].status == jd.UNPARSEABLE and judged[0].verdict is None
    assert judged[0].order_verdicts == (None, None) and judged[0].rating() is None
    assert jd.judge_summary(judged) == jd.JudgeSummary(
        items=4, consistent=3, inconsistent=0, unparseable=1, errors=0,
        unparseable_replies=2, error_replies=0)
    assert [r.item_id for r in jd.judge_ratings(judged)] == ["i2", "i3", "i4"]


@dataclasses.dataclass(frozen=True)
class FlakyJudge:
    """Fails on the swapped order of item i2, as an endpoint that ran out of retries would."""

    name: str = "flaky"

    def complete(self, prompts, settings):
        return [Reply(error="HTTP 500") if p.prompt_id == "i2:ba" else
                Reply(text=quality_judge(p.turns)) for p in prompts]


def test_error_replies_are_recorded_as_errors():
    judged = jd.judge_items(FlakyJudge(), ITEMS)
    assert judged[1].status == jd.ERROR and judged[1].errors == (None, "HTTP 500")
    assert judged[1].order_verdicts == (B, None) and judged[1].replies[1] is None
    assert len(judged[1].order_ratings()) == 1  # the readable order still shows position bias
    summary = jd.judge_summary(judged)
    assert (summary.errors, summary.error_replies, summary.unparseable_replies) == (1, 1, 0)


def test_judge_items_checks_its_inputs_and_the_judge():
    with pytest.raises(ValueError, match="item ids must be unique"):
        jd.judge_items(FunctionTarget("fair", quality_judge), [ITEMS[0], ITEMS[0]])
    with pytest.raises(ValueError, match="both outputs are from 'llama'"):
        jd.PairwiseItem("x", "Say hi.", "llama", "hi", "llama", "hello")

    @dataclasses.dataclass(frozen=True)
    class Short:
        name: str = "short"

        def complete(self, prompts, settings):
            return [Reply(text="Verdict: A")]

    with pytest.raises(RuntimeError, match="returned 1 replies for 8 prompts"):
        jd.judge_items(Short(), ITEMS)


# --- agreement with humans ------------------------------------------------------------------------

def test_agreement_with_humans_on_a_constructed_example():
    judged = jd.judge_items(FunctionTarget("fair", quality_judge), ITEMS)
    # Judge decisions: i1 llama, i2 chatgpt, i3 tie, i4 both_bad.
    humans = [
        # i1: majority llama (one rater saw llama on the right).
        Rating("i1", "h1", A, "llama", "chatgpt"), Rating("i1", "h2", B, "chatgpt", "llama"),
        Rating("i1", "h3", TIE, "llama", "chatgpt"),
        # i2: majority llama, the judge said chatgpt.
        Rating("i2", "h1", A, "llama", "chatgpt"), Rating("i2", "h2", A, "llama", "chatgpt"),
        # i3: majority tie.
        Rating("i3", "h1", TIE, "chatgpt", "llama"), Rating("i3", "h2", TIE, "llama", "chatgpt"),
        # i4: split vote (tie vs both bad), left out.
        Rating("i4", "h1", TIE, "llama", "chatgpt"),
        Rating("i4", "h2", BOTH_BAD, "llama", "chatgpt"),
        # an item the judge never saw
        Rating("i9", "h1", A, "llama", "chatgpt"),
    ]
    result = jd.agreement_with_humans(judged, humans)
    assert (result.n_items, result.n_split) == (3, 1)
    assert result.agreement == pytest.approx(2 / 3)
    # Judge (llama, chatgpt, tie) vs humans (llama, llama, tie): p_o = 2/3,
    # p_e = (1/3)(2/3) [llama] + (1/3)(0) [chatgpt] + (1/3)(1/3) [tie] = 1/3, kappa = 1/2.
    assert result.kappa == pytest.approx(0.5)

    # Merging both_bad into tie resolves i4 (tie, tie) and the judge's both_bad becomes tie too.
    merged = jd.agreement_with_humans(judged, humans, both_bad_as_tie=True)
    assert (merged.n_items, merged.n_split, merged.agreement) == (4, 0, 0.75)


def test_agreement_with_humans_without_shared_items_is_none():
    judged = jd.judge_items(FunctionTarget("fair", quality_judge), ITEMS[:1])
    assert jd.agreement_with_humans(judged, [Rating("z", "h1", A, "x", "y")]) is None
    assert math.isnan(pw.cohen_kappa([A], [A]))
