"""A prompts task and a target for the post-training study tests, built so that tiny random
models give answers worth comparing: the checker passes an answer of an even number of words (a
random model's samples split both ways); the target, judging, prefers the shorter answer (a
strict order, so rejection sampling by the judge keeps the shortest distinct answer), and asked
to revise an answer, prefixes it with "revised: ". Any other message goes to the demo world's
target."""

from __future__ import annotations

from typing import Sequence

from arch_compare.data.conversations import Turn, format_history
from arch_compare.preference import revised
from arch_compare_tasks import demo_judge, demo_world, registry

TASK = "post_training_fixture"
QUESTIONS = ["name a river", "where is the house", "what is bread", "who walked home",
             "say something kind", "open the door", "count to three", "describe the sea"]


def passes(record, answer: str) -> bool:
    return len(answer.split()) % 2 == 0


def _records():
    return [{"id": f"post/{index}", "prompt": question,
             "inputs": format_history((Turn("user", question),)), "targets": ""}
            for index, question in enumerate(QUESTIONS)]


registry.register_task(registry.TaskSpec(
    name=TASK, kind="prompts", description="post-training test prompts", source="tests",
    splits={"train": _records}, extra_features=("id", "prompt"), check_fn=passes),
    replace=True)


def revision_of(answer: str) -> str:
    """What the target revises an answer to."""
    return f"revised: {answer}"


def target_respond(turns: Sequence[Turn]) -> str:
    if turns[0].text == revised.REVISE_SYSTEM_PROMPT:
        answer = turns[-1].text.split("[Answer]\n", 1)[1].rsplit("\n[End of answer]", 1)[0]
        return f"It could say more.\nRevised answer:\n{revision_of(answer)}"
    request = demo_judge.judge_request(turns[-1].text)
    if request is None:
        return demo_world.target_respond(turns)
    _, first, second = request
    verdict = ("tie" if len(first) == len(second) else "A" if len(first) < len(second)
               else "B")
    return f"The shorter answer is better.\nVerdict: {verdict}"
