"""The report's fine-tuning recipe sections: where a study fine-tuned some cells by recipes
beside `full` (mix, l2sp, lora, wise; `arch_compare/recipes.py`), what did each cost, how much
capability did it lose, and how much style did it gain?

- "Metrics against compute": every capability and style metric against what each run cost
  (estimated FLOPs, estimated dollars, measured dollars), one line per model, data source and
  recipe across amounts: which family closes more of the gap per dollar;
- "Fine-tuning recipes": capability regression (base minus fine-tuned) against style gained
  (fine-tuned minus base), one point per run, with the paired-bootstrap 95% intervals the study
  recorded against each model's base run; a table of the recipes side by side at equal imitation
  data; and findings naming, per cell and capability metric, the recipe that regressed least
  among those that kept at least half of full's style gain, and whether the data separate it
  from full (the paired comparison of the two runs on the same examples).

Runs are grouped by their recorded fields (model, source, selection, amount, recipe), never by
their ids. A study without recipe runs (every database written before recipes) has neither
section.
"""

from __future__ import annotations

import dataclasses

from arch_compare.report import analysis, fmt, recipe_plots, run_costs, tables
from arch_compare.report.analysis import FULL, MetricKey
from arch_compare.report.document import Bullets, Figures, Paragraph, Section, Table
from arch_compare.report.load import StudyData
from arch_compare.results import Comparison, Run

COMPUTE_TITLE = "Metrics against compute"
COMPUTE_ANCHOR = "compute-curves"
TITLE = "Fine-tuning recipes"
ANCHOR = "recipes"
KINDS = ("capability", "style")
# A recipe is compared with full at a given style gain when it kept at least this share of
# full's gain on every style metric where full gained (the findings).
STYLE_SHARE = 0.5
# The order recipes are listed in (arch_compare.recipes.RECIPE_KINDS, then the post-training
# kinds, which start from the full run; not imported: the report imports nothing that needs the
# models package); unknown kinds after these.
KIND_ORDER = ("full", "mix", "l2sp", "lora", "wise", "dpo", "rejection_sampling")


def has_recipes(data: StudyData) -> bool:
    """Whether any imitation run fine-tuned by a recipe other than full."""
    return any(analysis.recipe_label(r) != FULL for r in data.runs if r.role == "imitation")


@dataclasses.dataclass(frozen=True)
class Change:
    """A signed change on one metric: regression (base minus run) or gain (run minus base), with
    the paired-bootstrap 95% interval where a comparison was recorded (None: the difference of
    the stored values alone)."""

    value: float | None
    interval: tuple[float, float] | None
    significant: bool | None


NO_CHANGE = Change(None, None, None)
Cell = tuple[str, str, str, int]  # model, data source, selection, amount


