"""Pair builders with plain functions as judge and reviser, and the text2cypher task's own
execution check on the demo graph: what is kept, what is dropped and counted, and that a cached
target is never asked twice."""

import re

import pytest

from arch_compare.evaluation import cypher
from arch_compare.imitation.targets import FunctionTarget, Prompt, Reply
from arch_compare.preference import builders as bd
from arch_compare_tasks import catalogue  # noqa: F401  (registers the tasks)
from arch_compare_tasks import registry
from arch_compare_tasks import text2cypher as t2c


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
    pairs, summary = bd.pairs_from_judge(judge, PROMPTS, SAMPLES)
    assert [(p.prompt.turns[0].text, p.chosen, p.rejected) for p in pairs] == [
        ("Name a prime.", "7, a good prime.", "9."), ("Name a prime.", "2, also good.", "9.")]
    assert [(p.meta["chosen_index"], p.meta["rejected_index"]) for p in pairs] == [(0, 1), (2, 1)]
    assert {p.source for p in pairs} == {"judge"}
    assert judge.calls == 2 * 4  # 3 + 1 comparisons, each in both orders
    assert (summary.prompts, summary.candidates, summary.kept) == (3, 4, 2)
    assert summary.dropped == {bd.TIED: 1, bd.BOTH_BAD_VERDICT: 1, bd.DUPLICATE_ANSWER: 1,
                               bd.EMPTY_ANSWER: 1, bd.TOO_FEW_ANSWERS: 1}
    assert "2 kept from 4 candidates" in summary.describe()


@pytest.mark.parametrize("decide, reason", [
    (lambda first, second: "Verdict: A", bd.POSITION_FLIP),  # always the first shown
    (lambda first, second: "I like both.", bd.UNPARSEABLE),
])
def test_position_flips_and_unparseable_verdicts_give_no_pairs(decide, reason):
    pairs, summary = bd.pairs_from_judge(CountingJudge(decide), PROMPTS[:1], SAMPLES[:1])
    assert pairs == [] and summary.dropped == {reason: 3}


def test_judge_errors_are_counted():
    class Failing:
        name = "down"

        def complete(self, prompts, settings):
            return [Reply(error="HTTP 500") for _ in prompts]

    pairs, summary = bd.pairs_from_judge(Failing(), PROMPTS[:1], SAMPLES[:1])
    assert pairs == [] and summary.dropped == {bd.TARGET_ERROR: 3}


def test_a_cached_judge_is_asked_once(tmp_path):
    cache = tmp_path / "judge.jsonl"
    first = CountingJudge(by_quality)
    pairs, _ = bd.pairs_from_judge(first, PROMPTS, SAMPLES, cache_path=cache)
    again = CountingJudge(by_quality)
    assert bd.pairs_from_judge(again, PROMPTS, SAMPLES, cache_path=cache)[0] == pairs
    assert (first.calls, again.calls) == (8, 0)
    # Best of n asks the same questions: nothing is paid twice.
    bd.best_of_n_by_judge(again, PROMPTS, SAMPLES, cache_path=cache)
    assert again.calls == 0


def test_max_pairs_per_prompt():
    pairs, summary = bd.pairs_from_judge(CountingJudge(by_quality), PROMPTS, SAMPLES,
                                         max_pairs_per_prompt=1)
    assert [p.chosen for p in pairs] == ["7, a good prime."]
    assert summary.dropped[bd.OVER_LIMIT] == 1


def test_best_of_n_by_judge_keeps_the_answer_with_most_net_wins():
    def by_length(first, second):  # the longer answer wins, equal lengths tie
        verdict = "A" if len(first) > len(second) else "B" if len(second) > len(first) else "tie"
        return f"Verdict: {verdict}"

    samples = [["ab", "abcd", "abc"], ["xy", "zw"], ["only"]]
    examples, summary = bd.best_of_n_by_judge(CountingJudge(by_length), PROMPTS, samples)
    assert [(e.history[0].text, e.target) for e in examples] == [("Name a prime.", "abcd")]
    assert examples[0].to_features()["inputs"] == "User: Name a prime.\n\nAssistant:"
    assert summary.dropped == {bd.TIED: 1, bd.NO_WINNER: 1, bd.TOO_FEW_ANSWERS: 1}


def test_lengths_must_match():
    with pytest.raises(ValueError, match="3 prompts but answers for 2"):
        bd.pairs_from_judge(CountingJudge(by_quality), PROMPTS, SAMPLES[:2])
    with pytest.raises(TypeError, match="list of strings"):
        bd.pairs_from_judge(CountingJudge(by_quality), PROMPTS[:1], ["one string"])


# --- execution checks on the text2cypher demo graph -----------------------------------------

TASK = "demo_cypher_prompts"


@pytest.fixture(scope="module")
def cypher_prompts():
    """Three prompt records (no gold in them) and their questions' gold queries."""
    records = registry.records(TASK, "train")[:3]
    gold = {q.id: q.query for q in t2c.questions("train")[:3]}
    return records, [gold[record["id"]] for record in records]


