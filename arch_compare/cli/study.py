"""Run an imitation study over models x data sources x amounts, record it, write the report.

Collects the target's answers, fine-tunes every model on every amount with one recipe, evaluates
base models, imitation models and the target on the same tasks, and records everything in the
study's results database.

    arch-compare study --gin_file=gin_configs/experiments/paper_study.gin \\
        --gin.STUDY_DIR="'/runs/paper'" [--yes] [--no-report]

The experiment gin file binds `arch_compare.imitation.config.StudyConfig` (see
gin_configs/experiments/). The grid's budget is printed first; above the study's
`confirm_above_usd` it asks before starting, unless --yes. Running the same command again resumes:
finished runs are skipped, an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gin

from arch_compare.cli import runs
from arch_compare.imitation.config import StudyConfig


def configure(config: StudyConfig) -> StudyConfig:
    """What an experiment gin file binds: the study's whole configuration."""
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runs.add_run_arguments(parser)
    parser.add_argument("--yes", action="store_true",
                        help="start without asking, whatever the budget estimate")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="do not write the report at the end")


def study_config(files: list[str], bindings: list[str]) -> StudyConfig:
    runs.parse_gin(files, [runs._as_gin_binding(b) for b in bindings])
    runs.check_required(files)
    try:
        return gin.get_configurable(configure)()
    except ValueError as error:
        missing = runs._MISSING.match(str(error))
        if missing:
            raise runs._missing_required(missing.group(1), "a gin file") from None
        raise


def run_and_report(config: StudyConfig, *, yes: bool, report: bool) -> int:
    from arch_compare.imitation.study import StudyDeclined, run_study
    try:
        outcome = run_study(config, yes=yes)
    except StudyDeclined as declined:
        print(f"arch-compare study: {declined}")
        return 1
    print(f"study {config.name!r}: {outcome.done} runs done, {outcome.skipped} already done, "
          f"{len(outcome.failed)} failed; results in {outcome.database}")
    for run_id in outcome.failed:
        print(f"  failed: {run_id} (its error is in the database and the report)")
    if report:
        from arch_compare.report import write_report
        paths = write_report(outcome.database, Path(config.directory) / "report",
                             study=config.name)
        print(f"report: {paths.html}")
        print(f"        {paths.markdown}")
    return 1 if outcome.failed else 0


def run(args: argparse.Namespace) -> int:
    if args.multihost:
        raise ValueError("--multihost: a study runs its steps one after another on this host; "
                         "run multi-host training with `arch-compare train`")
    return run_and_report(study_config(args.gin_file, args.gin_bindings), yes=args.yes,
                          report=args.report)
