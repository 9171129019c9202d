"""Comparison items straight from a study's results database (`arch_compare.results`).

Each imitation run's sample output is paired with the target run's output for the same task and
example, as in the paper's human evaluation. Models are named by run id (for example
"imitation/llama-7b/broad/256"), which is unique within a study where display names may repeat;
the display names, the task and the example id go into the item's `meta`.
"""

from __future__ import annotations

from pathlib import Path

from arch_compare.pairwise.items import Item
from arch_compare.results import ResultsStore


def items_from_study(results: str | Path, study: str, *, target_run: str | None = None,
                     roles: tuple[str, ...] = ("imitation",)) -> list[Item]:
    with ResultsStore(results, read_only=True) as store:  # a source: never created or changed
        store.study(study)  # a KeyError that lists the studies there
        runs = store.runs(study)
        targets = [run for run in runs if run.role == "target"]
        if target_run is not None:
            targets = [run for run in targets if run.run_id == target_run]
        if len(targets) != 1:
            names = [run.run_id for run in runs if run.role == "target"]
            raise ValueError(f"{results}: study {study!r} needs exactly one target run "
                             f"(choose with --target-run); target runs: {names}")
        target = targets[0]
        reference = {(s.task, s.example_id): s for s in store.samples(study, target.run_id)}
        items = []
        for run in runs:
            if run.role not in roles:
                continue
            for sample in store.samples(study, run.run_id):
                theirs = reference.get((sample.task, sample.example_id))
                if theirs is None:
                    continue
                items.append(Item(
                    id=f"{sample.task}/{sample.example_id}/{run.run_id}", prompt=theirs.prompt,
                    model_a=target.run_id, output_a=theirs.output,
                    model_b=run.run_id, output_b=sample.output,
                    meta={"task": sample.task, "example_id": sample.example_id,
                          "model_a_name": target.model, "model_b_name": run.model}))
    if not items:
        raise ValueError(f"{results}: study {study!r} has no samples that a {roles} run and the "
                         f"target run {target.run_id!r} share")
    return items