class RecipeGrid:
    """Every imitation run by cell and recipe, and its changes against its model's base run."""

    def __init__(self, data: StudyData):
        self.data = data
        self.values = analysis.values_by_run(data)
        self.bases = analysis.base_runs(data)
        self.imitation = [r for r in analysis.sorted_runs(data) if r.role == "imitation"]
        self.kinds = {analysis.recipe_label(r): run_costs.recipe_kind(r) for r in self.imitation}
        order = {kind: i for i, kind in enumerate(KIND_ORDER)}
        self.recipes = tuple(sorted(self.kinds, key=lambda label: (
            order.get(self.kinds[label], len(order)), label)))
        self.cells: dict[Cell, dict[str, Run]] = {}
        for run in self.imitation:
            cell = (run.model, run.data_source, run.selection, run.data_examples)
            self.cells.setdefault(cell, {})[analysis.recipe_label(run)] = run
        self.comparisons = {(c.run_id, c.baseline_run_id, f"{c.task}/{c.metric}"): c
                            for c in data.comparisons}
        self.keys = {kind: tuple(k for k in analysis.metric_keys(data) if k.kind == kind)
                     for kind in KINDS}
        self.costs = run_costs.run_costs(data)

    def recipe_cells(self) -> list[Cell]:
        """The cells some recipe other than full fine-tuned, in report order."""
        return [cell for cell, by in self.cells.items() if any(label != FULL for label in by)]

    def done(self, run: Run | None) -> bool:
        return run is not None and run.status == "done"

    def _change(self, run: Run, key: MetricKey, sign: int) -> Change:
        base = self.bases.get(run.model)
        if not self.done(run) or base is None:
            return NO_CHANGE
        paired = self.comparisons.get((run.run_id, base.run_id, key.name))
        if paired is not None and paired.difference is not None:
            interval = (None if paired.low is None or paired.high is None
                        else tuple(sorted((sign * paired.low, sign * paired.high))))
            return Change(sign * paired.difference, interval, paired.significant)
        own = self.values.get(run.run_id, {}).get(key.name)
        before = self.values.get(base.run_id, {}).get(key.name)
        if own is None or before is None:
            return NO_CHANGE
        return Change(sign * (own - before), None, None)

    def regression(self, run: Run, key: MetricKey) -> Change:
        """Capability lost: base minus the run (positive: worse than the base model)."""
        return self._change(run, key, -1)

    def gain(self, run: Run, key: MetricKey) -> Change:
        """Style gained: the run minus base (positive: the style metric rose)."""
        return self._change(run, key, +1)

    def against_full(self, run: Run, key: MetricKey) -> Comparison | None:
        """The paired comparison of a recipe run with its cell's full run (run minus full)."""
        full = self.cells.get((run.model, run.data_source, run.selection,
                               run.data_examples), {}).get(FULL)
        if full is None:
            return None
        paired = self.comparisons.get((run.run_id, full.run_id, key.name))
        return paired if paired is not None and paired.difference is not None else None

    def decimals(self, key: MetricKey) -> int:
        """3 decimals for a metric on a 0-1 scale, else 1 (as the benchmark tables)."""
        known = [v.get(key.name) for v in self.values.values()]
        return 3 if all(abs(v) <= 1 for v in known if v is not None) else 1


def change_text(change: Change, decimals: int) -> str:
    """"+0.100 (+0.060 to +0.140) ✱", or the value alone where no interval was recorded."""
    if change.value is None:
        return fmt.NA
    # Rounded first, so a change of -1e-17 (a float's residue) reads +0.000, not -0.000.
    signed = lambda value: fmt.signed(round(value, decimals) + 0.0, decimals)
    if change.interval is None:
        return f"{signed(change.value)} (no paired interval)"
    low, high = change.interval
    mark = f" {tables.SIGNIFICANT}" if change.significant else ""
    return f"{signed(change.value)} ({signed(low)} to {signed(high)}){mark}"


def _data(cell: Cell) -> str:
    """A cell's data: its source, and the strategy that chose its answers unless random."""
    _, source, selection, _ = cell
    return source if selection in (None, analysis.RANDOM) else f"{source} · {selection}"


def recipe_table(grid: RecipeGrid) -> Table | None:
    """Per cell with recipes, one row per recipe: regression and style gain with intervals,
    trainable parameters, estimated FLOPs and dollars, measured dollars."""
    cells = grid.recipe_cells()
    if not cells:
        return None
    capability, style = grid.keys["capability"], grid.keys["style"]
    rows, styles = [], []
    for cell in cells:
        model, amount = cell[0], cell[3]
        by = grid.cells[cell]
        for label in (r for r in grid.recipes if r in by):
            run = by[label]
            cost = grid.costs[run.run_id]
            done = grid.done(run)
            changes = ([change_text(grid.regression(run, k), grid.decimals(k)) for k in capability]
                       + [change_text(grid.gain(run, k), grid.decimals(k)) for k in style])
            rows.append((model, _data(cell), fmt.count(amount), label,
                         *(changes if done else [tables.NO_RESULT] * len(changes)),
                         fmt.compact(cost.trainable), fmt.scientific(cost.flops)
                         + (" (with full)" if cost.includes_full else ""),
                         fmt.dollars(cost.usd),
                         fmt.dollars(cost.measured_usd) if cost.measured_usd is not None
                         else f"{fmt.NA} ({cost.measured_note})"))
            styles.append("" if done else ("failed" if run.status == "failed" else "pending"))
    columns = ("Model", "Data", "Examples", "Recipe",
               *(f"Regression {k.name}" for k in capability),
               *(f"Style gain {k.name}" for k in style),
               "Trainable params", "Est. FLOPs", "Est. $", "Measured $")
    return Table(
        columns=columns, rows=tuple(rows), styles=tuple(styles), group_columns=3,
        numeric=(False, False, True, False, *(True,) * (len(capability) + len(style) + 4)),
        caption="Recipes side by side at equal imitation data (the same answers bought). "
                "Regression: base minus fine-tuned on a capability metric (positive: capability "
                "lost); style gain: fine-tuned minus base on a style metric (positive: the "
                "metric rose); each with the paired-bootstrap 95% interval on the same "
                f"evaluation examples ({tables.SIGNIFICANT}: the interval excludes 0; no paired "
                "interval: the task keeps no per-example outputs, so only the stored values "
                "differ). Est.: the budget module's estimate before the run; measured $: "
                "measured chip-hours times the price of the device the run ran on, in "
                "budgets/hardware.yaml (n/a with the reason where that device has no price). "
                "A wise run trains nothing and interpolates its cell's full run, so its cost "
                f"includes that run's (with full). {tables.NO_RESULT}: no result.")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """For one cell and capability metric: the recipe with the least regression among those that
    kept at least STYLE_SHARE of full's style gain."""

    cell: Cell
    key: MetricKey
    best: str | None
    sentence: str


