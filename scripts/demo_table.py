"""The README's demo table, with 95% intervals, from a demo study's results database.

    .venv/bin/python scripts/demo_table.py runs/demo/results.sqlite

Every number and its interval is read from the database, where the study recorded them: Wilson's
score interval for the rates (each a share of a fixed set of evaluation questions; "lists when the
target lists" counts the style prompts the target answers with a list), the percentile bootstrap
over the style prompts for the length correlation. The intervals cover the sampling of questions
only, not the variation between training runs (one seed per cell).
"""

from __future__ import annotations

import sys

from arch_compare.report.fmt import signed
from arch_compare.report.tables import SIGNIFICANT
from arch_compare.results import ResultsStore

# Fine-tuning recipes the demo adds to the broad cell (gin_configs/experiments/demo_study.gin).
RECIPES = (("mix", "mix 25%"), ("l2sp", "L2-SP 0.01"), ("lora", "LoRA r8"),
           ("wise@0.5", "WiSE 0.5"))
# Post-training after the Cypher cell, for GPT-2 and T5 (the same gin file's POST_TRAINING).
POST_TRAINING = (("dpo", "DPO (target-judged pairs)"),
                 ("rs", "rejection sampling (execution-checked)"))
ROWS = [("base", "base"), ("broad/512", "broad 512"),
        *((f"broad/512/{label}", f"broad 512, {name}") for label, name in RECIPES),
        ("cypher/512", "Cypher 512"),
        *((f"cypher/512/{label}", f"Cypher 512, {name}") for label, name in POST_TRAINING),
        ("cypher/student_first/512", "Cypher 512, student first"),
        ("cypher/diversity/512", "Cypher 512, diversity")]
MODELS = ("gpt2-tiny", "llama-tiny", "t5-tiny", "ul2-tiny")
COLUMNS = (("demo_facts_known", "fact_accuracy", "known facts"),
           ("demo_facts_unseen", "fact_accuracy", "unseen facts"),
           ("demo_style", "list_when_target_lists", "lists when target lists"),
           ("demo_style", "length_pearson", "length corr."),
           ("demo_cypher", "execution_accuracy", "Cypher, new wordings"),
           ("demo_cypher_entities", "execution_accuracy", "Cypher, new entities"),
           ("demo_cypher", "executable", "Cypher runs"))
# Paired differences printed under the table: (run suffix, baseline suffix).
PAIRS = (("cypher/512", "base"), ("cypher/512", "broad/512"), ("broad/512", "base"),
         ("cypher/student_first/512", "cypher/512"), ("cypher/diversity/512", "cypher/512"))
# The recipes' table: each broad run against its base (what imitation cost and gained) and each
# recipe against full fine-tuning on the same data.
RECIPE_PAIRS = (("broad/512", "base"),
                *((f"broad/512/{label}", "base") for label, _ in RECIPES),
                *((f"broad/512/{label}", "broad/512") for label, _ in RECIPES))
# The post-training table: each run against the Cypher run it started from.
POST_PAIRS = tuple((f"cypher/512/{label}", "cypher/512") for label, _ in POST_TRAINING)
POST_METRICS = (("demo_cypher", "execution_accuracy", "Cypher, new wordings"),
                ("demo_cypher_entities", "execution_accuracy", "Cypher, new entities"),
                ("demo_cypher", "executable", "Cypher runs, new wordings"),
                ("demo_cypher_entities", "executable", "Cypher runs, new entities"),
                ("demo_style", "length_pearson", "length corr."))
RECIPE_METRICS = (("demo_facts_known", "fact_accuracy", "known facts"),
                  ("demo_facts_unseen", "fact_accuracy", "unseen facts"),
                  ("demo_style", "list_when_target_lists", "lists when target lists"),
                  ("demo_style", "length_pearson", "length corr."))


def cell(metric) -> str:
    if metric is None:
        return "—"
    if metric.value is None:
        return "n/a"
    correlation = metric.metric == "length_pearson"
    text = f"{metric.value:.2f}" if correlation else f"{metric.value:.1f}"
    if metric.low is None or metric.high is None:
        return text
    if correlation:
        return f"{text} ({metric.low:.2f} to {metric.high:.2f})"
    return f"{text} ({metric.low:.0f}-{metric.high:.0f})"


