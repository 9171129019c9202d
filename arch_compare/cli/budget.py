"""Price runs before they start: parameters, FLOPs, memory, chips, hours and dollars.

One run per --model from flags, or a whole experiment grid from a gin file (--study), listed most
expensive first with totals per chip kind. Every default MFU names its source; pass --mfu, or
calibrate a study with a measured run's tokens/second (--measured-tokens-per-second).

With --target-price ROW (a row of budgets/targets.yaml) and --prompts/--prompt-tokens/
--answer-tokens, the target's answers are priced too, in tokens and dollars, beside the compute
(--batch: bought through the batch interface, at the row's batch discount); on its own it prices
just the collection.

With --recipe (full, mix, l2sp, lora, wise; arch_compare/recipes.py) each run is priced for that
fine-tuning recipe: what trains (parameters, optimizer state), the frozen weights' dtype, LoRA's
cheaper backward pass, L2-SP's anchor copy, mixing's extra text (--mix-rate: --tokens/--examples
are then the imitation data, and the mixed-in text is added on a line of its own), and `wise`'s
evaluation-only runs, one per --wise-alphas value (--tokens/--examples are then the evaluated
examples, priced as forward passes).

Exits 1, as `study --plan` does, when a priced run does not fit its chips' memory, with a line
naming each such run and what would fit (more chips, --remat, fsdp sharding, another chip); the
table is still printed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

import gin

from arch_compare.budget import (Evaluation, RunSpec, Setup, StudyGrid, calibrate, estimate_run,
                                 estimate_study, load_catalogue)
from arch_compare.budget.cost import RunEstimate
from arch_compare.budget.memory import OPTIMIZER_STATE, SHARDINGS
from arch_compare.budget.targets import CollectionCost, collection_cost, get_price
from arch_compare.cli.tables import format_table
from arch_compare.models.config import DTYPES
from arch_compare.recipes import FULL, LORA_TARGETS, RECIPE_KINDS, LoraConfig, Recipe

COLUMNS = ("model", "arch", "params", "recipe", "trainable", "opt_state", "mem/chip", "tokens",
           "train_flops", "eval_flops", "hardware", "chips", "fits", "hours", "chip_hours",
           "cost_usd", "mfu")
TEXT_COLUMNS = ("model", "arch", "recipe", "hardware")
# --recipe's settings: flag -> the recipe kind it belongs to.
RECIPE_FLAGS = {"lora_rank": "lora", "lora_alpha": "lora", "lora_dropout": "lora",
                "lora_targets": "lora", "lora_base_dtype": "lora", "mix_rate": "mix",
                "l2sp_weight": "l2sp", "wise_alphas": "wise"}

for _configurable in (StudyGrid, Setup, Evaluation):
    gin.external_configurable(_configurable, module="arch_compare.budget")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", help="preset name (repeatable)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--tokens", type=float, help="input plus target tokens of training data")
    amount.add_argument("--examples", type=float, help="training examples")
    parser.add_argument("--input-length", type=int, default=0)
    parser.add_argument("--target-length", type=int, default=2048)
    parser.add_argument("--hardware", default="a100-80gb", help="chip name in the catalogue")
    parser.add_argument("--chips", type=int, help="default: the fewest that fit, as a power of 2")
    parser.add_argument("--mfu", type=float, help="model FLOPs utilisation (default: per source)")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZER_STATE), default="adamw")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--remat", action="store_true", help="rematerialise activations")
    parser.add_argument("--sharding", choices=SHARDINGS, default="fsdp")
    parser.add_argument("--epochs", type=float, default=1.0)
    recipe = parser.add_argument_group("the fine-tuning recipe (arch_compare/recipes.py)")
    recipe.add_argument("--recipe", choices=RECIPE_KINDS, default="full",
                        help="how each --model run fine-tunes (default full)")
    recipe.add_argument("--lora-rank", type=int, help="lora: adapter rank (default 8)")
    recipe.add_argument("--lora-alpha", type=float, help="lora: scale alpha / rank (default 16)")
    recipe.add_argument("--lora-dropout", type=float, help="lora: adapter input dropout")
    recipe.add_argument("--lora-targets", help=f"lora: comma-separated projections from "
                        f"{','.join(LORA_TARGETS)} (default q,k,v,o)")
    recipe.add_argument("--lora-base-dtype", choices=DTYPES,
                        help="lora: dtype of the frozen base weights (default float32)")
    recipe.add_argument("--mix-rate", type=float, help="mix: fraction of the examples that are "
                        "pre-training text; --tokens/--examples are the imitation data")
    recipe.add_argument("--l2sp-weight", type=float, help="l2sp: lambda of the penalty")
    recipe.add_argument("--wise-alphas", help="wise: comma-separated weights of the fine-tuned "
                        "model, one evaluation-only run each; --tokens/--examples are then the "
                        "evaluated examples")
    parser.add_argument("--study", type=Path, help="gin file binding StudyGrid (see budgets/)")
    parser.add_argument("--measured-tokens-per-second", type=float,
                        help="with --study: calibrate MFU from a measured run of --model on "
                             "--chips x --hardware, then re-price the study")
    parser.add_argument("--hardware-file", type=Path, help="hardware catalogue (YAML)")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    target = parser.add_argument_group("the target's answers (budgets/targets.yaml)")
    target.add_argument("--target-price", metavar="ROW", help="price row of the target")
    target.add_argument("--prompts", type=int, help="answers bought (one per prompt)")
    target.add_argument("--prompt-tokens", type=int, help="tokens of one prompt (mean)")
    target.add_argument("--answer-tokens", type=int, help="tokens of one answer (expected)")
    target.add_argument("--batch", action="store_true", help="bought through the batch "
                        "interface (the row's batch discount)")
    target.add_argument("--target-price-file", type=Path, help="target price sheet (YAML)")


def _human(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                          (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def _table_row(row: dict) -> dict[str, str]:
    return {
        "model": row["model"], "arch": row["arch"], "params": _human(row["params"]),
        "recipe": row["recipe"], "trainable": _human(row["trainable_params"]),
        "opt_state": _human(row["memory_bytes"]["optimizer_state"], "B"),
        "mem/chip": _human(row["per_chip_bytes"], "B"),
        "tokens": _human(row["tokens"]), "train_flops": _human(row["train_flops"]),
        "eval_flops": _human(row["evaluation_flops"]),
        "hardware": row["hardware"], "chips": str(row["chips"]),
        "fits": ("yes" if row["fits"] else "no: needs " + (
            "more memory per chip" if row["min_chips"] is None else f"{row['min_chips']} chips")),
        "hours": f"{row['hours']:,.1f}", "chip_hours": f"{row['chip_hours']:,.1f}",
        "cost_usd": "n/a" if row["cost_usd"] is None else f"${row['cost_usd']:,.0f}",
        "mfu": f"{row['mfu']:.2f}"}


def _render(rows: list[dict], fmt: str, footer: list[str]) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        flat = [{k: v for k, v in row.items() if not isinstance(v, dict)} for row in rows]
        writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        return buffer.getvalue().rstrip("\n")
    sources = sorted({f"  mfu {row['mfu']:.2f} on {row['hardware']} ({row['arch']}): "
                      f"{row['mfu_source']}" for row in rows})
    return "\n".join([format_table([_table_row(r) for r in rows], COLUMNS, TEXT_COLUMNS), "",
                      "MFU sources:", *sources, *footer])


def _load_study(path: Path) -> StudyGrid:
    if not path.is_file():
        raise FileNotFoundError(f"study file not found: {path}")
    gin.clear_config()
    try:
        gin.parse_config_file(str(path))
        return gin.get_configurable("arch_compare.budget.StudyGrid")()
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    finally:
        gin.clear_config()


def _run_study(args, catalogue) -> tuple[list[RunEstimate], list[str], CollectionCost | None]:
    grid = _load_study(args.study)
    footer = []
    if args.measured_tokens_per_second is not None:
        if not args.model or len(args.model) != 1 or not args.chips:
            raise ValueError("calibration needs exactly one --model, --hardware and --chips "
                             "describing the measured run")
        mfu, study = calibrate(grid, args.model[0], args.hardware, args.chips,
                               args.measured_tokens_per_second, catalogue=catalogue)
        footer.append(f"calibrated: {args.model[0]} at {args.measured_tokens_per_second:,.0f} "
                      f"tokens/s on {args.chips} x {args.hardware} is MFU {mfu:.3f}; "
                      f"{args.hardware} runs re-priced with it")
    else:
        study = estimate_study(grid, catalogue)
    for hardware in dict.fromkeys(run.chip.name for run in study.runs):
        cost = study.total_cost_usd(hardware)
        footer.append(f"total on {hardware}: {study.total_chip_hours(hardware):,.0f} chip-hours, "
                      + ("no verified price" if cost is None else f"${cost:,.0f}"))
    if study.collection is not None and args.target_price is None:
        footer.append(f"the target's answers: {study.answers:,} conversations of "
                      f"{grid.input_length} + {grid.target_length} tokens (the largest amount, "
                      f"shared by every run)")
    return list(study.runs), footer, study.collection


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(value) for value in text.split(","))
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def recipe_of(args) -> Recipe:
    """The recipe the flags describe; ValueError for a setting of another kind's (--lora-rank
    without --recipe lora) and for a recipe's missing or invalid setting."""
    misplaced = [f"--{name.replace('_', '-')}" for name, kind in RECIPE_FLAGS.items()
                 if getattr(args, name, None) is not None and kind != args.recipe]
    if misplaced:
        kinds = sorted({RECIPE_FLAGS[flag[2:].replace("-", "_")] for flag in misplaced})
        raise ValueError(f"{', '.join(misplaced)} set(s) a recipe of kind {' or '.join(kinds)}: "
                         f"give --recipe {kinds[0]} (the recipe is {args.recipe!r})")
    kind = args.recipe
    if kind == "full":
        return FULL
    if kind == "lora":
        settings = {name: getattr(args, f"lora_{name}") for name in
                    ("rank", "alpha", "dropout", "base_dtype")
                    if getattr(args, f"lora_{name}") is not None}
        if args.lora_targets is not None:
            settings["targets"] = tuple(name.strip() for name in args.lora_targets.split(","))
        return Recipe("lora", "lora", lora=LoraConfig(**settings))
    if kind == "mix":
        if args.mix_rate is None:
            raise ValueError("--recipe mix needs --mix-rate R (the fraction of pre-training text)")
        return Recipe("mix", "mix", mix_rate=args.mix_rate)
    if kind == "l2sp":
        if args.l2sp_weight is None:
            raise ValueError("--recipe l2sp needs --l2sp-weight LAMBDA")
        return Recipe("l2sp", "l2sp", l2sp_weight=args.l2sp_weight)
    if args.wise_alphas is None:
        raise ValueError("--recipe wise needs --wise-alphas A,B,... (weights in [0, 1])")
    return Recipe("wise", "wise", wise_alphas=_floats(args.wise_alphas, "--wise-alphas"))


