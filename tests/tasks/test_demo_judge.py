"""The demo target as a judge, through the judge's own protocol (`evaluation/judge.py`)."""

from arch_compare.evaluation.judge import PairwiseItem, judge_items, judge_summary
from arch_compare.imitation.targets import FunctionTarget
from arch_compare_tasks import demo_judge
from arch_compare_tasks import text2cypher as t2c

TARGET = FunctionTarget("demo-target", t2c.target_respond)


def _verdicts(items):
    judged = judge_items(TARGET, [PairwiseItem(f"i{n}", instruction, "x", a, "y", b)
                                  for n, (instruction, a, b) in enumerate(items)])
    assert judge_summary(judged).consistent == len(items)  # both orders agree
    return [record.decision for record in judged]


def test_cypher_answers_are_judged_by_what_their_queries_return():
    question = t2c.questions("validation")[0]
    prompt = t2c.format_prompt(t2c.SCHEMA, question.question)
    gold = t2c.answer(question.query)
    # The same result by another query text: still right (execution, not string match).
    rewritten = t2c.answer(question.query.replace("RETURN", "WITH * RETURN", 1))
    assert rewritten != gold
    wrong = t2c.answer("MATCH (c:Country) RETURN c.name LIMIT 1")
    verdicts = _verdicts([(prompt, gold, wrong), (prompt, wrong, gold),
                          (prompt, gold, rewritten), (prompt, wrong, "I do not know.")])
    assert verdicts == ["x", "y", "tie", "both_bad"]


def test_chat_answers_are_judged_against_the_targets_own_answer():
    instruction = "Compare Kadoria and Notaland."
    own = TARGET.respond((t2c.Turn("user", instruction),))
    assert own.count("\n- ") >= 4  # the target's list answer
    terse = "Kadoria and Notaland are both countries."
    verdicts = _verdicts([(instruction, own, terse), (instruction, terse, own),
                          (instruction, own, own + " "), (instruction, "No idea.", "Hello.")])
    assert verdicts == ["x", "y", "tie", "both_bad"]


def test_anything_but_a_judge_request_is_answered_as_before():
    assert demo_judge.judge_request("Compare Kadoria and Notaland.") is None
    request = demo_judge.judge_request(
        "[Instruction]\nq?\n\n[Answer A]\nfirst\n[End of answer A]\n\n[Answer B]\nsecond\n"
        "[End of answer B]")
    assert request == ("q?", "first", "second")
