"""Rows every report fixture starts from: the study, its target and each model's base run."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from arch_compare.results import ResultsStore, Run


def register_bases(store: ResultsStore, study: str, directory: Path,
                   models: Mapping[str, tuple[str, str, int]], base: Mapping, target: Mapping,
                   put_metrics: Callable[[ResultsStore, str, object], None]) -> dict[str, dict]:
    """Register `study` with a target `oracle` and a done base run per model (metrics from `base`
    and `target` through `put_metrics`); returns each model's Run fields (model, architecture,
    family, parameters) for the fixture's own runs."""
    store.register_study(study, {"models": list(models)}, directory)
    store.put_run(study, Run("target/oracle", "target", "oracle", "target", "llama",
                             {"name": "oracle"}, status="done"))
    put_metrics(store, "target/oracle", target)
    fields = {}
    for model, (architecture, family, parameters) in models.items():
        fields[model] = dict(model=model, architecture=architecture, family=family,
                             parameters=parameters)
        store.put_run(study, Run(f"base/{model}", "base", config={}, status="done",
                                 **fields[model]))
        put_metrics(store, f"base/{model}", base[model])
    return fields
