"""`arch-compare`: the only place that parses flags (and, for runs, gin files).

Each sub-command is a module with `add_arguments(parser)` and `run(args) -> int`, registered in
`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

# TensorFlow (under seqio) logs start-up chatter at INFO; keep the terminal for results.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from arch_compare.cli import (budget, convert, demo, pairwise, presets, report, runs, serve,
                              study, tasks)

COMMANDS: dict[str, ModuleType | runs.RunCommand] = {
    "presets": presets,
    "convert": convert,
    "budget": budget,
    "tasks": tasks,
    "serve": serve,
    "report": report,
    "study": study,
    "demo": demo,
    "pairwise": pairwise,
    **runs.RUN_COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arch-compare", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        doc = module.__doc__.strip()
        sub = commands.add_parser(name, help=doc.splitlines()[0], description=doc)
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(runs.split_gin_flags(argv))
    try:
        return COMMANDS[args.command].run(args)
    except (KeyError, ValueError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"arch-compare {args.command}: error: {message}", file=sys.stderr)
        return 2
