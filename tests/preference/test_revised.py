"""Critique and revise (preference.revised) with a plain function as reviser: revisions
preferred, unchanged or missing ones counted, a cached reviser asked once, and the reply's
parsing."""

import re

import pytest

from arch_compare.imitation.targets import FunctionTarget, Prompt
from arch_compare.preference import revised
from arch_compare.preference.build_common import EMPTY_ANSWER, NO_REVISION, UNCHANGED


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
    cache = tmp_path / "cache.jsonl"
    pairs, summary = revised.pairs_from_revisions(target, prompts, answers, cache_path=cache)
    assert [(p.prompt.prompt_id, p.chosen, p.rejected) for p in pairs] == [
        ("q1", "Scattering. Because it is so.", "Scattering.")]
    assert pairs[0].meta == {"critique": "Too short.", "reviser": "teacher"}
    assert summary.dropped == {EMPTY_ANSWER: 1, UNCHANGED: 1, NO_REVISION: 1}
    assert (summary.candidates, len(calls)) == (3, 3)
    again = revised.pairs_from_revisions(target, prompts, answers, cache_path=cache)
    assert again[0] == pairs and len(calls) == 3  # cached: asked once


def test_the_revise_prompt_carries_the_instruction_and_the_answer():
    prompt = revised.revise_prompt(Prompt.from_text("q", "Add 2 and 2."), "5")
    assert prompt.turns[0].role == "system" and revised.REVISION_MARKER in prompt.turns[0].text
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
    assert revised.parse_revision(reply) == revision