def _kept_style(grid: RecipeGrid, run: Run, full: Run) -> tuple[bool | None, list[str]]:
    """(whether `run` kept at least STYLE_SHARE of full's gain on every style metric where full
    gained; None where full gained on none), and full's gains as text."""
    kept, shown = None, []
    for key in grid.keys["style"]:
        full_gain = grid.gain(full, key)
        if full_gain.value is None or full_gain.value <= 0:
            continue
        shown.append(f"{key.name} {change_text(full_gain, grid.decimals(key))}")
        own = grid.gain(run, key).value
        ok = own is not None and own >= STYLE_SHARE * full_gain.value
        kept = ok if kept is None else kept and ok
    return kept, shown


def _cell_text(cell: Cell) -> str:
    return f"{cell[0]} on {_data(cell)}, {cell[3]:,} examples"


def verdict(grid: RecipeGrid, cell: Cell, key: MetricKey) -> Verdict | None:
    by = {label: run for label, run in grid.cells[cell].items() if grid.done(run)}
    full = by.get(FULL)
    scored = {label: grid.regression(run, key) for label, run in by.items()}
    scored = {label: change for label, change in scored.items() if change.value is not None}
    if full is None or FULL not in scored or len(scored) < 2:
        return None
    decimals = grid.decimals(key)
    head = f"{_cell_text(cell)}, {key.name}"
    kept = {label: _kept_style(grid, by[label], full) for label in scored}
    shown = kept[FULL][1]
    if not shown:
        return Verdict(cell, key, None, f"{head}: full gained no style on any style metric "
                       f"here, so no recipe is compared at a given style gain.")
    eligible = [label for label in scored if label == FULL or kept[label][0]]
    excluded = [label for label in scored if label not in eligible]
    best = min(eligible, key=lambda label: (scored[label].value, label != FULL))
    text = (f"{head}: among the recipes that kept at least {STYLE_SHARE:.0%} of full's style "
            f"gain ({'; '.join(shown)}), {best} regressed least: "
            f"{change_text(scored[best], decimals)}")
    if best == FULL:
        text += "; no recipe regressed less at that style gain"
    else:
        text += f" against full's {change_text(scored[FULL], decimals)}"
        text += "; " + _separation(grid, by[best], key, scored[best], scored[FULL], decimals)
    if excluded:
        text += (f". Left out, with less than {STYLE_SHARE:.0%} of full's style gain: "
                 + ", ".join(f"{label} (regression {change_text(scored[label], decimals)})"
                             for label in excluded))
    return Verdict(cell, key, best, text + ".")


def _separation(grid: RecipeGrid, run: Run, key: MetricKey, own: Change, full: Change,
                decimals: int) -> str:
    """Whether the data separate a recipe's regression from full's: by the paired comparison
    of the two runs where recorded, else by whether the two intervals overlap."""
    label = analysis.recipe_label(run)
    paired = grid.against_full(run, key)
    if paired is not None:
        difference, interval = tables.difference_cells(paired)
        text = f"{label} − full on the same examples {difference} ({interval})"
        if paired.significant:
            return text + ", so the data separate them"
        return text + ", an interval that includes 0: the data cannot tell them apart"
    if own.interval is None or full.interval is None:
        return "no interval to separate them with: the data cannot tell them apart"
    if own.interval[1] < full.interval[0] or full.interval[1] < own.interval[0]:
        return "their intervals do not overlap, so the data separate them"
    return "their intervals overlap: the data cannot tell them apart"


