"""Canonical imitation examples: dialogue history -> one target-model turn.

Fairness rule of the study: one canonical example feeds every architecture with identical text, and
only the feature converter differs. So the history is rendered to plain text here, once, with no
model-specific special tokens, and every task carries the same `{"id", "inputs", "targets"}`
strings.

The rendering (`format_history`) labels each turn with its role and separates turns by one blank
line, ending with the assistant label so the model knows a reply follows:

    System: You answer in one sentence.

    User: What is the capital of France?

    Assistant: Paris.

    User: And of Italy?

    Assistant:

There is no trailing space or newline after the final label: feature converters tokenize `inputs`
and `targets` separately, so nothing joins them that one tokenizer would count and another would
not. Turn texts and targets are stripped of surrounding whitespace when built, because that
whitespace carries no content but would tokenize differently across vocabularies.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

ROLES = ("system", "user", "assistant")
# The label each role gets in the rendered history; the only place the wording is decided.
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
TURN_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class Turn:
    """One turn of a dialogue: who spoke (`system`, `user` or `assistant`) and what was said."""

    role: str
    text: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Turn.role={self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.text, str):
            raise TypeError(f"Turn.text must be a string, got {type(self.text).__name__}")
        if not self.text.strip():
            raise ValueError(f"Turn.text is empty for a {self.role} turn")
        object.__setattr__(self, "text", self.text.strip())


@dataclasses.dataclass(frozen=True)
class ImitationExample:
    """A dialogue history ending with a user turn, and the target model's reply to it.

    `example_id` is stable (derived from the source record), so subsets are reproducible;
    `source` names where the example came from (for example "sharegpt" or "hc3/open_qa").
    """

    example_id: str
    history: tuple[Turn, ...]
    target: str
    source: str

    def __post_init__(self):
        where = f"ImitationExample {self.example_id!r}"
        if not isinstance(self.example_id, str) or not self.example_id:
            raise ValueError(f"ImitationExample.example_id must be a non-empty string, "
                             f"got {self.example_id!r}")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"{where}: source must be a non-empty string, got {self.source!r}")
        history = tuple(self.history)
        for index, turn in enumerate(history):
            if not isinstance(turn, Turn):
                raise TypeError(f"{where}: history[{index}] is a {type(turn).__name__}, not a Turn")
        if not history:
            raise ValueError(f"{where}: history is empty")
        if history[-1].role != "user":
            raise ValueError(f"{where}: history must end with a user turn, "
                             f"got a {history[-1].role} turn")
        if not isinstance(self.target, str):
            raise TypeError(f"{where}: target must be a string, got {type(self.target).__name__}")
        if not self.target.strip():
            raise ValueError(f"{where}: target is empty")
        object.__setattr__(self, "history", history)
        object.__setattr__(self, "target", self.target.strip())

    def to_features(self) -> dict[str, str]:
        """The strings a seqio task carries; identical for every architecture."""
        return {"id": self.example_id, "inputs": format_history(self.history),
                "targets": self.target}


def format_history(history: Iterable[Turn]) -> str:
    """Render turns as role-labelled blocks separated by blank lines, ending with "Assistant:"."""
    blocks = [f"{ROLE_LABELS[turn.role]}: {turn.text}" for turn in history]
    if not blocks:
        raise ValueError("format_history needs at least one turn")
    blocks.append(f"{ROLE_LABELS['assistant']}:")
    return TURN_SEPARATOR.join(blocks)


def examples_from_dialogue(turns: Iterable[Turn], source: str,
                           id_prefix: str) -> list[ImitationExample]:
    """One example per assistant turn, its history being every turn before it.

    Example ids are `f"{id_prefix}:{i}"` with `i` the assistant turn's index in `turns`, so they
    stay fixed when other turns are added after it. A dialogue without assistant turns gives an
    empty list (the caller reports it); an assistant turn that does not follow a user turn is an
    error naming its index, since its reply has no question to answer.
    """
    turns = tuple(turns)
    examples = []
    for index, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        if index == 0 or turns[index - 1].role != "user":
            before = "nothing" if index == 0 else f"turn {index - 1} ({turns[index - 1].role})"
            raise ValueError(f"turn {index} (assistant) must follow a user turn, "
                             f"but follows {before}")
        examples.append(ImitationExample(example_id=f"{id_prefix}:{index}",
                                         history=turns[:index], target=turn.text, source=source))
    return examples