def _run_models(args, catalogue) -> tuple[list[RunEstimate], list[str], None]:
    if not args.model:
        raise ValueError("give --model PRESET (repeatable) or --study FILE")
    if args.tokens is None and args.examples is None:
        raise ValueError("give --tokens N or --examples N")
    recipe = recipe_of(args)
    factor = recipe.steps_factor()  # mix: the imitation data plus the mixed-in text
    rows, footer = [], []
    for model in args.model:
        spec = RunSpec(model, tokens=None if args.tokens is None else args.tokens * factor,
                       examples=None if args.examples is None else args.examples * factor,
                       input_length=args.input_length, target_length=args.target_length,
                       hardware=args.hardware, chips=args.chips, mfu=args.mfu,
                       optimizer=args.optimizer, batch_size=args.batch_size, remat=args.remat,
                       sharding=args.sharding, epochs=args.epochs, recipe=recipe)
        run = estimate_run(spec, catalogue)
        if recipe.kind != "wise":
            rows.append(run)
            continue
        # one evaluation-only run per alpha: forward passes over the given examples
        evaluation = (spec.num_examples * spec.epochs
                      * run.forward_flops_per_example["total"])
        for label in recipe.labels():
            rows.append(dataclasses.replace(
                run, spec=dataclasses.replace(spec, recipe=dataclasses.replace(
                    recipe, name=label)), evaluation_flops=evaluation))
    if recipe.kind == "mix":
        length = args.input_length + args.target_length
        tokens = args.tokens if args.tokens is not None else args.examples * length
        extra = (tokens * factor - tokens) * args.epochs
        line = (f"the extra tokens of mixing: {extra:,.0f} tokens ({extra / length:,.0f} "
                f"examples of {args.input_length} + {args.target_length}) of pre-training text "
                f"per model: mix rate {recipe.mix_rate:g} makes the {tokens * args.epochs:,.0f} "
                f"imitation tokens {factor:.4g}x as many")
        if args.format == "table":
            footer.append(line)
        else:  # keeps stdout machine-readable
            print(line, file=sys.stderr)
    return rows, footer, None


