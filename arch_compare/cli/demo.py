"""Run the offline demo study: tiny GPT-2, LLaMA, T5 and UL2 imitating a synthetic target.

Everything is made here, offline: the demo world (tasks/demo_world.py), its tokenizers, base
models pre-trained on part of its knowledge, the target's answers, the imitation runs, the
evaluations and the report. It takes a few minutes on a laptop CPU and ends by printing where
the report is. Running it again resumes (finished runs are skipped).

`--gin.NAME=VALUE` (repeatable, a gin literal: strings in quotes) overrides a macro of
gin_configs/experiments/demo_study.gin, as for `study`: e.g. `--gin.CYPHER_AMOUNTS=[16]`. A
misspelled or unused macro stops the demo before it makes anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arch_compare.cli import study

DEMO_GIN = Path(__file__).resolve().parents[2] / "gin_configs" / "experiments" / "demo_study.gin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="study directory (default runs/demo)")
    # Written `--gin.NAME=VALUE` like every other command (cli.main turns that into this flag,
    # hidden as the run commands hide theirs; the module doc above says how to use it).
    parser.add_argument("--gin", dest="gin_bindings", action="append", default=[],
                        metavar="NAME=VALUE", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from arch_compare_tasks import demo_world
    out = Path(args.out).absolute()
    # The configuration (with the user's --gin.NAME=VALUE) is checked before anything is made.
    vocabularies = {macro: str(out / "world" / name)
                    for macro, name in demo_world.VOCABULARY_FILES.items()}
    bindings = [f"STUDY_DIR='{out}'"] + [f"{macro}='{path}'"
                                         for macro, path in vocabularies.items()]
    config = study.study_config([str(DEMO_GIN)], bindings + list(args.gin_bindings))
    demo_world.write_vocabularies(out / "world")  # the files named above, if not there yet
    # The demo's budget is a fraction of a cent; it never needs asking.
    return study.run_and_report(config, yes=True, report=True)