def test_execution_checks_pair_a_passing_with_a_failing_answer(cypher_prompts):
    records, gold = cypher_prompts
    wrong = "MATCH (c:Country) RETURN c.name"
    samples = [[wrong, t2c.answer(gold[0]), t2c.answer(gold[0]), "MATCH (x) RETURN nothing("],
               [t2c.answer(gold[1]), gold[1]],  # both right (the fence does not matter)
               [wrong, "not Cypher at all"]]
    check = registry.checker(TASK)
    pairs, summary = bd.pairs_from_checks(records, samples, check, pairs_per_prompt=2)
    # The first pass with the first fail, the second fail has no second pass.
    assert [(p.chosen, p.rejected) for p in pairs] == [(t2c.answer(gold[0]), wrong)]
    assert pairs[0].prompt.prompt_id == records[0]["id"] and pairs[0].source == "execution"
    assert pairs[0].inputs == records[0]["inputs"]  # what the task's model reads
    assert summary.dropped == {bd.ALL_PASS: 1, bd.ALL_FAIL: 1, bd.DUPLICATE_ANSWER: 1}
    assert (summary.prompts, summary.candidates, summary.kept) == (3, 7, 1)
    # Independently of the checker: kuzu's rows for the chosen query are the gold's, the
    # rejected query's are not.
    graph = t2c.demo_graph()
    rows = lambda query: sorted(map(repr, graph.run(query).rows))  # noqa: E731
    assert rows(cypher.extract_query(pairs[0].chosen)) == rows(gold[0])
    assert rows(cypher.extract_query(pairs[0].rejected)) != rows(gold[0])


def test_execution_pairs_are_deterministic_and_best_of_n_keeps_the_first_pass(cypher_prompts):
    records, gold = cypher_prompts
    check = registry.checker(TASK)
    samples = [["MATCH (c:Country) RETURN c.name", f"```cypher\n{gold[0]}\n```", gold[0]]
               for _ in range(1)] + [["RETURN 1"], [gold[2]]]
    first = bd.pairs_from_checks(records, samples, check)
    assert first == bd.pairs_from_checks(records, samples, check)
    examples, summary = bd.best_of_n_by_checks(records, samples, check)
    assert [(e.example_id, e.target) for e in examples] == [
        (f"{records[0]['id']}:best_of_3", f"```cypher\n{gold[0]}\n```"),
        (f"{records[2]['id']}:best_of_1", gold[2])]
    assert summary.dropped == {bd.ALL_FAIL: 1} and summary.kept == 2


def test_a_record_whose_inputs_are_not_its_prompt_is_refused():
    with pytest.raises(ValueError, match="pass the prompts explicitly"):
        bd.record_prompt({"id": "r", "prompt": "Q?", "inputs": "something else"})


# --- critique and revise ---------------------------------------------------------------------

def reviser(turns):
    """Revises by appending detail; leaves "fine" answers alone; forgets the marker on "odd"."""
    answer = re.search(r"\[Answer\]\n(.*?)\n\[End of answer\]", turns[-1].text, re.DOTALL)[1]
    if "fine" in answer:
        return f"Nothing to fix.\n**Revised answer:**\n{answer}"
    if "odd" in answer:
        return "It is odd."
    return f"Too short.\nRevised answer:\n{answer} Because it is so."


def test_revisions_are_preferred_and_unchanged_or_missing_ones_counted(tmp_path):
    prompts = [Prompt.from_text("q1", "Why is the sky blue?"), "Is it fine?", "Odd?", "Empty?"]
    answers = ["Scattering.", "It is fine.", "odd one", " "]
    calls = []
    target = FunctionTarget("teacher", lambda turns: calls.append(1) or reviser(turns))
    pairs, summary = bd.pairs_from_revisions(target, prompts, answers,
                                             cache_path=tmp_path / "cache.jsonl")
    assert [(p.prompt.prompt_id, p.chosen, p.rejected) for p in pairs] == [
        ("q1", "Scattering. Because it is so.", "Scattering.")]
    assert pairs[0].meta == {"critique": "Too short.", "reviser": "teacher"}
    assert summary.dropped == {bd.EMPTY_ANSWER: 1, bd.UNCHANGED: 1, bd.NO_REVISION: 1}
    assert (summary.candidates, len(calls)) == (3, 3)
    again = bd.pairs_from_revisions(target, prompts, answers, cache_path=tmp_path / "cache.jsonl")
    assert again[0] == pairs and len(calls) == 3  # cached: asked once


def test_the_revise_prompt_carries_the_instruction_and_the_answer():
    prompt = bd.revise_prompt(Prompt.from_text("q", "Add 2 and 2."), "5")
    assert prompt.turns[0].role == "system" and bd.REVISION_MARKER in prompt.turns[0].text
    assert "[Instruction]\nAdd 2 and 2." in prompt.turns[1].text
    assert "[Answer]\n5\n[End of answer]" in prompt.turns[1].text


@pytest.mark.parametrize("reply, revision", [
    ("Critique.\nRevised answer:\nBetter.", "Better."),
    ("Format: Revised answer: ...\nRevised answer: Best.", "Best."),
    ("## Revised Answer:\n\nMulti\nline.", "Multi\nline."),
    ("No marker here.", None),
    ("Revised answer:\n   ", None),
])
def test_parse_revision(reply, revision):
    assert bd.parse_revision(reply) == revision
