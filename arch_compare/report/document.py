"""The report as plain data: sections of paragraphs, tables, figures, samples and collapsed text.

`sections.py` builds one `Document`; `html.py` and `markdown.py` render the same one, so both
files carry the same content in the same order. Every string here is raw text from the database or
the report's own wording; escaping is the renderers' job.
"""

from __future__ import annotations

import dataclasses
from typing import Union


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str


@dataclasses.dataclass(frozen=True)
class Subheading:
    text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]                  # per column: right-aligned
    caption: str = ""
    # per row: "" or a style the renderers mark: "flag" (a fairness problem), "failed",
    # "pending", "total", "target"
    styles: tuple[str, ...] = ()
    # Leading columns that group rows (architecture, model): HTML mutes a value repeated from
    # the row above so the eye finds where each group starts.
    group_columns: int = 0

    def __post_init__(self):
        if len(self.numeric) != len(self.columns):
            raise ValueError(f"table {self.caption!r}: {len(self.columns)} columns but "
                             f"{len(self.numeric)} alignments")
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.caption!r}: row {row[:2]} has {len(row)} cells "
                                 f"for {len(self.columns)} columns")
        if self.styles and len(self.styles) != len(self.rows):
            raise ValueError(f"table {self.caption!r}: {len(self.styles)} styles for "
                             f"{len(self.rows)} rows")

    def style(self, index: int) -> str:
        return self.styles[index] if self.styles else ""


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str       # file stem under figures/, unique in the document
    caption: str
    png: bytes


@dataclasses.dataclass(frozen=True)
class Figures:
    figures: tuple[Figure, ...]


@dataclasses.dataclass(frozen=True)
class SampleGroup:
    """One prompt, the target's reference answer, and what each model wrote."""

    title: str
    prompt: str
    reference: str
    outputs: tuple[tuple[str, str], ...]   # (run label, output)


@dataclasses.dataclass(frozen=True)
class Collapsed:
    summary: str
    text: str       # preformatted (JSON)


Block = Union[Paragraph, Subheading, Bullets, Table, Figures, SampleGroup, Collapsed]


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    anchor: str
    blocks: tuple[Block, ...]


@dataclasses.dataclass(frozen=True)
class Document:
    title: str
    summary: str
    sections: tuple[Section, ...]

    @property
    def figures(self) -> tuple[Figure, ...]:
        return tuple(figure for section in self.sections for block in section.blocks
                     if isinstance(block, Figures) for figure in block.figures)
