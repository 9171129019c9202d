"""The report's tables, as `document.Table`s of formatted cells."""

from __future__ import annotations

from arch_compare.report import analysis, fmt
from arch_compare.report.analysis import ConfigDifference, GapRow, MetricKey
from arch_compare.report.document import Table
from arch_compare.report.load import StudyData
from arch_compare.results import Comparison, Run

NO_RESULT = "—"   # the run has no results (failed or not finished); "n/a" is an undefined value
KIND_MARK = {"capability": "C", "style": "S", "other": "O"}
ERROR_CHARACTERS = 300
SIGNIFICANT = "✱"


def _row_style(run: Run) -> str:
    if run.status in ("failed", "pending", "running"):
        return "failed" if run.status == "failed" else "pending"
    return "target" if run.role == "target" else ""


def short_error(error: str | None) -> str:
    """The last line of a traceback says what went wrong; keep it, and keep it short."""
    if not error:
        return ""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    text = lines[-1].strip() if lines else ""
    if len(lines) > 1:
        text = "… " + text
    return text if len(text) <= ERROR_CHARACTERS else text[:ERROR_CHARACTERS] + " …"


def status_table(data: StudyData) -> Table | None:
    runs = [r for r in analysis.sorted_runs(data) if r.status != "done"]
    if not runs:
        return None
    return Table(
        columns=("Run", "Role", "Model", "Status", "Error"),
        rows=tuple((r.run_id, r.role, r.model, r.status, short_error(r.error)) for r in runs),
        numeric=(False,) * 5, styles=tuple(_row_style(r) for r in runs),
        caption="Runs without results; they appear in every table with “—”.")


def _grid_cells(run: Run) -> tuple[str, ...]:
    """Architecture, model, parameters, data source, examples, own tokens, reference tokens."""
    if run.role == "base":
        data, examples = "base", "0"
    elif run.role == "target":
        data, examples = "target", ""
    else:
        # The strategy beside the source where one chose the answers: one row per run.
        data, examples = analysis.data_label(run), fmt.count(run.data_examples)
    tokens = ("", "") if run.role != "imitation" else (
        fmt.compact(run.data_tokens), fmt.compact(run.data_reference_tokens))
    return (run.architecture, run.model, fmt.compact(run.parameters), data, examples, *tokens)


GRID_COLUMNS = ("Architecture", "Model", "Params", "Data", "Examples", "Tokens (own)",
                "Tokens (ref.)")
GRID_NUMERIC = (False, False, True, False, True, True, True)


def benchmark_tables(data: StudyData) -> dict[str, Table]:
    """task -> a table of its metrics for every run of the grid, base and target included."""
    values = analysis.values_by_run(data)
    intervals = analysis.intervals_by_run(data)
    keys = analysis.metric_keys(data)
    runs = analysis.sorted_runs(data)
    tables = {}
    for task in dict.fromkeys(key.task for key in keys):
        task_keys = [key for key in keys if key.task == task]
        formats = {key.name: fmt.metric_formatter([values.get(r.run_id, {}).get(key.name)
                                                   for r in runs]) for key in task_keys}
        rows = []
        for run in runs:
            own, bounds = values.get(run.run_id, {}), intervals.get(run.run_id, {})
            cells = [formats[key.name](own.get(key.name), bounds.get(key.name))
                     if run.status == "done" and key.name in own else NO_RESULT
                     for key in task_keys]
            rows.append((*_grid_cells(run), *cells, run.status))
        kinds = sorted({key.kind for key in task_keys})
        tables[task] = Table(
            columns=(*GRID_COLUMNS, *(f"{k.metric} ({KIND_MARK[k.kind]})" for k in task_keys),
                     "Status"),
            rows=tuple(rows), numeric=(*GRID_NUMERIC, *(True,) * len(task_keys), False),
            styles=tuple(_row_style(r) for r in runs), group_columns=3,
            caption=(f"{task}: " + ", ".join(f"({KIND_MARK[k]}) {k}" for k in kinds)
                     + f" metric. In brackets its 95% interval over the evaluation examples "
                       "(Wilson's for shares of examples, the bootstrap otherwise; it does not "
                       "cover the variation between training runs). n/a: undefined for that "
                       f"run; {NO_RESULT}: no result. "
                       "Tokens: imitation data in the model's own tokenizer and in the "
                       "study's reference tokenizer."))
    return tables


def difference_cells(comparison: Comparison) -> tuple[str, str]:
    """A paired difference and its 95% interval, signed: 3 decimals on a 0-1 scale, else 1."""
    c = comparison
    decimals = 3 if all(abs(v) <= 1 for v in (c.difference, c.low, c.high)
                        if v is not None) else 1
    return (fmt.signed(c.difference, decimals),
            fmt.NA if c.low is None or c.high is None else
            f"{fmt.signed(c.low, decimals)} to {fmt.signed(c.high, decimals)}")


def comparison_table(data: StudyData) -> Table | None:
    """Every paired comparison the study recorded: run minus baseline on the same examples."""
    if not data.comparisons:
        return None
    order = {run.run_id: i for i, run in enumerate(analysis.sorted_runs(data))}
    comparisons = sorted(data.comparisons, key=lambda c: (
        order.get(c.run_id, len(order)), order.get(c.baseline_run_id, len(order)), c.task,
        c.metric))
    return Table(
        columns=("Run", "Against", "Metric", "Difference", "95% interval", "Significant"),
        rows=tuple((c.run_id, c.baseline_run_id, f"{c.task}/{c.metric}", *difference_cells(c),
                    SIGNIFICANT if c.significant else "") for c in comparisons),
        numeric=(False, False, False, True, True, False),
        caption="Run minus the run it is compared against, on the same evaluation examples, "
                "with the paired bootstrap's 95% interval (1,000 resamples of the examples, "
                f"the same for both runs). {SIGNIFICANT}: the interval excludes 0. "
                "Rank-classification tasks (scored from log-likelihoods by seqio) keep no "
                "per-example outputs and have no comparisons.")


