"""Render a `Document` as one self-contained HTML page: inline CSS, figures as base64 PNG data
URIs, no scripts and no external references, so the file can be mailed or archived alone.

Every string from the database is escaped here (model outputs can contain markup).
"""

from __future__ import annotations

import base64
from html import escape

from arch_compare.report.document import (Bullets, Collapsed, Document, Figures, Paragraph,
                                          SampleGroup, Subheading, Table)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1320px; margin: 0 auto; padding: 16px 24px 64px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 19px; margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 22px 0 6px; }
p.summary { font-size: 15px; background: #f4f6fa; border-left: 4px solid #4a6fa5;
            padding: 10px 14px; }
nav { font-size: 13px; color: #555; }
nav a { margin-right: 12px; color: #2a5db0; text-decoration: none; }
.scroll { overflow-x: auto; margin: 6px 0 4px; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
th { background: #f0f0f0; text-align: left; vertical-align: bottom; }
td { white-space: nowrap; }
td.wrap { white-space: normal; min-width: 260px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
tr.failed td { color: #a11; }
tr.pending td { color: #888; font-style: italic; }
tr.target td { background: #eef5ee; }
tr.total td { font-weight: 600; border-top: 2px solid #999; }
tr.flag td { background: #fff1c7; }
td.same { color: #b5b5b5; }
.caption { font-size: 12px; color: #555; margin: 2px 0 12px; max-width: 1100px; }
.figure { margin: 8px 0; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr));
           gap: 14px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #555; }
.sample { border: 1px solid #ddd; border-radius: 4px; padding: 6px 12px; margin: 12px 0; }
.sample table { width: 100%; table-layout: fixed; }
.sample td:first-child { width: 190px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 12px;
      font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
details { margin: 4px 0; }
details pre { background: #f7f7f7; padding: 8px; }
summary { cursor: pointer; font-family: ui-monospace, monospace; font-size: 12.5px; }
"""


WRAP_AFTER = 48  # characters: longer cells (errors, value lists) wrap, short ones never do


def _header(column: str) -> str:
    # Long metric names ("style/list_when_target_lists") may break after a slash or an
    # underscore, so a task with many metrics still fits a laptop screen.
    return escape(column).replace("/", "/<wbr>").replace("_", "_<wbr>")


def _table(table: Table) -> str:
    head = "".join(f"<th>{_header(column)}</th>" for column in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        above = table.rows[i - 1] if i else ()
        classes = [" ".join(c for c in (
            "num" if numeric else "",
            "same" if j < table.group_columns and above and above[:j + 1] == row[:j + 1] else "",
            "wrap" if len(row[j]) > WRAP_AFTER else "") if c)
            for j, numeric in enumerate(table.numeric)]
        cells = "".join(f'<td class="{c}">{escape(cell)}</td>' if c else f"<td>{escape(cell)}</td>"
                        for cell, c in zip(row, classes))
        style = table.style(i)
        body.append(f'<tr class="{style}">{cells}</tr>' if style else f"<tr>{cells}</tr>")
    caption = f'<div class="caption">{escape(table.caption)}</div>' if table.caption else ""
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
            + "\n".join(body) + f"</tbody></table></div>{caption}")


def _figures(block: Figures) -> str:
    items = []
    for figure in block.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        items.append(f'<figure id="fig-{escape(figure.name)}"><img alt="{escape(figure.caption)}"'
                     f' src="data:image/png;base64,{data}"><figcaption>'
                     f"{escape(figure.caption)}</figcaption></figure>")
    # A lone figure (often a wide one) gets the full width instead of one grid column.
    kind = "figure" if len(items) == 1 else "figures"
    return f'<div class="{kind}">' + "\n".join(items) + "</div>"


def _sample(group: SampleGroup) -> str:
    rows = [("Prompt", group.prompt, ""), ("Target's reference", group.reference, "target")]
    rows += [(label, output, "") for label, output in group.outputs]
    body = "".join(
        (f'<tr class="{style}">' if style else "<tr>")
        + f"<td>{escape(label)}</td><td><pre>{escape(text)}</pre></td></tr>"
        for label, text, style in rows)
    return (f'<div class="sample"><h3>{escape(group.title)}</h3><table><tbody>{body}</tbody>'
            f"</table></div>")


# Block type -> its HTML; a new kind of block adds one entry here and one in markdown.py.
RENDERERS = {
    Paragraph: lambda block: f"<p>{escape(block.text)}</p>",
    Subheading: lambda block: f"<h3>{escape(block.text)}</h3>",
    Bullets: lambda block: "<ul>" + "".join(f"<li>{escape(item)}</li>"
                                            for item in block.items) + "</ul>",
    Table: lambda block: _table(block),
    Figures: lambda block: _figures(block),
    SampleGroup: lambda block: _sample(block),
    Collapsed: lambda block: (f"<details><summary>{escape(block.summary)}</summary>"
                              f"<pre>{escape(block.text)}</pre></details>"),
}


def _block(block) -> str:
    if type(block) not in RENDERERS:
        raise TypeError(f"no HTML for report block {type(block).__name__}")
    return RENDERERS[type(block)](block)


def render(document: Document) -> str:
    nav = " ".join(f'<a href="#{escape(s.anchor)}">{escape(s.title)}</a>'
                   for s in document.sections)
    sections = "\n".join(
        f'<section id="{escape(s.anchor)}"><h2>{escape(s.title)}</h2>\n'
        + "\n".join(_block(b) for b in s.blocks) + "</section>" for s in document.sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(document.title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{escape(document.title)}</h1>\n<nav>{nav}</nav>\n"
            f'<p class="summary">{escape(document.summary)}</p>\n{sections}\n</body></html>\n')
