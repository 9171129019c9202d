"""Pairs from critique and revise: the target's revision of the student's answer is chosen
over that answer (constitutional-AI style).

The target is asked (`REVISE_SYSTEM_PROMPT`, `REVISE_USER_TEMPLATE`) to critique the answer and
write it as it should have been after a `Revised answer:` line. Unchanged revisions, replies
without a revision and errors are counted. The cache and the summary are as `build_common`
describes.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Sequence

from arch_compare.data.conversations import Turn
from arch_compare.imitation.targets import GenerationSettings, Prompt, Target
from arch_compare.preference.build_common import (EMPTY_ANSWER, NO_REVISION, TARGET_ERROR,
                                                  UNCHANGED, BuildSummary, asked_through_cache,
                                                  instruction_of)
from arch_compare.preference.pairs import PreferencePair, as_prompt

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
    reviser = asked_through_cache(target, cache_path)
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
