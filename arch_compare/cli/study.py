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

`--plan` prints the budget and, for every run, its execution settings (the mesh 'auto' resolves
to over `budget.chips` x `budget.hardware`, dtypes, remat, microbatches) and the per-device
memory estimate of its training and evaluation against the chip's memory, and checks the study's
inputs as a run would before its first step (data files read through, tasks, checkpoints, the
target), then exits: 2 naming every input problem, 1 when a run does not fit, naming it and what
would. No model is loaded.

`--multihost` (with --coordinator_address/--num_processes/--process_id outside TPU/SLURM/MPI)
runs the study SPMD on several hosts: start the same command on every host; the study directory
must be on a filesystem they share. Process 0 calls the target and writes every file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from arch_compare.cli import runs

if TYPE_CHECKING:  # the experiment gin files import it (and JAX, through optax) when parsed
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
    parser.add_argument("--plan", action="store_true",
                        help="print every run's execution settings and memory estimate, then "
                             "exit (1 if a run does not fit); nothing runs")


def study_config(files: list[str], bindings: list[str]) -> StudyConfig:
    """Parse the experiment files and `NAME=VALUE` bindings; refuse a required macro left unset or
    a macro or binding the study never reads (before anything runs); build the StudyConfig."""
    runs.parse_gin(files, [runs._as_gin_binding(b) for b in bindings])
    runs.check_configuration(configure, files, bindings)
    return runs.call_configured(configure, files)


def print_plan(config: StudyConfig) -> int:
    """The budget and memory plan of the study on its priced hardware, and its inputs checked;
    StudyInputsInvalid (exit 2) listing every input problem, else 1 if a run won't fit."""
    from arch_compare.imitation import plan, plan_memory, preflight
    try:
        inputs, invalid = preflight.check(config), None
    except preflight.StudyInputsInvalid as error:
        inputs, invalid = None, error
    planned = plan.plan(config)
    print(plan.budget_table(config, plan.estimates(config, planned))[0])
    devices = plan_memory.Devices.of_budget(config)
    rows = plan_memory.memory_plan(config, devices, planned)
    print(plan_memory.memory_table(config, rows, devices))
    if invalid is not None:
        raise invalid  # after the plan, which is worth reading all the same
    print(inputs.summary())
    misfits = [row for row in rows if not row.fits]
    if misfits:
        print(f"arch-compare study --plan: {len(misfits)} run(s) do not fit: "
              + ", ".join(row.run_id for row in misfits))
        return 1
    return 0


def run_and_report(config: StudyConfig, *, yes: bool, report: bool) -> int:
    import jax
    from arch_compare import compilation_cache
    from arch_compare.imitation.study import StudyDeclined, run_study
    # Every run of a study compiles the same small programs; a later run or study reads them back.
    compilation_cache.enable()
    try:
        outcome = run_study(config, yes=yes)
    except StudyDeclined as declined:
        print(f"arch-compare study: {declined}")
        return 1
    if jax.process_index() != 0:  # process 0 speaks for the study and writes the report
        return 1 if outcome.failed else 0
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


def initialize_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize, before anything asks JAX about devices. CPU processes (tests,
    a cluster without accelerators) need a collectives library between them: gloo."""
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # On Cloud TPU, SLURM and Open MPI JAX finds these itself; elsewhere they are given.
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)


def run(args: argparse.Namespace) -> int:
    if args.multihost and not args.plan:
        initialize_distributed(args)
    config = study_config(args.gin_file, args.gin_bindings)
    if args.plan:
        return print_plan(config)
    return run_and_report(config, yes=args.yes, report=args.report)