# Changes to a run's set-up that lower its memory, tried in order when no chip count fits.
MEMORY_SAVERS: tuple[tuple[str, dict], ...] = (
    ("--remat", {"remat": True}),
    ("--sharding fsdp", {"sharding": "fsdp"}),
    ("--remat --sharding fsdp", {"remat": True, "sharding": "fsdp"}),
)


def what_would_fit(run: RunEstimate, catalogue) -> str:
    """What makes a run that does not fit fit: more chips, else a memory saver, else nothing on
    this chip."""
    where = f"{run.spec.model_name} on {run.chips} x {run.chip.name}"
    if run.min_chips is not None:
        return f"{where}: needs {run.min_chips} chips (--chips {run.min_chips})"
    for flags, change in MEMORY_SAVERS:
        if all(getattr(run.spec, name) == value for name, value in change.items()):
            continue  # already so
        other = estimate_run(dataclasses.replace(run.spec, chips=None, **change), catalogue)
        if other.min_chips is not None:
            return f"{where}: fits with {flags} on {other.min_chips} chips"
    return (f"{where}: one example's activations exceed a chip's memory at any chip count; "
            f"shorten the sequences or choose a chip with more memory")


COLLECTION_FLAGS = ("prompts", "prompt_tokens", "answer_tokens")


