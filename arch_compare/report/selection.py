"""The report's "Active selection" section: where a study bought a source's answers by selection
strategies (uncertainty, diversity, student-first) beside random, did choosing beat buying the
same number of answers at random?

Everything comes from the stored results: each run's metrics with their 95% intervals, and the
paired comparisons the study recorded between each strategy run and the random run of the same
model, source and amount (`imitation/comparisons.py`: the same evaluation examples resampled for
both). Runs are grouped by their recorded fields (model, data source, selection, amount), never
by their ids. A study whose runs all bought at random has no such section.
"""

from __future__ import annotations

import dataclasses

from arch_compare.report import analysis, fmt, plots, tables
from arch_compare.report.analysis import RANDOM, MetricKey
from arch_compare.report.document import (Bullets, Figures, Paragraph, Section, Subheading,
                                          Table)
from arch_compare.report.load import StudyData
from arch_compare.results import Comparison, Run

TITLE = "Active selection"
ANCHOR = "selection"
KINDS = ("capability", "style")  # tables; figures and findings are about capability


def strategy_sources(data: StudyData) -> tuple[str, ...]:
    """The data sources whose answers some run bought by a strategy other than random."""
    return tuple(s for s in analysis.data_sources(data)
                 if any(name != RANDOM for name in analysis.selections(data, s)))


@dataclasses.dataclass(frozen=True)
class Cell:
    """One strategy of one (model, source, amount): its run and, unless it is random, the paired
    comparison with the random run on one metric (None where none was recorded)."""

    run: Run
    value: float | None
    interval: tuple[float, float] | None
    against_random: Comparison | None


class _Grid:
    """(model, source, amount) -> strategy -> its run, for one study."""

    def __init__(self, data: StudyData):
        self.data = data
        self.values = analysis.values_by_run(data)
        self.intervals = analysis.intervals_by_run(data)
        self.runs: dict[tuple[str, str, int], dict[str, Run]] = {}
        for run in analysis.sorted_runs(data):
            if run.role == "imitation":
                point = (run.model, run.data_source, run.data_examples)
                self.runs.setdefault(point, {}).setdefault(run.selection, run)
        self.comparisons = {(c.run_id, c.baseline_run_id, f"{c.task}/{c.metric}"): c
                            for c in data.comparisons}

    def points(self, source: str) -> list[tuple[str, int]]:
        """(model, amount) of the source, models in report order, amounts increasing."""
        return [(model, amount) for model in analysis.models(self.data)
                for amount in sorted(a for m, s, a in self.runs if m == model and s == source)]

    def cell(self, model: str, source: str, amount: int, strategy: str,
             key: MetricKey) -> Cell | None:
        by_strategy = self.runs.get((model, source, amount), {})
        run = by_strategy.get(strategy)
        if run is None:
            return None
        done = run.status == "done"
        value = self.values.get(run.run_id, {}).get(key.name) if done else None
        interval = self.intervals.get(run.run_id, {}).get(key.name) if done else None
        random_run = by_strategy.get(RANDOM)
        paired = None if strategy == RANDOM or random_run is None else self.comparisons.get(
            (run.run_id, random_run.run_id, key.name))
        return Cell(run, value, interval, paired)


def _difference_text(cell: Cell | None) -> str:
    if cell is None or cell.run.status != "done":
        return tables.NO_RESULT
    if cell.against_random is None:
        return fmt.NA
    difference, interval = tables.difference_cells(cell.against_random)
    mark = f" {tables.SIGNIFICANT}" if cell.against_random.significant else ""
    return f"{difference} ({interval}){mark}"


def selection_table(data: StudyData, grid: _Grid, source: str, key: MetricKey) -> Table | None:
    """Model, amount, each strategy's value (95% interval), each strategy minus random."""
    strategies = analysis.selections(data, source)
    others = [s for s in strategies if s != RANDOM]
    points = grid.points(source)
    cells = {(model, amount, s): grid.cell(model, source, amount, s, key)
             for model, amount in points for s in strategies}
    if all(c is None or c.value is None for c in cells.values()):
        return None
    render = fmt.metric_formatter([c.value for c in cells.values() if c is not None])
    rows = []
    for model, amount in points:
        row = [model, source, fmt.count(amount)]
        for strategy in strategies:
            cell = cells[(model, amount, strategy)]
            row.append(tables.NO_RESULT if cell is None or cell.run.status != "done"
                       else render(cell.value, cell.interval))
        if RANDOM in strategies:
            row += [_difference_text(cells[(model, amount, s)]) for s in others]
        rows.append(tuple(row))
    differences = [f"{s} − random" for s in others] if RANDOM in strategies else []
    return Table(
        columns=("Model", "Source", "Answers bought", *strategies, *differences),
        rows=tuple(rows), numeric=(False, False, True, *(True,) * (len(strategies)
                                                                   + len(differences))),
        group_columns=2,
        caption=f"{key.name} ({key.kind}) by how the answers from {source} were selected: "
                f"value and its 95% interval over the evaluation examples; strategy minus "
                f"random is the paired difference on the same examples with its paired-"
                f"bootstrap 95% interval ({tables.SIGNIFICANT}: the interval excludes 0). "
                f"n/a: undefined, or no paired comparison recorded (rank-classification tasks "
                f"keep no per-example outputs); {tables.NO_RESULT}: no result.")


