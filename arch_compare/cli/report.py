"""Write a study's comparison report: report.html (one self-contained page) and report.md.

SOURCE is a study directory holding results.sqlite, or the database file itself. The report shows
every benchmark by architecture, size, data source and amount; how much of the base-to-target gap
imitation closed on style and on capability; estimated against measured compute; and every
configuration difference between imitation runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="study directory or results database file")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the report to")
    parser.add_argument("--study", help="study name, when the database holds several")


def run(args: argparse.Namespace) -> int:
    from arch_compare.report import write_report  # matplotlib and numpy: not for `--help`

    paths = write_report(args.source, args.out, args.study)
    print(f"wrote {paths.html}")
    print(f"wrote {paths.markdown} (+ {len(paths.figures)} figures in "
          f"{paths.markdown.parent / 'figures'})")
    return 0
