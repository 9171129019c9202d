"""The comparison report of an imitation study, read from its results database only.

    from arch_compare.report import write_report
    paths = write_report("studies/tiny", "studies/tiny/report")   # -> report.html, report.md

`load` takes a snapshot of one study, `analysis` computes (gap closed, configuration differences,
compute), `tables` and `plots` turn that into blocks, `sections` orders them into one `Document`,
and `html` / `markdown` render the same document. Nothing here imports the trainer, the models,
decoding or JAX: a report can be written on any machine that has the database file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from arch_compare.report import html, markdown
from arch_compare.report.load import StudyData, load_study
from arch_compare.report.sections import build_document

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    figures: tuple[Path, ...]


def write_report(source: str | Path, out_dir: str | Path, study: str | None = None) -> ReportPaths:
    """Write report.html (self-contained) and report.md with figures/*.png into `out_dir`.

    `source` is a study directory holding results.sqlite, or the database file itself; `study`
    names the study when the database holds several.
    """
    data = load_study(source, study)
    document = build_document(data)
    out_dir = Path(out_dir)
    figure_dir = out_dir / markdown.FIGURE_DIR
    figure_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for figure in document.figures:
        path = out_dir / markdown.figure_path(figure.name)
        path.write_bytes(figure.png)
        figures.append(path)
    html_path, markdown_path = out_dir / HTML_FILE, out_dir / MARKDOWN_FILE
    html_path.write_text(html.render(document), encoding="utf-8")
    markdown_path.write_text(markdown.render(document), encoding="utf-8")
    return ReportPaths(html_path, markdown_path, tuple(figures))


__all__ = ["ReportPaths", "StudyData", "build_document", "load_study", "write_report"]