def main(database: str, study: str = "demo") -> None:
    with ResultsStore(database, read_only=True) as store:
        metrics = {(m.run_id, m.task, m.metric): m for m in store.metrics(study)}
        comparisons = {(c.run_id, c.baseline_run_id, c.task, c.metric): c
                       for c in store.comparisons(study)}
        runs = {run.run_id for run in store.runs(study)}
        targets = [run.run_id for run in store.runs(study) if run.role == "target"]
        collections = store.collections(study)
    base = {(task, metric): metrics.get((f"base/{MODELS[0]}", task, metric))
            for task, metric, _ in COLUMNS}

    def heading(task, metric, label):  # n: the examples behind the first base model's value
        n = getattr(base[task, metric], "n", None)
        return label + (f" (n={n})" if n is not None else "")

    print("| model | data | " + " | ".join(heading(*column) for column in COLUMNS) + " |")
    print("| --- | --- |" + " ---: |" * len(COLUMNS))
    for model in MODELS:
        for suffix, label in ROWS:
            run = run_id(model, suffix)
            if run not in runs:  # strategies run for some families only
                continue
            print(f"| {model} | {label} | " + " | ".join(
                cell(metrics.get((run, task, metric))) for task, metric, _ in COLUMNS) + " |")
    for run in targets:
        print(f"| {run.split('/', 1)[1]} | | " + " | ".join(
            cell(metrics.get((run, task, metric))) for task, metric, _ in COLUMNS) + " |")
    print()
    print_differences(comparisons)
    print()
    print_differences(comparisons, RECIPE_PAIRS, RECIPE_METRICS)
    print()
    print_differences(comparisons, POST_PAIRS, POST_METRICS)
    print()
    print_collections(collections)


def run_id(model: str, suffix: str) -> str:
    return f"base/{model}" if suffix == "base" else f"imitation/{model}/{suffix}"


def difference(comparison) -> str:
    if comparison is None or comparison.difference is None:
        return "—"
    mark = f" {SIGNIFICANT}" if comparison.significant else ""
    return (f"{signed(comparison.difference)} ({signed(comparison.low)} to "
            f"{signed(comparison.high)}){mark}")


DIFFERENCE_METRICS = (("demo_cypher", "execution_accuracy", "Cypher, new wordings"),
                      ("demo_cypher_entities", "execution_accuracy", "Cypher, new entities"),
                      ("demo_style", "list_when_target_lists", "lists when target lists"),
                      ("demo_facts_known", "fact_accuracy", "known facts"))


def print_differences(comparisons, pairs=PAIRS, metrics=DIFFERENCE_METRICS) -> None:
    """Paired differences in points (same questions, paired bootstrap; the length correlation
    in r), ✱ where the 95% interval excludes 0, for the metrics the findings rest on."""
    print("| model | difference | " + " | ".join(label for _, _, label in metrics) + " |")
    print("| --- | --- |" + " ---: |" * len(metrics))
    for model in MODELS:
        for run, baseline in pairs:
            if not any(key[:2] == (run_id(model, run), run_id(model, baseline))
                       for key in comparisons):
                continue
            print(f"| {model} | {run} − {baseline} | " + " | ".join(
                difference(comparisons.get((run_id(model, run), run_id(model, baseline),
                                            task, metric)))
                for task, metric, _ in metrics) + " |")


def print_collections(collections) -> None:
    """What each purchase of the target's answers was estimated to cost before the study ran,
    against what it was billed (the demo's price row is fictional)."""
    print("| purchase | answers bought | tokens estimated before | tokens billed | "
          "USD estimated | USD billed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in collections:
        which = "/".join(part for part in (row.source, row.selection, row.model) if part)
        billed = (f"{row.prompt_tokens:,} + {row.completion_tokens:,}"
                  + (" (estimated from the text)" if row.tokens_estimated else ""))
        print(f"| {which} | {row.answers:,} | {row.estimated_prompt_tokens:,} + "
              f"{row.estimated_completion_tokens:,} | {billed} | {usd(row.estimated_usd)} | "
              f"{usd(row.spent_usd)} |")


def usd(value) -> str:
    return "—" if value is None else f"${value:.4f}"


if __name__ == "__main__":
    main(*sys.argv[1:])
