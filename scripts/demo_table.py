"""The README's demo table, with 95% intervals, from a demo study's results database.

    .venv/bin/python scripts/demo_table.py runs/demo/results.sqlite

Each rate is a share of a fixed set of evaluation questions, so its interval is Wilson's score
interval over that many questions (fact accuracy: every fact question of the group; "lists when the
target lists": the style prompts the target answers with a list). The length correlation's
interval is Fisher's z interval over the style prompts. The intervals cover the sampling of
questions only, not the variation between training runs (one seed per cell).
"""

from __future__ import annotations

import math
import sqlite3
import sys

from arch_compare.evaluation.metrics import uses_list
from arch_compare_tasks import demo_world, registry

Z95 = 1.959964
ROWS = [("base", "base"), ("broad/128", "broad 128"), ("broad/512", "broad 512"),
        ("local/48", "local 48")]
MODELS = ("gpt2-tiny", "llama-tiny", "t5-tiny", "ul2-tiny")


def wilson(percent: float, n: int) -> tuple[float, float]:
    p = percent / 100
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def fisher(r: float, n: int) -> tuple[float, float]:
    z, half = math.atanh(max(min(r, 0.999999), -0.999999)), Z95 / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def rate(percent, n) -> str:
    low, high = wilson(percent, n)
    return f"{percent:.1f} ({low:.0f}-{high:.0f})"


def correlation(r, n) -> str:
    if r is None:
        return "n/a"
    low, high = fisher(r, n)
    return f"{r:.2f} ({low:.2f} to {high:.2f})"


def main(database: str) -> None:
    demo_world.register(replace=True)
    known = len(registry.records("demo_facts_known", "validation"))
    unseen = len(registry.records("demo_facts_unseen", "validation"))
    style = registry.records("demo_style", "validation")
    listed = sum(uses_list(record["targets"]) for record in style)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        values = {(run, task, metric): value for run, task, metric, value in db.execute(
            "SELECT run_id, task, metric, value FROM metrics WHERE study = 'demo'")}
    print(f"| model | data | known facts (n={known}) | unseen facts (n={unseen}) | lists when "
          f"target lists (n={listed}) | length corr. (n={len(style)}) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for model in MODELS:
        for suffix, label in ROWS:
            run = f"base/{model}" if suffix == "base" else f"imitation/{model}/{suffix}"
            print(f"| {model} | {label} "
                  f"| {rate(values[run, 'demo_facts_known', 'fact_accuracy'], known)} "
                  f"| {rate(values[run, 'demo_facts_unseen', 'fact_accuracy'], unseen)} "
                  f"| {rate(values[run, 'demo_style', 'list_when_target_lists'], listed)} "
                  f"| {correlation(values[run, 'demo_style', 'length_pearson'], len(style))} |")


if __name__ == "__main__":
    main(sys.argv[1])
