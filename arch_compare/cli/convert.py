"""Convert a checkpoint between a Hugging Face directory and this project's orbax format.

The source kind is detected (`config.json` + safetensors: Hugging Face; `model_config.json`: this
project's); the destination is the other kind unless `--to` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arch_compare.models.hf import load_hf_checkpoint, save_hf_checkpoint
from arch_compare.models.hf.checkpoint import CheckpointError
from arch_compare.models.native import is_native_checkpoint, load_model, save_model

UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(text: str) -> int:
    upper = text.strip().upper()
    for unit in sorted(UNITS, key=len, reverse=True):
        if upper.endswith(unit):
            return int(float(upper[:-len(unit)]) * UNITS[unit])
    return int(upper)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="HF model directory or native checkpoint")
    parser.add_argument("destination", type=Path)
    parser.add_argument("--to", choices=("hf", "native"), default=None,
                        help="destination format (default: the other one)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="parameter dtype to convert to (default: keep float32)")
    parser.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GiB"),
                        help="largest safetensors file when writing HF (default 5GiB)")


def run(args: argparse.Namespace) -> int:
    source_is_native = is_native_checkpoint(args.source)
    if not source_is_native and not (args.source / "config.json").is_file():
        raise CheckpointError(f"{args.source}: neither a Hugging Face directory (config.json) "
                              "nor an arch_compare checkpoint (model_config.json)")
    loader = load_model if source_is_native else load_hf_checkpoint
    model, params = loader(args.source, dtype=args.dtype)
    target = args.to or ("hf" if source_is_native else "native")
    if target == "hf":
        save_hf_checkpoint(model, params, args.destination, max_shard_bytes=args.max_shard_size)
    else:
        save_model(args.destination, model, params)
    print(f"{args.source} -> {args.destination} ({target}): {model.config.family}, "
          f"{model.param_count():,} parameters, {model.config.param_dtype}")
    return 0
