"""Frozen config dataclasses from the dicts that gin files write."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def from_fields(value: Any, cls: type, where: str):
    """`value` as a `cls`: a `cls` already (or None, kept), or a dict of its fields; a key the
    dataclass does not have is named with `where`, the place it was written."""
    if isinstance(value, cls) or value is None:
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: expected a {cls.__name__} or a dict of its fields, "
                        f"got {type(value).__name__}")
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                         f"{cls.__name__} takes {', '.join(sorted(fields))}")
    return cls(**value)
