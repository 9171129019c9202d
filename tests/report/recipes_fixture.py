"""A results database of a study that fine-tuned one cell per model by recipes beside full.

Two models (gpt2-tiny decoder-only, t5-tiny encoder-decoder) imitate on "broad" data at 64 and 256
examples (full); at 256 each also runs mix, l2sp, lora and wise@0.5. Every run's change against
its base run is written out below (capability regression and style gain, each with the half-width
of its paired interval), and the metrics are the base's plus those changes, so the report's
numbers can be checked against them. Built so that
- for gpt2-tiny, mix regresses least of all but keeps less than half of full's style gain, and
  lora regresses least among the rest, separated from full by the paired comparison;
- for t5-tiny, lora regresses least but its paired comparison with full includes 0;
- gpt2-tiny ran on a priced device (4 x TPU v4), t5-tiny on a CPU (no price).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from arch_compare.evaluation.intervals import MetricValue
from arch_compare.results import Comparison, ResultsStore, Run
from tests.report.study_rows import register_bases

STUDY = "recipes"
SOURCE = "broad"
AMOUNTS = (64, 256)
RECIPE_AMOUNT = 256
EXEC, MMLU, STYLE = "cypher/execution_accuracy", "mmlu/accuracy", "style/length_pearson"
KINDS = {EXEC: "capability", MMLU: "capability", STYLE: "style"}
MODELS = {"gpt2-tiny": ("decoder_only", "gpt2", 1_000_000),
          "t5-tiny": ("encoder_decoder", "t5", 2_000_000)}
BASE = {"gpt2-tiny": {EXEC: 0.40, MMLU: 0.30, STYLE: 0.00},
        "t5-tiny": {EXEC: 0.35, MMLU: 0.28, STYLE: 0.05}}
TARGET = {EXEC: 0.80, MMLU: 0.60, STYLE: 0.70}
RECIPES = {"full": {"kind": "full"}, "mix": {"kind": "mix", "mix_rate": 0.2},
           "l2sp": {"kind": "l2sp", "l2sp_weight": 0.1},
           "lora": {"kind": "lora", "lora": {"rank": 8, "alpha": 16.0}},
           "wise@0.5": {"kind": "wise", "wise_alphas": [0.5], "alpha": 0.5}}
# (model, amount, recipe label) -> (execution-accuracy regression, its half-width, style gain,
# its half-width, mmlu regression: no comparison, as for a rank-classification task)
CHANGES = {
    ("gpt2-tiny", 64, "full"): (0.05, 0.03, 0.20, 0.05, 0.01),
    ("gpt2-tiny", 256, "full"): (0.10, 0.04, 0.40, 0.06, 0.02),
    ("gpt2-tiny", 256, "mix"): (0.00, 0.04, 0.10, 0.05, 0.00),
    ("gpt2-tiny", 256, "l2sp"): (0.05, 0.04, 0.35, 0.06, 0.01),
    ("gpt2-tiny", 256, "lora"): (0.01, 0.03, 0.30, 0.06, 0.00),
    ("gpt2-tiny", 256, "wise@0.5"): (0.04, 0.03, 0.25, 0.05, 0.01),
    ("t5-tiny", 64, "full"): (0.03, 0.03, 0.15, 0.05, 0.01),
    ("t5-tiny", 256, "full"): (0.08, 0.06, 0.35, 0.06, 0.02),
    ("t5-tiny", 256, "mix"): (0.09, 0.06, 0.30, 0.06, 0.02),
    ("t5-tiny", 256, "l2sp"): (0.07, 0.06, 0.32, 0.06, 0.02),
    ("t5-tiny", 256, "lora"): (0.06, 0.07, 0.30, 0.06, 0.01),
    ("t5-tiny", 256, "wise@0.5"): (0.075, 0.06, 0.20, 0.06, 0.02),
}
# Half-width of the paired interval of (recipe - full) on execution accuracy.
AGAINST_FULL = {"gpt2-tiny": 0.04, "t5-tiny": 0.06}
TRAINABLE = {"lora": 8_192}
DEVICES = {"gpt2-tiny": "4 x TPU v4", "t5-tiny": "1 x cpu"}
TPU_V4_PRICE = 3.22
EVAL_FLOPS = 1e14
SPEED = {"wise@0.5": 0.1, "mix": 1.25, "lora": 0.8}  # measured time relative to full


def run_id(model: str, amount: int, label: str) -> str:
    full = f"imitation/{model}/{SOURCE}/{amount}"
    return full if label == "full" else f"{full}/{label}"


def estimate(model: str, amount: int, label: str) -> dict:
    parameters = MODELS[model][2]
    tokens = amount * 1e6 * (1.25 if label == "mix" else 1.0)
    kind = RECIPES[label]["kind"]
    train = 0.0 if kind == "wise" else (4.0 if kind == "lora" else 6.0) * parameters * tokens
    flops = train + EVAL_FLOPS
    chip_hours = flops / (275e12 * 0.4) / 3600
    record = {"flops": flops, "train_flops": train, "evaluation_flops": EVAL_FLOPS,
              "chip_hours": chip_hours, "cost_usd": chip_hours * TPU_V4_PRICE,
              "hardware": "tpu-v4", "chips": 1}
    if label in TRAINABLE:
        record["trainable_parameters"] = TRAINABLE[label]
    return record


def measured(model: str, amount: int, label: str) -> dict:
    seconds = 20.0 + amount * 4 * SPEED.get(label, 1.0)
    return {"wall_seconds": seconds, "train_seconds": seconds - 10, "eval_seconds": 10.0,
            "flops": estimate(model, amount, label)["train_flops"], "device": DEVICES[model]}


def values(model: str, amount: int, label: str) -> dict[str, float]:
    regression, _, gain, _, mmlu = CHANGES[(model, amount, label)]
    base = BASE[model]
    return {EXEC: base[EXEC] - regression, MMLU: base[MMLU] - mmlu, STYLE: base[STYLE] + gain}


def _metrics(store: ResultsStore, run: str, numbers: dict[str, float]) -> None:
    for task in dict.fromkeys(name.split("/")[0] for name in KINDS):
        names = [n for n in KINDS if n.startswith(task + "/")]
        store.put_metrics(STUDY, run, task,
                          {n.split("/")[1]: MetricValue(numbers[n], numbers[n] - 0.04,
                                                        numbers[n] + 0.04, 200, "wilson")
                           for n in names}, {n.split("/")[1]: KINDS[n] for n in names})


def _paired(run: str, baseline: str, name: str, difference: float, half: float) -> Comparison:
    low, high = difference - half, difference + half
    return Comparison(run, baseline, *name.split("/"), difference, low, high, low > 0 or high < 0)


def comparisons() -> list[Comparison]:
    """Every run against its base (execution accuracy and style; mmlu has none), and each
    recipe run against its cell's full run on execution accuracy."""
    rows = []
    for (model, amount, label), (regression, reg_half, gain, gain_half, _) in CHANGES.items():
        run = run_id(model, amount, label)
        rows += [_paired(run, f"base/{model}", EXEC, -regression, reg_half),
                 _paired(run, f"base/{model}", STYLE, gain, gain_half)]
        if label != "full":
            full_regression = CHANGES[(model, amount, "full")][0]
            rows.append(_paired(run, run_id(model, amount, "full"), EXEC,
                                full_regression - regression, AGAINST_FULL[model]))
    return rows


