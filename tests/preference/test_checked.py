"""Execution-check builders (preference.checked) with the text2cypher task's own check on the
demo graph: passing answers chosen over failing ones, what is dropped and counted."""

import pytest

from arch_compare.evaluation import cypher
from arch_compare.preference import checked
from arch_compare.preference.build_common import ALL_FAIL, ALL_PASS, DUPLICATE_ANSWER
from arch_compare_tasks import catalogue  # noqa: F401  (registers the tasks)
from arch_compare_tasks import registry
from arch_compare_tasks import text2cypher as t2c

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
    pairs, summary = checked.pairs_from_checks(records, samples, check, pairs_per_prompt=2)
    # The first pass with the first fail, the second fail has no second pass.
    assert [(p.chosen, p.rejected) for p in pairs] == [(t2c.answer(gold[0]), wrong)]
    assert pairs[0].prompt.prompt_id == records[0]["id"] and pairs[0].source == "execution"
    assert pairs[0].inputs == records[0]["inputs"]  # what the task's model reads
    assert summary.dropped == {ALL_PASS: 1, ALL_FAIL: 1, DUPLICATE_ANSWER: 1}
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
    first = checked.pairs_from_checks(records, samples, check)
    assert first == checked.pairs_from_checks(records, samples, check)
    examples, summary = checked.best_of_n_by_checks(records, samples, check)
    assert [(e.example_id, e.target) for e in examples] == [
        (f"{records[0]['id']}:best_of_3", f"```cypher\n{gold[0]}\n```"),
        (f"{records[2]['id']}:best_of_1", gold[2])]
    assert summary.dropped == {ALL_FAIL: 1} and summary.kept == 2


def test_a_record_whose_inputs_are_not_its_prompt_is_refused():
    with pytest.raises(ValueError, match="pass the prompts explicitly"):
        checked.record_prompt({"id": "r", "prompt": "Q?", "inputs": "something else"})
