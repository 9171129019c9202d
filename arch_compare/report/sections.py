"""Assemble the report, in reading order, from one study's results."""

from __future__ import annotations

import json
from collections import Counter

from arch_compare.report import (analysis, collection_costs, fmt, plots, recipes, samples,
                                 selection, tables)
from arch_compare.report.analysis import GapRow
from arch_compare.report.document import (Bullets, Collapsed, Document, Figures, Paragraph,
                                          SampleGroup, Section, Subheading)
from arch_compare.report.load import StudyData


def _counted(counter: Counter) -> str:
    return ", ".join(f"{n} {name}" for name, n in counter.items())


def _listed(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _amounts(amounts: list[int]) -> str:
    return (f"{amounts[0]:,}" if len(amounts) == 1
            else f"{amounts[0]:,} to {amounts[-1]:,}")


def _skipped_bad_records(data: StudyData) -> dict[str, int]:
    """Data source -> bad records its imitation runs skipped (recorded in each run's config)."""
    skipped: dict[str, int] = {}
    for run in data.runs:
        count = (run.config.get("source") or {}).get("skipped_bad_records")
        if run.role == "imitation" and count:
            skipped[run.data_source] = max(count, skipped.get(run.data_source, 0))
    return skipped


def summary(data: StudyData, rows: list[GapRow]) -> str:
    """One paragraph of headline numbers, every one computed from the results."""
    target = analysis.target_run(data) or next(
        (r for r in data.runs if r.role == "target"), None)
    models = analysis.models(data)
    architectures = Counter(next(r.architecture for r in data.runs if r.model == m)
                            for m in models)
    imitation = [r for r in data.runs if r.role == "imitation"]
    amounts = sorted({r.data_examples for r in imitation})
    sentences = [
        f"{len(models)} base model{'s' * (len(models) != 1)} "
        f"({_counted(Counter({a.replace('_', '-'): n for a, n in architectures.items()}))}) "
        f"imitate {target.model if target else 'a target (not recorded)'} in "
        f"{len(imitation)} imitation runs on {_listed(analysis.data_sources(data)) or 'no'} "
        f"data" + (f", {_amounts(amounts)} examples." if amounts else ".")]
    skipped = _skipped_bad_records(data)
    if skipped:
        sentences.append("Bad data records skipped (skip_bad): " + "; ".join(
            f"{count:,} in {source}" for source, count in skipped.items()) + ".")
    statuses = Counter(r.status for r in data.runs)
    sentences.append(f"{statuses['done']} of {len(data.runs)} runs finished"
                     + "".join(f", {statuses[s]} {s}" for s in ("failed", "pending", "running")
                               if statuses[s]) + ".")
    style, capability = analysis.headline(rows, "style"), analysis.headline(rows, "capability")
    if not rows:
        sentences.append("No imitation run has finished, so no share of the gap is known yet.")
    elif style.best is None and capability.best is None:
        sentences.append("The share of the base-to-target gap is undefined for every run "
                         "(base or target results are missing, or equal).")
    else:
        sentences.append(
            f"Averaged over the finished imitation runs, imitation closed "
            f"{fmt.percent(style.mean)} of the base-to-target gap on style metrics and "
            f"{fmt.percent(capability.mean)} on capability metrics.")
        for name, best in (("style", style), ("capability", capability)):
            if best.best is not None:
                sentences.append(f"The best run on {name} ({analysis.run_label(best.best.run)}) "
                                 f"closed {fmt.percent(best.best_value)}.")
        sources = analysis.data_sources(data)
        if len(sources) > 1:
            per_source = [(s, analysis.headline([r for r in rows if r.run.data_source == s],
                                                "capability")) for s in sources]
            sentences.append("Best share closed on capability by data source: " + "; ".join(
                f"{s} {fmt.percent(h.best_value)}" for s, h in per_source) + ".")
        if any(value is not None and value < 0 for value in (style.mean, capability.mean)):
            sentences.append("A negative share: further from the target than the base model.")
    sentences += _significance(data)
    return " ".join(sentences)


def _difference(value: float | None) -> str:
    return fmt.signed(value, 3 if value is not None and abs(value) <= 1 else 1)


def _significance(data: StudyData) -> list[str]:
    """Which imitation-vs-base differences the paired bootstrap finds significant, per metric:
    how many runs, and the range of their differences."""
    roles = {run.run_id: run.role for run in data.runs}
    against_base = [c for c in data.comparisons if roles.get(c.baseline_run_id) == "base"]
    if not against_base:
        return ["No paired comparison against the base models is recorded, so no difference "
                "is tested for significance."]
    by_metric: dict[tuple[str, str], list] = {}
    for comparison in against_base:
        by_metric.setdefault((comparison.task, comparison.metric), []).append(comparison)
    significant = [c for c in against_base if c.significant]
    sentence = (f"Paired bootstrap on the same examples (95%): {len(significant)} of "
                f"{len(against_base)} imitation-versus-base differences are significant")
    parts = []
    for (task, metric), group in by_metric.items():
        changed = sorted(c.difference for c in group if c.significant)
        if changed:
            spread = (_difference(changed[0]) if changed[0] == changed[-1] else
                      f"{_difference(changed[0])} to {_difference(changed[-1])}")
            parts.append(f"{task}/{metric} in {len(changed)} of {len(group)} runs ({spread})")
    if parts:
        sentence += ": " + "; ".join(parts)
    return [sentence + " (every comparison: section “Paired comparisons”)."]


def _benchmarks(data: StudyData) -> Section:
    blocks = []
    status = tables.status_table(data)
    if status is not None:
        blocks += [Subheading("Runs without results"), status]
    for task, table in tables.benchmark_tables(data).items():
        blocks += [Subheading(task), table]
    if not blocks:
        blocks = [Paragraph("No metrics recorded yet.")]
    return Section("Benchmarks", "benchmarks", tuple(blocks))


def _comparisons(data: StudyData) -> Section:
    table = tables.comparison_table(data)
    return Section("Paired comparisons", "comparisons", (
        Paragraph("Each imitation run against its model's base run, and against the run of the "
                  "same model and amount on each earlier data source of the study, on every "
                  "generation task's headline metrics."),
        table if table is not None else Paragraph("No paired comparison recorded.")))


def _style_vs_capability(data: StudyData, rows: list[GapRow]) -> Section:
    figure = plots.style_capability_figure(data, rows)
    if figure is None:
        return Section("Style vs capability", "style-vs-capability", (Paragraph(
            "No imitation run has both a style and a capability share of the gap."),))
    both = [r for r in rows if None not in (r.mean_by_kind["style"],
                                            r.mean_by_kind["capability"])]
    above = sum(r.mean_by_kind["style"] > r.mean_by_kind["capability"] for r in both)
    return Section("Style vs capability", "style-vs-capability", (
        Paragraph(f"{above} of {len(both)} imitation runs closed more of the gap on style than "
                  f"on capability."), Figures((figure,))))


def _config_differences(data: StudyData) -> Section:
    differences = analysis.config_differences(data)
    expected = [d.key for d in differences if d.status == "model or data"]
    table = tables.config_difference_table(differences)
    flagged = sum(d.flagged for d in differences)
    blocks = [Paragraph(
        "Fairness rule: every model gets the same optimizer, schedule, steps and evaluation "
        "unless the study says otherwise (in its allowed_differences list). "
        + (f"{flagged} key{'s' * (flagged != 1)} differ{'s' * (flagged == 1)} between models "
           f"trained on the same data and {'are' if flagged != 1 else 'is'} flagged (⚠)."
           if flagged else "No key differs between models trained on the same data without "
                           "the study's leave."))]
    if table is not None:
        blocks.append(table)
    if expected:
        blocks.append(Paragraph("Also differing, as expected (they name the model or the data): "
                                + ", ".join(expected) + "."))
    return Section("Configuration differences", "config", tuple(blocks))


def _compute(data: StudyData) -> Section:
    blocks = [tables.compute_table(data)]
    execution = tables.execution_table(data)
    if execution is not None:
        blocks += [Subheading("Execution settings"), execution]
    return Section("Compute: estimated and measured", "compute", tuple(blocks))


def _samples(data: StudyData) -> Section:
    groups: list[SampleGroup] = samples.sample_groups(data)
    return Section("Sample outputs", "samples",
                   tuple(groups) or (Paragraph("No sample outputs recorded."),))


def _notes(data: StudyData) -> Section:
    notes = data.study.config.get("notes") or []
    notes = [notes] if isinstance(notes, str) else [str(n) for n in notes]
    return Section("Notes", "notes", (Bullets(tuple(notes)),) if notes else (
        Paragraph("The study recorded no notes."),))


def _configurations(data: StudyData) -> Section:
    dump = lambda value: json.dumps(value, indent=2, sort_keys=True)
    blocks = [Collapsed(f"study {data.study.name}", dump(data.study.config))]
    blocks += [Collapsed(run.run_id, dump(run.config)) for run in analysis.sorted_runs(data)]
    return Section("Run configurations", "configurations", tuple(blocks))


def build_document(data: StudyData) -> Document:
    rows = analysis.gap_rows(data)
    # "other" metrics (rates of the target's own answers, mean lengths) have no direction to
    # close a gap in; they stay in the benchmark tables and plots.
    keys = tuple(k for k in analysis.metric_keys(data) if k.kind != "other")
    gap_figure = plots.gap_figure(data, rows)
    metric_figures = plots.metric_figures(data)
    sections = (
        _benchmarks(data),
        Section("Metrics against imitation data", "curves", (
            Paragraph("Each metric against the amount of imitation data (examples; tokens are "
                      "in the tables): one colour per model, one line style per data source, "
                      "the base model at the left, the target as a dashed line; bars (and the "
                      "target's grey band) are 95% intervals over the evaluation examples."),
            Figures(tuple(metric_figures)) if metric_figures else Paragraph("Nothing to plot."))),
        _comparisons(data),
        *selection.sections(data),  # only where a strategy chose answers
        Section("Share of the gap closed", "gap", (
            tables.gap_table(keys, rows) if rows else Paragraph("No finished imitation run."),
            *((Figures((gap_figure,)),) if gap_figure else ()))),
        _style_vs_capability(data, rows),
        *recipes.sections(data),  # only where some run fine-tuned by a recipe other than full
        _compute(data),
        *collection_costs.collection_sections(data),
        _config_differences(data),
        _samples(data),
        _notes(data),
        _configurations(data),
    )
    return Document(title=f"Imitation study “{data.study.name}”", summary=summary(data, rows),
                    sections=sections)
