"""Fine-tune (or pre-train) a model on a task or mixture, configured by gin files (t5x style).

Example: --gin_file=gin_configs/models/gpt2/tiny.gin --gin_file=gin_configs/runs/finetune.gin
--gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'imitation_sharegpt_fixture'" ...
Running again with the same MODEL_DIR resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse

from arch_compare.cli import runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runs.add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return runs.run_command("train", args)
