"""The budget's YAML sheets (`budgets/hardware.yaml`, `budgets/targets.yaml`): one top-level
mapping of row name -> fields, each row checked against its dataclass, every error naming the
file, the line and the row."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, TypeVar

import yaml

Row = TypeVar("Row")


def load_rows(path: Path, section: str, make: Callable[..., Row], *, fields: Iterable[str],
              required: Iterable[str], error: type[Exception]) -> dict[str, Row]:
    """`make(name=..., **fields)` for every row of `section` in the sheet at `path`, in file
    order; `error` (naming `file:line: section.row`) for a missing file, bad YAML, a row that is
    not a mapping, missing or unknown fields, or a value `make` refuses (ValueError)."""
    fields, required = tuple(fields), tuple(required)
    if not path.is_file():
        raise error(f"{section} sheet not found: {path}")
    text = path.read_text()
    try:
        document = yaml.compose(text)
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML: {problem}") from None
    node = _mapping_value(document, section)
    if not isinstance(node, yaml.MappingNode):
        raise error(f"{path}: expected a top-level '{section}:' mapping of name -> fields")
    values = yaml.safe_load(text)[section]
    rows = {}
    for key_node, _ in node.value:
        name = key_node.value
        where = f"{path}:{key_node.start_mark.line + 1}: {section}.{name}"
        row = values[name]
        if not isinstance(row, dict):
            raise error(f"{where}: expected a mapping of fields, got {row!r}")
        missing = [field for field in required if field not in row]
        unknown = sorted(set(row) - set(fields))
        if missing or unknown:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(unknown)}"] if unknown else [])
            raise error(f"{where}: {'; '.join(problems)} (fields: {', '.join(fields)})")
        try:
            rows[name] = make(name=name, **{**row, "date": str(row["date"])})
        except ValueError as problem:
            raise error(f"{where}: {problem}") from None
    return rows


def _mapping_value(node, key: str):
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if key_node.value == key:
            return value_node
    return None
