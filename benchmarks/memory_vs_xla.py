"""The budget module's per-device training memory against XLA's own accounting of the real step.

For each row it builds the training step exactly as `arch_compare/trainer/loop.py` does (the
project's AdamW from `arch_compare.optim`, `make_train_step`, parameter shardings from
`arch_compare.partitioning`, the optimizer state's shardings as `jax.jit(init)` lays them out, the
batch split over data x fsdp, the state donated), compiles it for abstract arguments (nothing runs)
and reads `compiled.memory_analysis()` for one device. XLA's per-device peak is counted as

    argument + temp + output - alias

(the donated state's outputs alias its arguments, so only the metrics add to the arguments). That
number is compared with `per_device_training_memory(...).total`.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python benchmarks/memory_vs_xla.py
    (the script sets the flag itself when JAX has not started yet)

Compilation only: ~1-3 s per row on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

if "jax" not in sys.modules:  # fake CPU devices must be requested before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from arch_compare import optim, partitioning  # noqa: E402
from arch_compare.budget.memory import per_device_training_memory  # noqa: E402
from arch_compare.execution import mesh_description  # noqa: E402
from arch_compare.models import build_model, get_preset  # noqa: E402
from arch_compare.models.config import ModelConfig  # noqa: E402
from arch_compare.partitioning import MeshConfig  # noqa: E402
from arch_compare.trainer import placement  # noqa: E402
from arch_compare.trainer.steps import abstract_train_state  # noqa: E402

MIB = 2**20

# ~6 layers x 512 of each family (compiles in seconds), from its preset.
FAMILIES: dict[str, tuple[str, dict]] = {
    "gpt2": ("gpt2-small", {"d_model": 512, "num_layers": 6, "num_heads": 8,
                            "num_kv_heads": 8, "head_dim": 64, "d_ff": 2048}),
    "llama": ("llama-7b", {"d_model": 512, "num_layers": 6, "num_heads": 8,
                           "num_kv_heads": 8, "head_dim": 64, "d_ff": 1536}),
    "t5.1.1": ("t5.1.1-small", {"num_layers": 6, "num_encoder_layers": 6, "num_heads": 8,
                                    "num_kv_heads": 8}),
    # UL2's shape: head_dim 128 with heads x head_dim != d_model, SiLU-gated MLP.
    "ul2": ("ul2-20b", {"d_model": 512, "num_layers": 6, "num_encoder_layers": 6,
                        "num_heads": 4, "num_kv_heads": 4, "head_dim": 128, "d_ff": 2048}),
}
MESHES = {"1": MeshConfig(), "d8": MeshConfig(data=8), "f8": MeshConfig(fsdp=8), "f4t2": MeshConfig(fsdp=4, tensor=2),
          "d2f4": MeshConfig(data=2, fsdp=4)}
DTYPES = ("float32", "bfloat16")
REMATS = ("none", "block")
MICROBATCHES = (1, 2)


@dataclasses.dataclass(frozen=True)
class Row:
    family: str
    mesh: MeshConfig
    dtype: str
    remat: str
    microbatches: int
    input_length: int = 128
    target_length: int = 128
    batch_size: int = 16
    optimizer: str = "adamw"
    overrides: tuple[tuple[str, object], ...] = ()  # on top of FAMILIES' (smaller test models)

    def config(self) -> ModelConfig:
        preset, overrides = FAMILIES[self.family]
        cfg = get_preset(preset, {**overrides, "dtype": self.dtype, "remat": self.remat})
        changes = dict(self.overrides)
        if cfg.is_encoder_decoder and "num_layers" in changes:
            changes.setdefault("num_encoder_layers", changes["num_layers"])
        return cfg.replace(**changes)


def abstract_batch(model, row: Row, sharding) -> dict[str, jax.ShapeDtypeStruct]:
    """The features the step reads, as the trainer's converters lay them out (unpacked)."""
    inputs, targets = model.sequence_lengths({"inputs": row.input_length,
                                              "targets": row.target_length})
    shapes = {"decoder_input_tokens": targets, "decoder_target_tokens": targets,
              "decoder_loss_weights": targets}
    if inputs:
        shapes["encoder_input_tokens"] = inputs
    return {name: jax.ShapeDtypeStruct((row.batch_size, length), jnp.int32, sharding=sharding)
            for name, length in shapes.items()}


