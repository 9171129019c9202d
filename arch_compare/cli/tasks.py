"""List every registered task and mixture: kind, splits (with record counts), features, metrics.

Tasks whose data is not on this machine are listed with the path they would read
($ARCH_COMPARE_DATA_DIR for the real benchmarks) and why they cannot be read yet.
"""

from __future__ import annotations

import argparse
import json

from arch_compare.cli.tables import format_table

COLUMNS = ("name", "kind", "splits", "features", "metrics", "source")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("names", nargs="*", help="tasks or mixtures to show (default: all)")


def _split_counts(name: str, splits) -> dict[str, int | str]:
    from arch_compare_tasks.registry import records
    counts = {}
    for split in splits:
        try:
            counts[split] = len(records(name, split))
        except (OSError, ValueError) as error:
            counts[split] = f"unavailable: {error}"
    return counts


def describe(name: str) -> dict:
    from arch_compare_tasks import registry
    if name in registry.MIXTURES:
        spec = registry.MIXTURES[name]
        return {"name": name, "kind": "mixture", "description": spec.description,
                "rates": dict(spec.rates), "splits": {}, "features": [], "metrics": [],
                "source": ", ".join(f"{task} ({rate:g})" for task, rate in spec.rates)}
    spec = registry.get_task(name)
    return {"name": name, "kind": spec.kind, "description": spec.description,
            "splits": _split_counts(name, spec.splits), "features": list(spec.features),
            "metrics": [fn.__name__ for fn in spec.metric_fns], "source": spec.source}


def _cell(row: dict) -> dict[str, str]:
    splits = ", ".join(f"{split}={count}" if isinstance(count, int) else f"{split}=missing"
                       for split, count in row["splits"].items())
    return {"name": row["name"], "kind": row["kind"], "splits": splits or "-",
            "features": ",".join(row["features"]) or "-",
            "metrics": ",".join(row["metrics"]) or "-", "source": row["source"]}


def run(args: argparse.Namespace) -> int:
    import arch_compare_tasks.catalogue  # noqa: F401  (registers everything)
    from arch_compare_tasks import registry
    for name in args.names:
        if name not in registry.MIXTURES:
            registry.get_task(name)  # unknown names raise with suggestions
    rows = [describe(name) for name in (args.names or [*registry.TASKS, *registry.MIXTURES])]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    text = ("name", "kind", "splits", "features", "metrics", "source")
    print(format_table([_cell(row) for row in rows], COLUMNS, text_columns=text))
    missing = [(row["name"], split, count) for row in rows
               for split, count in row["splits"].items() if not isinstance(count, int)]
    for name, split, reason in missing:
        print(f"{name}/{split}: {reason}")
    return 0
