"""The demo's target as a judge (`arch_compare/evaluation/judge.py`'s prompt and verdict lines).

Shown an instruction and two answers in the judge's template, the demo target compares each
answer with what it would answer itself, so preference pairs can be judged offline by the same
target that wrote the imitation data:

- an English-to-Cypher instruction: each answer's query (`cypher.extract_query`) runs read-only on
  the demo graph and is compared with the result of the target's own query
  (`cypher.results_match`, CypherBench's rules): the answer that matches wins; both: tie; neither:
  both bad;
- any other instruction: the words of each answer against the words of the target's own answer
  (F1 over lowercased words and numbers): the higher wins when ahead by at least `MARGIN`, closer
  is a tie, and both under `ACCEPTABLE` are both bad.

The verdict depends on the answers, never on the order they are shown in, so the judge's two
orders always agree. The reply is one sentence of reasons and the verdict line.
"""

from __future__ import annotations

import collections
import functools
import re
from typing import Callable

MARGIN = 0.1  # F1 points an answer must lead by to win a chat comparison
ACCEPTABLE = 0.5  # below this F1 against the target's own answer an answer is bad
_WORDS = re.compile(r"[a-z0-9]+")


@functools.cache
def _judge_pattern() -> re.Pattern:
    """The judge's user message, with the instruction and both answers captured."""
    from arch_compare.evaluation.judge import JUDGE_USER_TEMPLATE
    parts = re.split(r"(\{instruction\}|\{output_a\}|\{output_b\})", JUDGE_USER_TEMPLATE)
    names = {"{instruction}": "instruction", "{output_a}": "a", "{output_b}": "b"}
    return re.compile("".join(f"(?P<{names[p]}>.*)" if p in names else re.escape(p)
                              for p in parts), re.DOTALL)


def judge_request(message: str) -> tuple[str, str, str] | None:
    """(instruction, answer shown first, answer shown second) of a judge's message, else None."""
    match = _judge_pattern().fullmatch(message.strip())
    return None if match is None else (match["instruction"], match["a"], match["b"])


def judge_reply(instruction: str, first: str, second: str,
                respond: Callable[[str], str]) -> str:
    """The judge's reply: a sentence of reasons and `Verdict: ...` (see the module docstring).
    `respond(instruction)` is the target's own answer."""
    own = respond(instruction)
    if "```cypher" in own:  # the target answers this instruction with a query
        correct = tuple(_runs_to_own_result(answer, own) for answer in (first, second))
        said = {True: "returns", False: "does not return"}
        verdict = {(True, True): "tie", (True, False): "A", (False, True): "B",
                   (False, False): "both bad"}[correct]
        return (f"Answer A's query {said[correct[0]]} what the question asks; answer B's "
                f"{said[correct[1]]} it.\nVerdict: {verdict}")
    scores = [_f1(answer, own) for answer in (first, second)]
    if max(scores) < ACCEPTABLE:
        verdict = "both bad"
    elif abs(scores[0] - scores[1]) < MARGIN:
        verdict = "tie"
    else:
        verdict = "A" if scores[0] > scores[1] else "B"
    return (f"Answer A agrees with what I know at {scores[0]:.2f}, answer B at {scores[1]:.2f} "
            f"(word F1).\nVerdict: {verdict}")


def _runs_to_own_result(answer: str, own: str) -> bool:
    from arch_compare.evaluation import cypher
    from arch_compare_tasks.text2cypher import demo_graph
    gold = cypher.extract_query(own)
    return cypher.results_match(demo_graph().run(gold), demo_graph().run(
        cypher.extract_query(answer)), ordered=cypher.has_order_by(gold))


def _f1(answer: str, reference: str) -> float:
    said = collections.Counter(_WORDS.findall(answer.lower()))
    wanted = collections.Counter(_WORDS.findall(reference.lower()))
    common = sum((said & wanted).values())
    if not common:
        return 0.0
    precision, recall = common / sum(said.values()), common / sum(wanted.values())
    return 2 * precision * recall / (precision + recall)