def build(path: Path) -> Path:
    with ResultsStore(path) as store:
        fields = register_bases(store, STUDY, path.parent, MODELS, BASE, TARGET, _metrics)
        for model, common in fields.items():
            for (owner, amount, label) in CHANGES:
                if owner != model:
                    continue
                recipe = dict(RECIPES[label], name=label.split("@")[0], label=label)
                run = run_id(model, amount, label)
                store.put_run(STUDY, Run(
                    run, "imitation", config={"lr": 1e-3, "recipe": recipe}, status="done",
                    data_source=SOURCE, data_examples=amount, recipe=label,
                    estimate=estimate(model, amount, label),
                    measured=measured(model, amount, label), **common))
                _metrics(store, run, values(model, amount, label))
        store.put_comparisons(STUDY, comparisons())
    return path


def build_without_recipe_column(path: Path) -> Path:
    """The same study as an older database has it: full runs only, no `recipe` column."""
    build(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM runs WHERE run_id LIKE 'imitation/%/%/%/%'")
        db.execute("DELETE FROM metrics WHERE run_id LIKE 'imitation/%/%/%/%'")
        db.execute("DELETE FROM comparisons WHERE run_id LIKE 'imitation/%/%/%/%'")
        db.execute("ALTER TABLE runs DROP COLUMN recipe")
    return path