def _collection(args) -> CollectionCost | None:
    """The target's answers priced from the flags (None: no --target-price)."""
    given = [name for name in COLLECTION_FLAGS if getattr(args, name) is not None]
    if args.target_price is None:
        if given or args.batch:
            raise ValueError("--prompts, --prompt-tokens, --answer-tokens and --batch price the "
                             "target's answers: give --target-price ROW too")
        return None
    missing = [f"--{name.replace('_', '-')}" for name in COLLECTION_FLAGS if name not in given]
    if missing:
        raise ValueError(f"--target-price {args.target_price}: give {', '.join(missing)} too")
    if args.prompts <= 0 or args.prompt_tokens < 0 or args.answer_tokens <= 0:
        raise ValueError("--prompts and --answer-tokens must be positive, --prompt-tokens >= 0")
    price = get_price(args.target_price, path=args.target_price_file)
    return collection_cost(price, args.prompts * args.prompt_tokens,
                           args.prompts * args.answer_tokens, batch=args.batch)


def _collection_lines(cost: CollectionCost, runs: list[RunEstimate]) -> list[str]:
    """The collection's cost, and per chip kind the runs' dollars plus the collection's."""
    lines = [f"target's answers: {cost.describe()}"]
    for hardware in dict.fromkeys(run.chip.name for run in runs):
        costs = [run.cost_usd for run in runs if run.chip.name == hardware]
        total = ("n/a (no verified chip price)" if None in costs
                 else f"${sum(costs) + cost.usd:,.2f}")
        lines.append(f"total on {hardware} with the target's answers: {total}")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.study and (args.recipe != "full" or any(
            getattr(args, name) is not None for name in RECIPE_FLAGS)):
        raise ValueError("--recipe and its settings price --model runs; a study grid's runs "
                         "are priced as its gin file describes them")
    catalogue = load_catalogue(args.hardware_file)
    collection = _collection(args)
    if collection is not None and not args.study and not args.model:
        print(f"target's answers: {collection.describe()}")
        return 0
    runs, footer, grid_collection = (_run_study if args.study else _run_models)(args, catalogue)
    collection = collection or grid_collection  # the flags price over the study file's row
    if collection is not None:
        extra = _collection_lines(collection, runs)
        if args.format == "table":
            footer = [*footer, *extra]
        else:  # keeps stdout machine-readable
            print("\n".join(extra), file=sys.stderr)
    print(_render([run.to_dict() for run in runs], args.format, footer))
    misfits = [what_would_fit(run, catalogue) for run in runs if not run.fits]
    if misfits:
        # On stderr, so --format json/csv output stays machine-readable.
        print(f"arch-compare budget: {len(misfits)} run(s) do not fit:", file=sys.stderr)
        for line in misfits:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
