"""List the named model presets with architecture, family and exact parameter count.

Counts come from the parameter shapes (`jax.eval_shape`), so even 70B presets are listed without
allocating weights; they equal Hugging Face's count for the same configuration.
"""

from __future__ import annotations

import argparse
import json

from arch_compare.cli.tables import format_table
from arch_compare import models  # models.build_model imports JAX when a count is asked for
from arch_compare.models import PRESETS, get_preset

COLUMNS = ("name", "arch", "family", "params", "layers", "d_model", "heads", "kv_heads",
           "head_dim", "d_ff", "vocab", "bf16_weights_gib")


def describe(name: str) -> dict:
    config = PRESETS[name]
    params = models.build_model(config).param_count()
    layers = (f"{config.num_encoder_layers}+{config.num_layers}" if config.is_encoder_decoder
              else str(config.num_layers))
    return {"name": name, "arch": config.arch, "family": config.family, "params": params,
            "layers": layers, "d_model": config.d_model, "heads": config.num_heads,
            "kv_heads": config.num_kv_heads, "head_dim": config.head_dim, "d_ff": config.d_ff,
            "vocab": config.vocab_size, "bf16_weights_gib": round(params * 2 / 2**30, 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("names", nargs="*", help="presets to show (default: all)")


def run(args: argparse.Namespace) -> int:
    for name in args.names:
        get_preset(name)  # an unknown name raises with close-match suggestions
    rows = [describe(name) for name in (args.names or PRESETS)]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        cells = [{**row, "params": f"{row['params']:,}"} for row in rows]
        print(format_table(cells, COLUMNS, text_columns=("name", "arch", "family")))
    return 0
