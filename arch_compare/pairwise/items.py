"""Comparison items: what raters compare, and the JSONL file they are imported from.

One JSON object per line (blank lines are skipped):

    {"id": "nq-17", "prompt": "Who wrote ...?",
     "model_a": "chatgpt", "output_a": "...", "model_b": "llama-13b-imitation", "output_b": "...",
     "gold": "A", "meta": {"task": "nq"}}

- `id` is unique within the file; `prompt`, `output_a` and `output_b` are the texts raters see
  (an output may be the empty string: a model can answer with nothing).
- `model_a` / `model_b` name the two models. They are stored for the administrator's exports only
  and never reach a rater (nor does `id`, which may well contain a model name).
- `gold` is for attention-check items only: the known answer, one of "A", "B", "tie", "both_bad",
  in terms of this stored A/B order. Raters do not see this order: each rater's left/right
  placement is drawn per item on the server.
- `meta` is an optional object copied into the exports untouched (task name, run ids, ...).

Errors name the file, the line and the field, so a bad export is fixed at its source.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

VERDICTS = ("A", "B", "tie", "both_bad")
MAX_ID_CHARS = 200
MAX_TEXT_CHARS = 100_000
OUTPUT_FIELDS = ("output_a", "output_b")
TEXT_FIELDS = ("prompt",) + OUTPUT_FIELDS
REQUIRED_FIELDS = ("id", "model_a", "model_b") + TEXT_FIELDS
OPTIONAL_FIELDS = ("gold", "meta")


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    model_a: str
    output_a: str
    model_b: str
    output_b: str
    gold: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in REQUIRED_FIELDS:
            value = getattr(self, name)
            # An output may be empty (a model can answer with nothing); nothing else may.
            if not isinstance(value, str) or (name not in OUTPUT_FIELDS and not value.strip()):
                raise ValueError(f"field {name!r} must be a non-empty string, got {value!r:.60}")
            # PostgreSQL text cannot hold NUL, and no rater needs to see one.
            if "\x00" in value:
                raise ValueError(f"field {name!r} contains a NUL character")
        for name in ("id", "model_a", "model_b"):
            if len(getattr(self, name)) > MAX_ID_CHARS:
                raise ValueError(f"field {name!r} is longer than {MAX_ID_CHARS} characters")
        for name in TEXT_FIELDS:
            if len(getattr(self, name)) > MAX_TEXT_CHARS:
                raise ValueError(f"field {name!r} is longer than {MAX_TEXT_CHARS} characters")
        if self.model_a == self.model_b:
            raise ValueError(f"model_a and model_b are both {self.model_a!r}; an item compares "
                             f"two different models")
        if self.gold is not None and self.gold not in VERDICTS:
            raise ValueError(f"field 'gold' must be one of {VERDICTS}, got {self.gold!r}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"field 'meta' must be an object, got {type(self.meta).__name__}")

    @classmethod
    def from_json(cls, record: Any) -> "Item":
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        unknown = sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; allowed: "
                             f"{list(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
        return cls(**{**record, "meta": record.get("meta") or {}})

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        return {name: value for name, value in record.items() if value not in (None, {})}


def read_items(path: str | Path, *, gold: bool = False) -> list[Item]:
    """Reads an items file; with `gold=True` every item must carry a `gold` answer."""
    path = Path(path)
    items: list[Item] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:  # its "line 1" would mean this line
                raise ValueError(f"{path}:{number}: not a JSON object "
                                 f"({error.msg.removesuffix(' at')}, column "
                                 f"{error.colno}; a truncated or garbled line?)") from None
            try:
                item = Item.from_json(record)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{path}:{number}: {error}") from None
            if gold and item.gold is None:
                raise ValueError(f"{path}:{number}: field 'gold' is required in a gold file "
                                 f"(one of {VERDICTS})")
            if item.id in first_line:
                raise ValueError(f"{path}:{number}: field 'id': {item.id!r} repeats line "
                                 f"{first_line[item.id]}")
            first_line[item.id] = number
            items.append(item)
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def write_items(path: str | Path, items: list[Item]) -> None:
    with Path(path).open("w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
