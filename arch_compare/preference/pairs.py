"""Preference pairs: one prompt, a preferred (`chosen`) and a dispreferred (`rejected`) answer.

A pair's prompt is the project's chat prompt (`imitation.targets.Prompt`: a history ending with a
user turn); a plain string is one user turn, as in the common JSONL layout. The model reads the
prompt as every imitation example does: `conversations.format_history` of its turns (the
`inputs` text), so a pair's prompt tokens are those of an imitation example with the same
history, for every architecture.

Files are JSON Lines in the common layout, one pair per line:

    {"prompt": "...", "chosen": "...", "rejected": "..."}

`prompt` may also be a list of chat messages (`[{"role": "user", "content": "..."}, ...]`) and
`chosen`/`rejected` a one-message list (`[{"role": "assistant", "content": "..."}]`), the
conversational form other preference data sets use. `id` (the prompt id) and `source` are read
when present; every other key is kept in the pair's `meta` and written back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

from arch_compare.data.conversations import Turn, format_history
from arch_compare.imitation.targets import Prompt

LAYOUT_KEYS = ("prompt", "chosen", "rejected")
# Keys a file may carry that are fields of the pair, not meta.
FIELD_KEYS = LAYOUT_KEYS + ("id", "source")
DEFAULT_SOURCE = "file"


def text_prompt_id(text: str) -> str:
    """A stable id for a prompt given as bare text (the same text always gets the same id)."""
    return "text:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def as_prompt(prompt: str | Prompt, prompt_id: str | None = None) -> Prompt:
    """A `Prompt` from a prompt or from bare text (one user turn; its id from the text unless
    `prompt_id` is given)."""
    if isinstance(prompt, Prompt):
        return prompt
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt is a string or a Prompt, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    return Prompt.from_text(prompt_id or text_prompt_id(prompt.strip()), prompt)


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """`chosen` is preferred over `rejected` as an answer to `prompt`.

    `source` says where the judgement came from ("file", "judge", "execution", "revision");
    `meta` holds anything else worth keeping (read-only; JSON values)."""

    prompt: Prompt
    chosen: str
    rejected: str
    source: str = DEFAULT_SOURCE
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "prompt", as_prompt(self.prompt))
        where = f"PreferencePair {self.prompt.prompt_id!r}"
        for name in ("chosen", "rejected", "source"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{where}: {name} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"{where}: {name} is empty")
        # Stripped as imitation targets are: surrounding whitespace tokenizes differently across
        # vocabularies and carries no content.
        object.__setattr__(self, "chosen", self.chosen.strip())
        object.__setattr__(self, "rejected", self.rejected.strip())
        if self.chosen == self.rejected:
            raise ValueError(f"{where}: chosen and rejected are the same text")
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"{where}: meta must be a mapping, got {type(self.meta).__name__}")
        clashing = sorted(set(self.meta) & set(FIELD_KEYS))
        if clashing:
            raise ValueError(f"{where}: meta must not hold the pair's own fields "
                             f"({', '.join(clashing)})")
        object.__setattr__(self, "meta", types.MappingProxyType(dict(self.meta)))

    @property
    def inputs(self) -> str:
        """The prompt as the model reads it (the `inputs` text of an imitation example)."""
        return format_history(self.prompt.turns)

    def to_json(self) -> dict[str, Any]:
        """The common layout: a one-user-turn prompt as a string, a longer history as messages."""
        turns = self.prompt.turns
        prompt = turns[0].text if len(turns) == 1 else self.prompt.messages()
        return {"id": self.prompt.prompt_id, "prompt": prompt, "chosen": self.chosen,
                "rejected": self.rejected, "source": self.source, **self.meta}


class PairFileError(ValueError):
    """A pair file that cannot be read whole. `pairs` holds every pair read before the bad line
    (nothing already read is lost), `path` and `line` say where (`line` 0: the file as a whole)."""

    def __init__(self, path: Path, line: int, problem: str, pairs: list[PreferencePair]):
        self.path, self.line, self.pairs = path, line, pairs
        where = f"{path}:{line}" if line else str(path)
        before = (f"; the {len(pairs)} pair(s) on the lines before it were read and are kept "
                  f"in this error's `pairs`" if line else "")
        super().__init__(f"{where}: {problem}{before}")


def _message_text(value: Any, key: str) -> str:
    """A `chosen`/`rejected` value: a string or one assistant message."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    raise TypeError(f"{key!r} must be a string or one assistant message "
                    f"[{{'role': 'assistant', 'content': ...}}], got {json.dumps(value)[:80]}")


def _prompt(value: Any, prompt_id: str | None) -> Prompt:
    if isinstance(value, str):
        return as_prompt(value, prompt_id)
    if isinstance(value, list) and value and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value):
        turns = tuple(Turn(m["role"], m["content"]) for m in value)
        if prompt_id is None:
            prompt_id = text_prompt_id(format_history(turns))
        return Prompt(prompt_id, turns)
    raise TypeError(f"'prompt' must be a string or a list of {{'role', 'content'}} messages, "
                    f"got {json.dumps(value)[:80]}")


def pair_from_json(record: Any) -> PreferencePair:
    """One pair from a decoded JSON line (TypeError/ValueError say what is wrong)."""
    if not isinstance(record, Mapping):
        raise TypeError(f"a line must be a JSON object, got {type(record).__name__}")
    missing = [key for key in LAYOUT_KEYS if key not in record]
    if missing:
        raise KeyError(f"missing key(s) {', '.join(map(repr, missing))}; a pair needs "
                       f"{', '.join(LAYOUT_KEYS)}")
    prompt_id = record.get("id")
    if prompt_id is not None and not (isinstance(prompt_id, str) and prompt_id):
        raise TypeError(f"'id' must be a non-empty string, got {prompt_id!r}")
    source = record.get("source", DEFAULT_SOURCE)
    return PreferencePair(
        prompt=_prompt(record["prompt"], prompt_id),
        chosen=_message_text(record["chosen"], "chosen"),
        rejected=_message_text(record["rejected"], "rejected"),
        source=source,
        meta={key: value for key, value in record.items() if key not in FIELD_KEYS})


def read_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """Every pair of a JSONL file, in file order (blank lines skipped). The first bad line
    raises `PairFileError` naming the file and line, carrying the pairs read before it; a file
    without any pair is an error too."""
    path = Path(path)
    pairs: list[PreferencePair] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PairFileError(path, number, f"not JSON ({error.msg} at column "
                                                  f"{error.colno})", pairs) from None
            try:
                pairs.append(pair_from_json(record))
            except (KeyError, TypeError, ValueError) as error:
                problem = error.args[0] if error.args else str(error)
                raise PairFileError(path, number, str(problem), pairs) from None
    if not pairs:
        raise PairFileError(path, 0, "holds no pairs (an empty file)", pairs)
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Iterable[PreferencePair]) -> int:
    """Write `pairs` as JSONL (replacing the file only once all are written); returns how many."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    count = 0
    try:
        with partial.open("w", encoding="utf-8") as out:
            for pair in pairs:
                out.write(json.dumps(pair.to_json(), ensure_ascii=False) + "\n")
                count += 1
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return count