def xla_memory(row: Row, devices=None) -> dict[str, int]:
    """XLA's memory analysis of one device's share of the compiled training step."""
    model = build_model(row.config())
    devices = list(devices or jax.devices())[:row.mesh.num_devices]
    mesh = partitioning.make_mesh(row.mesh, devices)
    logical_axes = model.logical_axes()
    param_shardings = partitioning.param_shardings(logical_axes, model.abstract_params(), mesh)
    opt_cfg = optim.OptimizerConfig(row.optimizer, optim.ScheduleConfig(1e-4), weight_decay=0.01)
    optimizer = optim.make_optimizer(opt_cfg, logical_axes)
    # The trainer's own layout and compiled step (trainer/placement.py), as `train` runs them.
    state_shardings = placement.train_state_shardings(model, optimizer, param_shardings, mesh)
    state = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                         abstract_train_state(optimizer, model.abstract_params()),
                         state_shardings)
    batch_sharding = partitioning.batch_sharding(mesh)
    step = placement.jit_train_step(model, optimizer, optim.make_schedule(opt_cfg.schedule),
                                    row.microbatches, state_shardings, batch_sharding, mesh)
    analysis = step.lower(state, abstract_batch(model, row, batch_sharding)).compile() \
        .memory_analysis()
    numbers = {name: int(getattr(analysis, f"{name}_size_in_bytes"))
               for name in ("argument", "output", "alias", "temp")}
    numbers["peak"] = (numbers["argument"] + numbers["temp"] + numbers["output"]
                       - numbers["alias"])
    return numbers


def estimate(row: Row):
    return per_device_training_memory(row.config(), row.mesh, row.input_length,
                                      row.target_length, row.batch_size, row.optimizer,
                                      row.microbatches, platform=jax.default_backend())


def compare(row: Row) -> dict:
    """One table row: the estimate, XLA's numbers and their ratio (XLA / estimate)."""
    ours = estimate(row)
    xla = xla_memory(row)
    return {"family": row.family, "mesh": mesh_description(row.mesh), "dtype": row.dtype,
            "remat": row.remat, "microbatches": row.microbatches,
            "estimate": ours.to_dict(), "xla": xla, "ratio": xla["peak"] / ours.total}


def all_rows(families=tuple(FAMILIES), meshes=tuple(MESHES), dtypes=DTYPES, remats=REMATS,
             microbatches=MICROBATCHES) -> list[Row]:
    return [Row(family, MESHES[mesh], dtype, remat, micro)
            for family in families for mesh in meshes for dtype in dtypes for remat in remats
            for micro in microbatches]


HEADER = ("| family | mesh | dtype | remat | microbatches | estimate MiB | XLA MiB | XLA / estimate |\n"
          "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |")


def format_row(result: dict) -> str:
    return (f"| {result['family']} | {result['mesh']} | {result['dtype']} | {result['remat']} | "
            f"{result['microbatches']} | {result['estimate']['total'] / MIB:.1f} | "
            f"{result['xla']['peak'] / MIB:.1f} | {result['ratio']:.2f} |")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--meshes", nargs="+", default=list(MESHES), choices=list(MESHES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--remats", nargs="+", default=list(REMATS))
    parser.add_argument("--microbatches", nargs="+", type=int, default=list(MICROBATCHES))
    parser.add_argument("--details", action="store_true",
                        help="also print the estimate's parts and XLA's argument/temp/output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = all_rows(args.families, args.meshes, args.dtypes, args.remats, args.microbatches)
    print(f"jax {jax.__version__}, {len(jax.devices())} {jax.devices()[0].platform} devices; "
          f"AdamW, params float32, batch {rows[0].batch_size} x (inputs {rows[0].input_length} "
          f"+ targets {rows[0].target_length}); XLA peak = argument + temp + output - alias")
    print(HEADER, flush=True)
    worst = 1.0
    for row in rows:
        began = time.perf_counter()
        result = compare(row)
        worst = max(worst, result["ratio"], 1 / result["ratio"])
        line = format_row(result)
        if args.details:
            parts = ", ".join(f"{k} {v / MIB:.1f}" for k, v in result["estimate"].items())
            xla = ", ".join(f"{k} {v / MIB:.1f}" for k, v in result["xla"].items())
            line += f"  ours: {parts}; xla: {xla}; {time.perf_counter() - began:.1f} s"
        print(line, flush=True)
    print(f"largest disagreement: {worst:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
