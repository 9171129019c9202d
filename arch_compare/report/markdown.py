"""Render a `Document` as Markdown; figures are PNG files in `figures/` beside it.

Database text in running text and tables is escaped (Markdown renders inline HTML); sample outputs
and configurations go in code fences longer than any backtick run inside them, so they show
verbatim whatever they contain.
"""

from __future__ import annotations

import re

from arch_compare.report.document import (Bullets, Collapsed, Document, Figures, Paragraph,
                                          SampleGroup, Subheading, Table)

FIGURE_DIR = "figures"
# Characters Markdown would read as markup; "_" only at a word's edge (inside a word, as in
# exact_match, it is plain text and escaping it would clutter the raw file).
_MARKUP = re.compile(r"([\\`*\[\]|#]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def escape(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKUP.sub(r"\\\1", text)
    return " ".join(text.split())  # one line: a newline would end a table row or paragraph


def fenced(text: str, language: str = "text") -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def figure_path(name: str) -> str:
    return f"{FIGURE_DIR}/{name}.png"


def _table(table: Table) -> str:
    rows = [[escape(c) for c in table.columns]] + [[escape(c) for c in row] for row in table.rows]
    for i in range(len(table.rows)):
        if table.style(i) == "flag":
            rows[i + 1][0] = "⚠ " + rows[i + 1][0]
        elif table.style(i) == "total":
            rows[i + 1] = [f"**{cell}**" if cell else cell for cell in rows[i + 1]]
    widths = [max(3, *(len(row[i]) for row in rows)) for i in range(len(table.columns))]
    line = lambda cells: "| " + " | ".join(
        cell.rjust(w) if numeric else cell.ljust(w)
        for cell, w, numeric in zip(cells, widths, table.numeric)) + " |"
    rule = "| " + " | ".join(("-" * (w - 1) + ":") if numeric else "-" * w
                             for w, numeric in zip(widths, table.numeric)) + " |"
    text = "\n".join([line(rows[0]), rule] + [line(row) for row in rows[1:]])
    return text + (f"\n\n_{escape(table.caption)}_" if table.caption else "")


def _sample(group: SampleGroup) -> str:
    parts = [f"### {escape(group.title)}", "**Prompt**", fenced(group.prompt),
             "**Target's reference**", fenced(group.reference)]
    for label, output in group.outputs:
        parts += [f"**{escape(label)}**", fenced(output)]
    return "\n\n".join(parts)


# Block type -> its Markdown (the same blocks as html.RENDERERS).
RENDERERS = {
    Paragraph: lambda block: escape(block.text),
    Subheading: lambda block: f"### {escape(block.text)}",
    Bullets: lambda block: "\n".join(f"- {escape(item)}" for item in block.items),
    Table: lambda block: _table(block),
    Figures: lambda block: "\n\n".join(f"![{escape(f.caption)}]({figure_path(f.name)})\n\n"
                                       f"_{escape(f.caption)}_" for f in block.figures),
    SampleGroup: lambda block: _sample(block),
    Collapsed: lambda block: (f"<details><summary>{escape(block.summary)}</summary>\n\n"
                              f"{fenced(block.text, 'json')}\n\n</details>"),
}


def _block(block) -> str:
    if type(block) not in RENDERERS:
        raise TypeError(f"no Markdown for report block {type(block).__name__}")
    return RENDERERS[type(block)](block)


def render(document: Document) -> str:
    parts = [f"# {escape(document.title)}", escape(document.summary)]
    for section in document.sections:
        parts.append(f"## {escape(section.title)}")
        parts += [_block(block) for block in section.blocks]
    return "\n\n".join(parts) + "\n"
