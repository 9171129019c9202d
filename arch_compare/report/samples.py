"""A few sample outputs per task: each model's base and most-trained imitation runs, next to the
target's reference answer."""

from __future__ import annotations

import re

from arch_compare.report import analysis
from arch_compare.report.document import SampleGroup
from arch_compare.report.load import StudyData
from arch_compare.results import Run, Sample

EXAMPLES_PER_TASK = 2
MAX_CHARACTERS = 800


def readable(text: str, limit: int = MAX_CHARACTERS) -> str:
    """The text as written, except that runs of empty lines (small models emit dozens) are
    counted instead of shown, and very long text is cut; both say so."""
    text = re.sub(r"\n{3,}", lambda m: f"\n[{len(m.group()) - 1} empty lines]\n", text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]} … [cut here; {len(text):,} characters in all]"


def _shown_runs(data: StudyData, model: str, have: dict[str, Sample]) -> list[Run]:
    """The model's base run and, per data source (and selection strategy, where the study has
    several), its largest imitation run with this sample."""
    runs = [r for r in analysis.sorted_runs(data) if r.model == model and r.run_id in have]
    shown = [r for r in runs if r.role == "base"]
    for source in analysis.data_sources(data):
        for selection in analysis.selections(data, source):
            imitation = [r for r in runs if r.role == "imitation" and r.data_source == source
                         and r.selection == selection]
            if imitation:
                shown.append(max(imitation, key=lambda r: r.data_examples))
    return shown


def sample_groups(data: StudyData, per_task: int = EXAMPLES_PER_TASK) -> list[SampleGroup]:
    by_task: dict[str, dict[str, dict[str, Sample]]] = {}  # task -> example -> run_id -> sample
    for sample in data.samples:
        by_task.setdefault(sample.task, {}).setdefault(sample.example_id, {})[
            sample.run_id] = sample
    groups = []
    for task, examples in by_task.items():
        # The examples most runs answered show the most comparisons.
        chosen = sorted(examples, key=lambda e: -len(examples[e]))[:per_task]
        for example_id in chosen:
            have = examples[example_id]
            first = next(iter(have.values()))
            outputs = tuple((analysis.run_label(run), readable(have[run.run_id].output))
                            for model in analysis.models(data)
                            for run in _shown_runs(data, model, have))
            groups.append(SampleGroup(title=f"{task}, example {example_id}",
                                      prompt=readable(first.prompt),
                                      reference=readable(first.reference), outputs=outputs))
    return groups