def _value(render, cell: Cell) -> str:
    return render(cell.value, cell.interval)


def finding(data: StudyData, grid: _Grid, model: str, source: str, key: MetricKey) -> str | None:
    """Which strategy scored highest at the largest amount bought (where random and another
    strategy both have results, else the largest with any), and whether the paired bootstrap
    separates the strategies from random there. Higher is better (a capability metric)."""
    strategies = analysis.selections(data, source)
    amounts = [a for m, a in grid.points(source) if m == model]
    scored = {a: {s: c for s in strategies
                  if (c := grid.cell(model, source, a, s, key)) is not None
                  and c.value is not None} for a in amounts}
    compared = [a for a, by in scored.items() if RANDOM in by and len(by) > 1]
    candidates = compared or [a for a, by in scored.items() if by]
    if not candidates:
        return None
    amount = max(candidates)
    by = scored[amount]
    # One scale for the metric across the study: a column of zeros is still a percentage.
    render = fmt.metric_formatter([values.get(key.name)
                                   for values in analysis.values_by_run(data).values()])
    best = max(by, key=lambda s: by[s].value)
    tied = [s for s in by if by[s].value == by[best].value]
    if len(tied) > 1:  # equal to the last digit (e.g. the same prompts bought)
        best = RANDOM if RANDOM in tied else best
        leaders = ", ".join(tied[:-1]) + " and " + tied[-1] + " scored the same, highest"
    else:
        leaders = f"{best} scored highest"
    text = (f"{model} on {source}, {key.name} at {amount:,} answers bought: {leaders} "
            f"({_value(render, by[best])})")
    if RANDOM not in by:
        return text + "; no random run has a result at this amount to compare with."
    paired = {s: c.against_random for s, c in by.items() if s != RANDOM}
    missing = [s for s, c in paired.items() if c is None]
    significant = {s: c for s, c in paired.items() if c is not None and c.significant}
    parts = []
    if best != RANDOM and paired[best] is not None:
        difference, interval = tables.difference_cells(paired[best])
        parts.append(f"{difference} ({interval}) against random, "
                     + ("significant" if paired[best].significant else "not significant")
                     + " at 95%")
    others = {s: c for s, c in significant.items() if s != best}
    if others:
        parts.append("significantly different from random: " + ", ".join(
            "{} {} ({})".format(s, *tables.difference_cells(c)) for s, c in others.items()))
    elif not significant and len(missing) < len(paired):
        parts.append("no strategy differs significantly from random")
    if missing:
        parts.append("no paired comparison with random recorded for " + ", ".join(missing))
    return text + ("; " + "; ".join(parts) if parts else "") + "."


def findings(data: StudyData) -> list[str]:
    grid = _Grid(data)
    keys = [k for k in analysis.metric_keys(data) if k.kind == "capability"]
    found = []
    for source in strategy_sources(data):
        # Only the models that tried a strategy: the others have random data alone.
        models = dict.fromkeys(run.model for run in data.runs
                               if run.data_source == source and run.selection not in (None, RANDOM))
        for model in models:
            for key in keys:
                sentence = finding(data, grid, model, source, key)
                if sentence is not None:
                    found.append(sentence)
    return found


def _introduction(data: StudyData) -> str:
    sources = strategy_sources(data)
    listed = "; ".join(f"{s}: " + ", ".join(analysis.selections(data, s)) for s in sources)
    runs = [r for r in data.runs if r.role == "imitation" and r.selection != RANDOM]
    return (f"{len(runs)} imitation run{'s' * (len(runs) != 1)} bought "
            f"{'their' if len(runs) != 1 else 'its'} answers by a selection strategy rather "
            f"than at random ({listed}). Each strategy run is compared with the random run of "
            f"the same model, source and number of answers bought, on the same evaluation "
            f"examples (paired bootstrap, 95%); the base model stands at 0 answers bought.")


def sections(data: StudyData) -> tuple[Section, ...]:
    """The "Active selection" section, or nothing when every run bought its answers at random."""
    if not analysis.has_strategies(data):
        return ()
    grid = _Grid(data)
    blocks: list = [Paragraph(_introduction(data))]
    found = findings(data)
    blocks.append(Bullets(tuple(found)) if found else Paragraph(
        "No strategy run has a capability result yet."))
    keys = [k for k in analysis.metric_keys(data) if k.kind in KINDS]
    for source in strategy_sources(data):
        figures = [f for k in keys if k.kind == "capability"
                   if (f := plots.selection_figure(data, source, k)) is not None]
        if figures:
            blocks.append(Figures(tuple(figures)))
        for key in keys:
            table = selection_table(data, grid, source, key)
            if table is not None:
                blocks += [Subheading(f"{source}: {key.name} ({key.kind})"), table]
    return (Section(TITLE, ANCHOR, tuple(blocks)),)
