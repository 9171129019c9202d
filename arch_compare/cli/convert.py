"""Convert a checkpoint between a Hugging Face directory and this project's orbax format.

The source kind is detected (`config.json` + safetensors: Hugging Face; `model_config.json`: this
project's; a training MODEL_DIR: its newest checkpoint's parameters; MODEL_DIR/checkpoints/<step>:
that step's); the destination is the other format unless `--to` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arch_compare.models.hf import save_hf_checkpoint
from arch_compare.models.loading import checkpoint_kind, load_checkpoint
from arch_compare.models.native import save_model

UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(text: str) -> int:
    upper = text.strip().upper()
    for unit in sorted(UNITS, key=len, reverse=True):
        if upper.endswith(unit):
            return int(float(upper[:-len(unit)]) * UNITS[unit])
    return int(upper)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path,
                        help="HF model directory, native checkpoint, training MODEL_DIR, or "
                             "MODEL_DIR/checkpoints/<step>")
    parser.add_argument("destination", type=Path)
    parser.add_argument("--to", choices=("hf", "native"), default=None,
                        help="destination format (default: the other one)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="parameter dtype to convert to (default: keep float32)")
    parser.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GiB"),
                        help="largest safetensors file when writing HF (default 5GiB)")


def run(args: argparse.Namespace) -> int:
    source_kind = checkpoint_kind(args.source)  # training directories and steps convert too
    loaded = load_checkpoint(args.source, dtype=args.dtype)
    model, params = loaded.model, loaded.params
    target = args.to or ("native" if source_kind == "hf" else "hf")
    if target == "hf":
        save_hf_checkpoint(model, params, args.destination, max_shard_bytes=args.max_shard_size)
    else:
        save_model(args.destination, model, params)
    print(f"{loaded.description} -> {args.destination} ({target}): {model.config.family}, "
          f"{model.param_count():,} parameters, {model.config.param_dtype}")
    return 0
