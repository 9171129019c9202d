"""Plain-text tables for terminal output: text columns left-aligned, numbers right-aligned."""

from __future__ import annotations


def format_table(rows: list[dict[str, str]], columns: tuple[str, ...],
                 text_columns: tuple[str, ...] = ()) -> str:
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(
        v.ljust(w) if columns[i] in text_columns else v.rjust(w)
        for i, (v, w) in enumerate(zip(values, widths))).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