def gap_table(keys: tuple[MetricKey, ...], rows: list[GapRow]) -> Table:
    columns = ("Architecture", "Model", "Data", "Examples", *(k.name for k in keys),
               "Mean capability", "Mean style")
    cells = tuple((row.run.architecture, row.run.model, analysis.data_label(row.run),
                   fmt.count(row.run.data_examples),
                   *(fmt.percent(row.closed[k.name]) for k in keys),
                   fmt.percent(row.mean_by_kind["capability"]),
                   fmt.percent(row.mean_by_kind["style"])) for row in rows)
    return Table(columns=columns, rows=cells, group_columns=3,
                 numeric=(False, False, False, True, *(True,) * (len(keys) + 2)),
                 caption="Share of the base-to-target gap closed, (imitation − base) / "
                         "(target − base): 0% = no better than the base model, 100% = "
                         "reached the target, below 0% = moved away from it. n/a: undefined "
                         "value, or base and target (nearly) equal.")


def compute_table(data: StudyData) -> Table:
    runs = analysis.sorted_runs(data)
    computes = [analysis.compute(r) for r in runs]
    rows = [(r.run_id + ("" if r.status == "done" else f" ({r.status})"),
             fmt.scientific(c.estimated_flops), fmt.scientific(c.measured_flops),
             fmt.ratio(c.flops_ratio), c.hardware or fmt.NA, fmt.duration(c.estimated_hours),
             fmt.amount(c.estimated_chip_hours), fmt.dollars(c.estimated_usd),
             fmt.duration(c.measured_hours) + (f" ({c.device})" if c.device else ""),
             fmt.amount(c.tokens_per_second)) for r, c in zip(runs, computes)]

    def summed(attribute: str, render) -> str:
        known, unknown = analysis.total(getattr(c, attribute) for c in computes)
        return render(known) + (f" (+{unknown} n/a)" if unknown else "")

    rows.append(("Total", summed("estimated_flops", fmt.scientific),
                 summed("measured_flops", fmt.scientific), "", "",
                 summed("estimated_hours", fmt.duration),
                 summed("estimated_chip_hours", fmt.amount),
                 summed("estimated_usd", fmt.dollars), summed("measured_hours", fmt.duration),
                 ""))
    return Table(
        columns=("Run", "Est. FLOPs", "FLOPs run", "Run / est.", "Est. hardware", "Est. time",
                 "Est. chip-hours", "Est. $", "Measured time (device)", "Tokens/s"),
        rows=tuple(rows), numeric=(False, *(True,) * 3, False, *(True,) * 5),
        styles=(*(_row_style(r) for r in runs), "total"),
        caption="Estimates come from the budget module before each run (on the hardware it "
                "priced); measured numbers from the run itself (on the device it ran on). "
                "Run / est.: FLOPs run over FLOPs estimated (the training part, where the "
                "estimate separates it). Dollars are estimates only; n/a: not recorded, or no "
                "known price.")


def _values_cell(difference: ConfigDifference, max_listed: int = 3) -> str:
    parts = []
    for value, run_ids in difference.values:
        who = ", ".join(run_ids) if len(run_ids) <= max_listed else f"{len(run_ids)} runs"
        parts.append(f"{value} ({who})")
    return "; ".join(parts)


STATUS_TEXT = {"flagged": "⚠ flagged", "allowed by the study": "allowed by the study",
               "data only": "same for every model",
               "execution": "execution (how it ran, not a fairness difference)"}


def config_difference_table(differences: list[ConfigDifference]) -> Table | None:
    shown = [d for d in differences if d.status != "model or data"]
    if not shown:
        return None
    return Table(
        columns=("Key", "Values (runs)", "Differs across", "Status"),
        rows=tuple((d.key, _values_cell(d), "models at the same data" if
                    d.varies_with == "models" else "data amounts only",
                    STATUS_TEXT[d.status]) for d in shown),
        numeric=(False,) * 4, styles=tuple("flag" if d.flagged else "" for d in shown),
        caption="Configuration keys whose values differ across imitation runs, beyond the "
                "model and the data. Flagged: models trained on the same data got different "
                "values.")


def execution_table(data: StudyData) -> Table | None:
    """Each run's execution settings beside it (runs without any, the target, left out)."""
    settings = [e for e in map(analysis.execution, analysis.sorted_runs(data)) if e is not None]
    if not settings:
        return None
    text = lambda value: fmt.NA if value is None else str(value)
    return Table(
        columns=("Run", "Mesh", "Compute dtype", "Parameter dtype", "Remat", "Microbatches",
                 "Devices"),
        rows=tuple((e.run.run_id, text(e.mesh), text(e.dtype), text(e.param_dtype),
                    text(e.remat), text(e.microbatches), text(e.devices)) for e in settings),
        numeric=(False,) * 5 + (True, False), styles=tuple(_row_style(e.run) for e in settings),
        caption="How each run was laid out on its devices (what the trainer ran where it "
                "recorded it, else the settings the study resolved): these change speed and "
                "memory, not what is computed, so they are not fairness differences.")
