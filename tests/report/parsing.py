"""Read the written report back the way a browser or a Markdown viewer would, for assertions."""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser

VOID_TAGS = {"meta", "img", "br", "wbr", "hr", "link", "input"}


@dataclasses.dataclass
class ParsedTable:
    rows: list[list[str]] = dataclasses.field(default_factory=list)   # header row first
    row_classes: list[str] = dataclasses.field(default_factory=list)


class ReportParser(HTMLParser):
    """Collects tags with attributes, tables as cell text, headings, and checks nesting."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[ParsedTable] = []
        self.headings: dict[str, list[str]] = {"h1": [], "h2": [], "h3": []}
        self.pre_texts: list[str] = []
        self.open: list[str] = []
        self.nesting_errors: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self._pre: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag in VOID_TAGS:
            return
        self.open.append(tag)
        if tag == "table":
            self.tables.append(ParsedTable())
        elif tag == "tr":
            self.tables[-1].rows.append([])
            self.tables[-1].row_classes.append(attributes.get("class") or "")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in self.headings:
            self._heading = []
        elif tag == "pre":
            self._pre = []

    def handle_endtag(self, tag):
        if tag in VOID_TAGS:
            return
        if not self.open or self.open[-1] != tag:
            self.nesting_errors.append(f"</{tag}> closes {self.open[-1:]}")
            return
        self.open.pop()
        if tag in ("td", "th"):
            self.tables[-1].rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in self.headings:
            self.headings[tag].append("".join(self._heading).strip())
            self._heading = None
        elif tag == "pre":
            self.pre_texts.append("".join(self._pre))
            self._pre = None

    def handle_data(self, data):
        for sink in (self._cell, self._heading, self._pre):
            if sink is not None:
                sink.append(data)


def parse_html(text: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(text)
    parser.close()
    return parser


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Pipe tables as rows of cells (header first, the alignment row dropped), unescaped."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("| "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r"-+:?", c) for c in cells):
                current.append([re.sub(r"\\(.)", r"\1", c) for c in cells])
        elif current:
            tables.append(current)
            current = []
    return tables


def outside_code_fences(text: str) -> str:
    """The Markdown with every fenced block removed (fences may be longer than three ticks)."""
    kept, fence = [], None
    for line in text.splitlines():
        match = re.match(r"^(`{3,})", line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and line == fence:
            fence = None
        elif fence is None:
            kept.append(line)
    return "\n".join(kept)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; raises if the bytes are not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
