"""The recipe sections' figures (`recipes.py`), drawn as `plots.py` draws (matplotlib's object
API on the Agg canvas, no pyplot state):

- per kind of metric (capability, style), every metric of that kind against what each imitation
  run cost, one row of panels per metric: estimated FLOPs, estimated dollars, measured dollars
  (log x axes); one line per model (colour), data source (line style) and recipe (marker) across
  the amounts, 95% interval bars, the base model as a dotted line of its colour, the target as a
  dashed black line;
- capability regression against style gained, one panel per (capability, style) metric pair,
  one point per run coloured by recipe and marked by family, with both paired 95% intervals.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from arch_compare.report import analysis, fmt
from arch_compare.report.document import Figure
from arch_compare.report.load import StudyData
from arch_compare.report.plots import LINE_STYLES, _error_bars, _legend, _png, _Styles

if TYPE_CHECKING:
    from arch_compare.report.recipes import RecipeGrid

RECIPE_MARKERS = ("o", "s", "^", "v", "P", "X", "D", "*", "h", "<", ">")
# (column title, RunCost attribute, axis label)
COST_AXES = (("estimated FLOPs", "flops", "FLOPs (estimated, log scale)"),
             ("estimated dollars", "usd", "US$ (estimated, log scale)"),
             ("measured dollars", "measured_usd", "US$ (measured, log scale)"))
PANEL = (3.6, 2.7)  # inches per panel


def _recipe_markers(grid: "RecipeGrid") -> dict[str, str]:
    return {label: RECIPE_MARKERS[i % len(RECIPE_MARKERS)]
            for i, label in enumerate(grid.recipes)}


def _no_cost_reason(grid: "RecipeGrid", attribute: str) -> str:
    """Why a cost column has no point: the measured dollars' notes, else "not recorded"."""
    if attribute != "measured_usd":
        return "not recorded"
    # One reason per device (a wise run repeats its full run's), "not measured" only alone.
    notes = {cost.measured_note.removeprefix("its full run: ") for cost in grid.costs.values()}
    notes = sorted(notes - {"not measured"} or notes)
    return textwrap.fill("; ".join(notes[:3]) + (" …" if len(notes) > 3 else ""), 36)


def compute_figures(data: StudyData, grid: "RecipeGrid") -> list[Figure]:
    """One figure per kind of metric (capability, style) with a row of cost panels per metric."""
    values = analysis.values_by_run(data)
    intervals = analysis.intervals_by_run(data)
    colours = _Styles(data).colours
    sources = analysis.data_sources(data)
    lines = {s: LINE_STYLES[i % len(LINE_STYLES)] for i, s in enumerate(sources)}
    markers = _recipe_markers(grid)
    target = analysis.target_run(data)
    done = [r for r in grid.imitation if r.status == "done"]
    figures = []
    for kind in ("capability", "style"):
        keys = [k for k in grid.keys[kind]
                if any(values.get(r.run_id, {}).get(k.name) is not None for r in done)]
        if not keys:
            continue
        figure = MplFigure(figsize=(PANEL[0] * len(COST_AXES) + 1.8, PANEL[1] * len(keys)))
        axes_grid = figure.subplots(len(keys), len(COST_AXES), squeeze=False)
        for row, key in enumerate(keys):
            target_value = values.get(target.run_id, {}).get(key.name) if target else None
            for column, (title, attribute, label) in enumerate(COST_AXES):
                axes = axes_grid[row][column]
                drawn = _cost_panel(axes, grid, key, attribute, done, values, intervals,
                                    colours, lines, markers)
                if drawn:
                    _log_axis(axes, attribute)
                    for model, colour in colours.items():
                        base = grid.bases.get(model)
                        before = values.get(base.run_id, {}).get(key.name) if base else None
                        if before is not None:
                            axes.axhline(before, color=colour, ls=":", lw=1)
                    if target_value is not None:
                        axes.axhline(target_value, color="black", ls="--", lw=1.2)
                else:
                    axes.text(0.5, 0.5, f"n/a: {_no_cost_reason(grid, attribute)}",
                              ha="center", va="center", fontsize=7, transform=axes.transAxes)
                    axes.set_xticks([])
                    axes.set_yticks([])
                axes.grid(True, alpha=0.3)
                axes.tick_params(labelsize=7)
                if row == 0:
                    axes.set_title(title, fontsize=10)
                if row == len(keys) - 1:
                    axes.set_xlabel(label, fontsize=8)
                if column == 0:
                    axes.set_ylabel(key.name, fontsize=8)
        figure.tight_layout()
        handles = [Line2D([], [], color=c, lw=2, label=f"{m} ({_family(grid, m)})")
                   for m, c in colours.items() if any(r.model == m for r in done)]
        handles += [Line2D([], [], color="grey", ls=lines[s], label=f"data: {s}")
                    for s in sources if any(r.data_source == s for r in done)]
        handles += [Line2D([], [], color="grey", ls="", marker=m, label=f"recipe: {label}")
                    for label, m in markers.items()]
        handles += [Line2D([], [], color="grey", ls=":", label="base model"),
                    Line2D([], [], color="black", ls="--", label="target")]
        _legend(axes_grid[0][-1], handles)
        figures.append(Figure(
            f"compute_{kind}", f"{kind.capitalize()} metrics against what each imitation run "
            f"cost (estimated FLOPs, estimated and measured dollars), one line per model, data "
            f"source and recipe across amounts; bars are 95% intervals over the evaluation "
            f"examples; a wise run's cost includes the full run it interpolates", _png(figure)))
    return figures