def unmoved(grid: RecipeGrid, cell: Cell, key: MetricKey) -> bool:
    """Whether no run of the cell (full or any recipe) changed the metric from its base: every
    regression exactly 0 (e.g. Cypher accuracy after broad imitation, 0 before and after), so
    there is no regression for a recipe to reduce."""
    changes = [grid.regression(run, key) for run in grid.cells[cell].values() if grid.done(run)]
    return bool(changes) and all(change.value == 0 and change.interval in (None, (0.0, 0.0))
                                 for change in changes)


def verdicts(grid: RecipeGrid) -> list[Verdict]:
    return [found for cell in grid.recipe_cells() for key in grid.keys["capability"]
            if not unmoved(grid, cell, key)
            and (found := verdict(grid, cell, key)) is not None]


def findings(grid: RecipeGrid) -> list[str]:
    found = verdicts(grid)
    still = sum(unmoved(grid, cell, key) for cell in grid.recipe_cells()
                for key in grid.keys["capability"])
    unchanged = ([f"Left out of the comparison: {still} (cell, capability metric) pair"
                  f"{'s' * (still != 1)} that no run changed from its base (every regression "
                  f"exactly 0), so no recipe had a regression to reduce."] if still else [])
    named = [v for v in found if v.best is not None]
    if not named:
        return unchanged + [v.sentence for v in found]
    counts = {label: sum(v.best == label for v in named) for label in grid.recipes}
    tally = ", ".join(f"{label} {n}" for label, n in counts.items() if n)
    return [f"Least regression at a given style gain (at least {STYLE_SHARE:.0%} of full's), "
            f"counted over {len(named)} (cell, capability metric) pair"
            f"{'s' * (len(named) != 1)}: {tally}."] + unchanged + [v.sentence for v in found]


def _introduction(grid: RecipeGrid) -> str:
    others = [label for label in grid.recipes if label != FULL]
    runs = [r for r in grid.imitation if analysis.recipe_label(r) != FULL]
    cells = grid.recipe_cells()
    return (f"{len(runs)} imitation run{'s' * (len(runs) != 1)} fine-tuned by a recipe other "
            f"than full or trained further after it (post-training: dpo, rejection_sampling) "
            f"({', '.join(f'{label} ({grid.kinds[label]})' for label in others)}) in "
            f"{len(cells)} cell{'s' * (len(cells) != 1)} (model, data, amount), each beside "
            f"the cell's full run on the same imitation data. Every run is compared with its "
            f"model's base run on the same evaluation examples (paired bootstrap, 95%), and "
            f"each recipe run with its cell's full run.")


def sections(data: StudyData) -> tuple[Section, ...]:
    """The two recipe sections, or nothing when every run fine-tuned in full."""
    if not has_recipes(data):
        return ()
    grid = RecipeGrid(data)
    compute = recipe_plots.compute_figures(data, grid)
    curves = Section(COMPUTE_TITLE, COMPUTE_ANCHOR, (
        Paragraph("Each capability and style metric against what each imitation run cost: "
                  "estimated FLOPs, estimated dollars and measured dollars (log scales), one "
                  "colour per model, one line style per data source, one marker per recipe, "
                  "lines across the amounts of imitation data; bars are 95% intervals over the "
                  "evaluation examples, the model's base run a dotted line of its colour and "
                  "the target a dashed black one. The further toward the target's line a "
                  "model's line moves per dollar, the more of the gap it closes per dollar."),
        Figures(tuple(compute)) if compute else Paragraph("No run has both a cost and a "
                                                          "metric.")))
    blocks: list = [Paragraph(_introduction(grid))]
    found = findings(grid)
    blocks.append(Bullets(tuple(found)) if found else Paragraph(
        "No cell has a finished full run and a finished recipe run with a capability change "
        "yet."))
    figure = recipe_plots.regression_figure(data, grid)
    if figure is not None:
        blocks.append(Figures((figure,)))
    table = recipe_table(grid)
    if table is not None:
        blocks.append(table)
    return curves, Section(TITLE, ANCHOR, tuple(blocks))
