"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no display, and no
pyplot global state, so drawing here never changes another caller's backend).

- one figure per metric: its value against the amount of imitation data (log x axis), one line per
  model, data source and selection strategy (where the study has strategies, markers tell them
  apart), the base model as the leftmost point, the target as a dashed line; 95% intervals as
  error bars (the target's as a grey band);
- the mean share of the gap closed against the amount, capability and style side by side;
- style against capability, one point per imitation run (the paper's central contrast).
"""

from __future__ import annotations

import io
import math
import re

from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D

from arch_compare.report import analysis, fmt
from arch_compare.report.analysis import GapRow
from arch_compare.report.document import Figure
from arch_compare.report.load import StudyData

DPI = 110
LINE_STYLES = ("-", ":", "-.", "--")
MARKERS = ("o", "s", "^", "v", "P")
ARCH_COLOURS = {"decoder_only": "#1f77b4", "encoder_decoder": "#d62728"}
# How far left of the smallest amount the base model sits on the log axis (a factor).
BASE_OFFSET = 4.0
# Factor between neighbouring lines of a selection figure at the same amount (log axis).
SELECTION_DODGE = 1.04


def _png(figure: MplFigure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight",
                   metadata={"Software": None})  # no version stamp: same data, same bytes
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "figure"


class _Styles:
    """Colours per model and line styles per data source, the same in every figure; markers per
    data source too, or per selection strategy where the study has strategies."""

    def __init__(self, data: StudyData):
        palette = [f"C{i}" for i in range(10)]
        self.colours = {m: palette[i % 10] for i, m in enumerate(analysis.models(data))}
        sources = analysis.data_sources(data)
        self.lines = {s: LINE_STYLES[i % len(LINE_STYLES)] for i, s in enumerate(sources)}
        self.markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(sources)}
        self.selections = {source: analysis.selections(data, source) for source in sources}
        strategies = analysis.selections(data) if analysis.has_strategies(data) else ()
        self.strategy_markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(strategies)}

    def marker(self, source: str, selection: str) -> str:
        return self.strategy_markers.get(selection) or self.markers[source]

    def legend(self, with_base: bool, with_target: bool,
               drawn: set[str] | None = None) -> list[Line2D]:
        """Models not in `drawn` (no values in this figure) are listed as such, not dropped."""
        handles = [Line2D([], [], color=c, lw=2, label=m if drawn is None or m in drawn
                          else f"{m} (no values)") for m, c in self.colours.items()]
        handles += [Line2D([], [], color="grey", ls=self.lines[s],
                           marker=None if self.strategy_markers else self.markers[s],
                           label=f"data: {s}") for s in self.lines]
        handles += [Line2D([], [], color="grey", ls="", marker=m, label=f"selection: {s}")
                    for s, m in self.strategy_markers.items()]
        if with_base:
            handles.append(Line2D([], [], color="grey", ls="", marker="D", markersize=7,
                                  label="base model"))
        if with_target:
            handles.append(Line2D([], [], color="black", ls="--", label="target"))
        return handles


def _amount_label(examples: int) -> str:
    return f"{examples:,}" if examples < 100_000 else fmt.compact(examples)


def _legend(axes, handles: list[Line2D]) -> None:
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                frameon=False, borderaxespad=0)


def _amount_axis(axes, amounts: list[int], with_base: bool) -> float:
    """Log x axis ticked at the study's amounts (plus "base" at its left); returns base's x."""
    smallest = min(amounts) if amounts else 1
    base_x = smallest / BASE_OFFSET
    ticks = ([base_x] if with_base or not amounts else []) + amounts
    labels = (["base"] if with_base or not amounts else []) + [_amount_label(a) for a in amounts]
    axes.set_xscale("log")
    axes.set_xticks(ticks, labels)
    axes.minorticks_off()
    axes.set_xlim(min(ticks) / 1.6, max(ticks) * 1.6)
    axes.set_xlabel("imitation data (examples, log scale)")
    axes.grid(True, alpha=0.3)
    return base_x


def _amounts(data: StudyData) -> list[int]:
    return sorted({r.data_examples for r in data.runs
                   if r.role == "imitation" and r.status == "done"})


def _error_bars(axes, points: list[tuple[float, float, tuple[float, float] | None]],
                colour: str) -> None:
    """Vertical 95% interval bars at the points that have one."""
    known = [(x, y, bounds) for x, y, bounds in points if bounds is not None]
    if known:
        xs, ys, bounds = zip(*known)
        below = [max(0.0, y - low) for y, (low, _) in zip(ys, bounds)]
        above = [max(0.0, high - y) for y, (_, high) in zip(ys, bounds)]
        axes.errorbar(xs, ys, yerr=[below, above], ls="", color=colour, alpha=0.45,
                      capsize=2, lw=1)


def metric_figures(data: StudyData) -> list[Figure]:
    values = analysis.values_by_run(data)
    intervals = analysis.intervals_by_run(data)
    styles = _Styles(data)
    target = analysis.target_run(data)
    bases = analysis.base_runs(data)
    amounts = _amounts(data)
    # Full fine-tuning only: a recipe run sits at its cell's amount, so it would zigzag the line
    # (the recipe sections plot the recipes).
    done = [r for r in analysis.sorted_runs(data) if r.role == "imitation" and r.status == "done"
            and analysis.recipe_label(r) == analysis.FULL]
    figures = []
    for key in analysis.metric_keys(data):
        target_value = values.get(target.run_id, {}).get(key.name) if target else None
        figure = MplFigure(figsize=(6.4, 3.6))
        axes = figure.add_subplot()
        base_x = _amount_axis(axes, amounts, with_base=bool(bases))
        drawn: set[str] = set()
        for model, colour in styles.colours.items():
            base_id = bases[model].run_id if model in bases else None
            base = values.get(base_id, {}).get(key.name)
            if base is not None:
                axes.plot([base_x], [base], ls="", marker="D", markersize=7, color=colour)
                _error_bars(axes, [(base_x, base, intervals.get(base_id, {}).get(key.name))],
                            colour)
                drawn.add(model)
            for source, line in styles.lines.items():
                for selection in styles.selections[source]:  # one line per strategy
                    points = [(r.data_examples, values.get(r.run_id, {}).get(key.name),
                               intervals.get(r.run_id, {}).get(key.name))
                              for r in done if r.model == model and r.data_source == source
                              and r.selection == selection]
                    points = [p for p in points if p[1] is not None]
                    if points:
                        _error_bars(axes, points, colour)
                    points = ([(base_x, base, None)] if base is not None else []) + points
                    if len(points) > (base is not None):
                        xs, ys, _ = zip(*points)
                        axes.plot(xs, ys, ls=line, marker=styles.marker(source, selection),
                                  color=colour, markersize=5)
                        drawn.add(model)
        if not drawn:
            continue  # no model has a value: a plot with the target alone would say nothing
        if target_value is not None:
            axes.axhline(target_value, color="black", ls="--", lw=1.2)
            band = intervals.get(target.run_id, {}).get(key.name)
            if band is not None:  # the target's own 95% interval as a grey band
                axes.axhspan(*band, color="black", alpha=0.08, lw=0)
            low, high = axes.get_ylim()
            pad = 0.06 * (max(high, target_value) - min(low, target_value) or 1.0)
            axes.set_ylim(min(low, target_value - pad), max(high, target_value + pad))
        axes.set_title(f"{key.name} ({key.kind})", fontsize=11)
        axes.set_ylabel(key.metric)
        _legend(axes, styles.legend(bool(bases), target_value is not None, drawn))
        figures.append(Figure(f"metric_{_slug(key.name)}",
                              f"{key.name} ({key.kind}) against imitation data", _png(figure)))
    return figures


def gap_figure(data: StudyData, rows: list[GapRow]) -> Figure | None:
    """Mean share of the gap closed against the amount: capability left, style right."""
    kinds = [k for k in ("capability", "style") if any(r.mean_by_kind[k] is not None
                                                        for r in rows)]
    if not kinds:
        return None
    styles = _Styles(data)
    rows = [r for r in rows if analysis.recipe_label(r.run) == analysis.FULL]  # as metric_figures
    figure = MplFigure(figsize=(4.2 * len(kinds) + 1.2, 3.6))
    shared = None
    for i, kind in enumerate(kinds):
        axes = figure.add_subplot(1, len(kinds), i + 1, sharey=shared)
        shared = shared or axes
        _amount_axis(axes, sorted({r.run.data_examples for r in rows}), with_base=False)
        axes.axhline(0, color="grey", lw=1)
        axes.axhline(100, color="black", ls="--", lw=1.2)
        for model, colour in styles.colours.items():
            for source, line in styles.lines.items():
                for selection in styles.selections[source]:  # one line per strategy
                    points = [(r.run.data_examples, r.mean_by_kind[kind] * 100) for r in rows
                              if r.run.model == model and r.run.data_source == source
                              and r.run.selection == selection
                              and r.mean_by_kind[kind] is not None]
                    if points:
                        xs, ys = zip(*points)
                        axes.plot(xs, ys, ls=line, marker=styles.marker(source, selection),
                                  color=colour)
        axes.set_title(f"{kind} metrics (mean)", fontsize=11)
        if i == 0:
            axes.set_ylabel("share of gap closed (%)")
    handles = styles.legend(with_base=False, with_target=False) + [
        Line2D([], [], color="grey", lw=1, label="0% = base"),
        Line2D([], [], color="black", ls="--", lw=1.2, label="100% = target")]
    figure.tight_layout()
    _legend(axes, handles)
    return Figure("gap_closed_by_amount", "Share of the base-to-target gap closed against "
                  "imitation data, averaged over each kind of metric", _png(figure))


def style_capability_figure(data: StudyData, rows: list[GapRow]) -> Figure | None:
    """One point per imitation run: x = capability gap closed, y = style gap closed."""
    points = [r for r in rows if r.mean_by_kind["capability"] is not None
              and r.mean_by_kind["style"] is not None]
    if not points:
        return None
    styles = _Styles(data)
    figure = MplFigure(figsize=(5.6, 4.6))
    axes = figure.add_subplot()
    largest = max(r.run.data_examples for r in points)
    for row in points:
        # Marker area grows with the log of the amount, so 1k and 100k examples both show.
        size = 25 + 60 * math.log1p(row.run.data_examples) / math.log1p(largest)
        axes.scatter(row.mean_by_kind["capability"] * 100, row.mean_by_kind["style"] * 100,
                     s=size, marker=styles.markers[row.run.data_source], alpha=0.85,
                     color=ARCH_COLOURS.get(row.run.architecture, "grey"), edgecolor="black",
                     linewidth=0.5)
    xs = [r.mean_by_kind["capability"] * 100 for r in points]
    ys = [r.mean_by_kind["style"] * 100 for r in points]
    low, high = min(xs + ys + [0]) - 10, max(xs + ys + [100]) + 10
    axes.plot([low, high], [low, high], color="grey", ls=":", lw=1)
    for at in (0, 100):
        axes.axhline(at, color="grey" if at == 0 else "black", lw=0.8, ls="-" if at == 0 else "--")
        axes.axvline(at, color="grey" if at == 0 else "black", lw=0.8, ls="-" if at == 0 else "--")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("capability: share of gap closed (%)")
    axes.set_ylabel("style: share of gap closed (%)")
    axes.set_title("Style vs capability, one point per imitation run", fontsize=11)
    axes.grid(True, alpha=0.3)
    architectures = dict.fromkeys(r.run.architecture for r in points)
    handles = [Line2D([], [], ls="", marker="o", color=ARCH_COLOURS.get(a, "grey"),
                      markeredgecolor="black", label=a) for a in architectures]
    handles += [Line2D([], [], ls="", marker=styles.markers[s], color="white",
                       markeredgecolor="black", label=f"data: {s}") for s in styles.markers]
    handles.append(Line2D([], [], color="grey", ls=":", label="style = capability"))
    _legend(axes, handles)
    return Figure("style_vs_capability", "Share of the gap closed on style against capability, "
                  "per imitation run (larger markers: more data); above the dotted diagonal, "
                  "style moved further toward the target than capability", _png(figure))


def selection_figure(data: StudyData, source: str, key: analysis.MetricKey) -> Figure | None:
    """One metric against the answers bought from `source`: one line per model (colour) and
    selection strategy (line style and marker), 95% intervals as error bars, each model's base
    run at the left as amount 0 and the target as a dashed line; None when nothing has a value."""
    values = analysis.values_by_run(data)
    intervals = analysis.intervals_by_run(data)
    colours = _Styles(data).colours
    strategies = analysis.selections(data, source)
    lines = {s: LINE_STYLES[i % len(LINE_STYLES)] for i, s in enumerate(strategies)}
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(strategies)}
    bases = analysis.base_runs(data)
    target = analysis.target_run(data)
    runs = [r for r in analysis.sorted_runs(data) if r.role == "imitation"
            and r.status == "done" and r.data_source == source]
    amounts = sorted({r.data_examples for r in runs})
    figure = MplFigure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    trained = [m for m in colours if any(r.model == m for r in runs)]  # models the source trains
    with_base = any(values.get(bases[m].run_id, {}).get(key.name) is not None
                    for m in trained if m in bases)
    base_x = _amount_axis(axes, amounts, with_base=with_base)
    axes.set_xlabel(f"answers bought from {source} (log scale)")
    drawn = False
    # Each (model, strategy) line sits a little apart on the log axis, so intervals at the same
    # amount do not hide one another.
    series = [(m, s) for m in trained for s in strategies]
    dodge = {one: SELECTION_DODGE ** (i - (len(series) - 1) / 2) for i, one in enumerate(series)}
    for model in trained:
        colour = colours[model]
        base_id = bases[model].run_id if model in bases else None
        base = values.get(base_id, {}).get(key.name)
        if base is not None:
            axes.plot([base_x], [base], ls="", marker="D", markersize=7, color=colour)
            _error_bars(axes, [(base_x, base, intervals.get(base_id, {}).get(key.name))], colour)
        for strategy in strategies:
            points = [(r.data_examples * dodge[(model, strategy)],
                       values.get(r.run_id, {}).get(key.name),
                       intervals.get(r.run_id, {}).get(key.name))
                      for r in runs if r.model == model and r.selection == strategy]
            points = [p for p in points if p[1] is not None]
            if not points:
                continue
            _error_bars(axes, points, colour)
            points = ([(base_x, base, None)] if base is not None else []) + points
            xs, ys, _ = zip(*points)
            axes.plot(xs, ys, ls=lines[strategy], marker=markers[strategy], color=colour,
                      markersize=5)
            drawn = True
    if not drawn:
        return None
    target_value = values.get(target.run_id, {}).get(key.name) if target else None
    if target_value is not None:
        axes.axhline(target_value, color="black", ls="--", lw=1.2)
    axes.set_title(f"{key.name} on {source}: selection strategies", fontsize=11)
    axes.set_ylabel(key.metric)
    handles = [Line2D([], [], color=colours[m], lw=2, label=m) for m in trained]
    handles += [Line2D([], [], color="grey", ls=lines[s], marker=markers[s],
                       label=f"selection: {s}") for s in strategies]
    if with_base:
        handles.append(Line2D([], [], color="grey", ls="", marker="D", markersize=7,
                              label="base model (0 bought)"))
    if target_value is not None:
        handles.append(Line2D([], [], color="black", ls="--", label="target"))
    _legend(axes, handles)
    return Figure(f"selection_{_slug(source)}_{_slug(key.name)}",
                  f"{key.name} ({key.kind}) against the answers bought from {source}, one line "
                  f"per model and selection strategy; bars are 95% intervals over the "
                  f"evaluation examples", _png(figure))