def _log_axis(axes, attribute: str) -> None:
    """Log x axis ticked at 1, 2 and 5 times powers of ten, labelled "2e15" or "$0.05"."""
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_minor_formatter(NullFormatter())
    dollars = attribute != "flops"
    axes.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: (f"${x:.3g}" if dollars else fmt.scientific(x).replace(".00", ""))))


def _family(grid: "RecipeGrid", model: str) -> str:
    return next((r.family for r in grid.imitation if r.model == model), "")


def _cost_panel(axes, grid, key, attribute, done, values, intervals, colours, lines,
                markers) -> bool:
    """Draw one metric against one cost; False when no run has both."""
    drawn = False
    for model, colour in colours.items():
        for source, line in lines.items():
            for label, marker in markers.items():
                points = []
                for run in done:
                    if (run.model, run.data_source) != (model, source) or (
                            analysis.recipe_label(run) != label):
                        continue
                    x = getattr(grid.costs[run.run_id], attribute)
                    y = values.get(run.run_id, {}).get(key.name)
                    if x is not None and x > 0 and y is not None:
                        points.append((x, y, intervals.get(run.run_id, {}).get(key.name)))
                if not points:
                    continue
                points.sort(key=lambda point: point[0])
                _error_bars(axes, points, colour)
                xs, ys, _ = zip(*points)
                axes.plot(xs, ys, ls=line if len(points) > 1 else "", marker=marker,
                          color=colour, markersize=5)
                drawn = True
    return drawn


def regression_figure(data: StudyData, grid: "RecipeGrid") -> Figure | None:
    """Capability regression (y) against style gained (x), one panel per metric pair."""
    runs = [r for r in grid.imitation if r.status == "done"]
    pairs = []
    for capability in grid.keys["capability"]:
        for style in grid.keys["style"]:
            points = [(r, grid.gain(r, style), grid.regression(r, capability)) for r in runs]
            points = [p for p in points if p[1].value is not None and p[2].value is not None]
            if points:
                pairs.append((capability, style, points))
    if not pairs:
        return None
    colours = {label: f"C{i % 10}" for i, label in enumerate(grid.recipes)}
    families = list(dict.fromkeys(r.family for r in runs))
    family_markers = {f: RECIPE_MARKERS[i % len(RECIPE_MARKERS)] for i, f in enumerate(families)}
    columns = min(len(pairs), 3)
    rows = -(-len(pairs) // columns)
    figure = MplFigure(figsize=(4.2 * columns + 1.8, 3.6 * rows))
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for index, (capability, style, points) in enumerate(pairs):
        axes = axes_grid[index // columns][index % columns]
        axes.axhline(0, color="grey", lw=0.8)
        axes.axvline(0, color="grey", lw=0.8)
        for run, gain, regression in points:
            colour = colours[analysis.recipe_label(run)]
            xerr = None if gain.interval is None else [[max(0.0, gain.value - gain.interval[0])],
                                                       [max(0.0, gain.interval[1] - gain.value)]]
            yerr = None if regression.interval is None else [
                [max(0.0, regression.value - regression.interval[0])],
                [max(0.0, regression.interval[1] - regression.value)]]
            axes.errorbar([gain.value], [regression.value], xerr=xerr, yerr=yerr, ls="",
                          color=colour, alpha=0.45, capsize=2, lw=1)
            axes.scatter([gain.value], [regression.value], color=colour, edgecolor="black",
                         linewidth=0.5, marker=family_markers[run.family], s=36, zorder=3)
        axes.set_xlabel(f"style gained: {style.name}", fontsize=8)
        axes.set_ylabel(f"regression: {capability.name}", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(True, alpha=0.3)
    for index in range(len(pairs), rows * columns):
        axes_grid[index // columns][index % columns].set_visible(False)
    figure.tight_layout()
    handles = [Line2D([], [], ls="", marker="o", color=c, markeredgecolor="black",
                      label=f"recipe: {label}") for label, c in colours.items()]
    handles += [Line2D([], [], ls="", marker=m, color="white", markeredgecolor="black",
                       label=f"family: {f}") for f, m in family_markers.items()]
    _legend(axes_grid[0][columns - 1], handles)
    return Figure("recipes_regression_vs_style",
                  "Capability regression (base minus fine-tuned; up: more capability lost) "
                  "against style gained (fine-tuned minus base; right: the style metric rose), "
                  "one point per imitation run, coloured by recipe and marked by "
                  "family; bars are the paired-bootstrap 95% intervals against the base run "
                  "(none where the task keeps no per-example outputs).",
                  _png(figure))
