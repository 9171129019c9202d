"""The report's "Active selection" section, from a small database whose "cypher" source bought its
answers three ways (random, uncertainty, student_first) and whose "broad" source at random only:
the section exists only with strategies, its tables carry the stored metrics and comparisons, its
findings name the strategy the numbers say, runs that differ only in strategy each keep their own
row, and HTML and Markdown say the same."""

from __future__ import annotations

import pytest

from arch_compare.evaluation.intervals import MetricValue
from arch_compare.report import analysis, load_study, selection, write_report
from arch_compare.results import Comparison, ResultsStore, Run
from tests.report.parsing import markdown_tables, parse_html, png_size
from tests.report.study_rows import register_bases

STUDY = "selection"
STRATEGIES = ("random", "uncertainty", "student_first")
AMOUNTS = (16, 64)
MODELS = {"gpt2-tiny": ("decoder_only", "gpt2", 1_000_000),
          "t5-tiny": ("encoder_decoder", "t5", 2_000_000)}
EXEC = "cypher/execution_accuracy"
KINDS = {EXEC: "capability", "mmlu/accuracy": "capability", "style/length_pearson": "style"}
# (model, strategy, amount) -> (execution accuracy, mmlu accuracy, length pearson)
VALUES = {
    ("gpt2-tiny", "random", 16): (0.20, 0.30, 0.10),
    ("gpt2-tiny", "random", 64): (0.30, 0.30, 0.20),
    ("gpt2-tiny", "uncertainty", 16): (0.22, 0.31, 0.12),
    ("gpt2-tiny", "uncertainty", 64): (0.33, 0.32, 0.25),
    ("gpt2-tiny", "student_first", 16): (0.25, 0.29, 0.11),
    ("gpt2-tiny", "student_first", 64): (0.41, 0.29, 0.21),
    ("t5-tiny", "random", 16): (0.18, 0.27, 0.05), ("t5-tiny", "random", 64): (0.35, 0.28, 0.09),
    ("t5-tiny", "uncertainty", 16): (0.17, 0.27, 0.04),
    ("t5-tiny", "uncertainty", 64): (0.31, 0.28, 0.08),
    ("t5-tiny", "student_first", 16): (0.19, 0.26, 0.06),
    ("t5-tiny", "student_first", 64): (0.34, 0.30, 0.07),
}
BASE = {"gpt2-tiny": (0.05, 0.25, -0.1), "t5-tiny": (0.04, 0.26, 0.0)}
TARGET = (0.8, 0.6, 0.7)
BROAD = {16: (0.10, 0.31, 0.3), 64: (0.12, 0.33, 0.4)}  # gpt2-tiny only: broad trains one model
PENDING = ("t5-tiny", "uncertainty", 16)
# Half-width of the stored paired interval of (strategy - random) on execution accuracy: the
# student-first run of gpt2-tiny at 64 (+0.11) is the one whose interval excludes 0.
HALF_WIDTH = {("gpt2-tiny", "uncertainty", 16): 0.05, ("gpt2-tiny", "uncertainty", 64): 0.05,
              ("gpt2-tiny", "student_first", 16): 0.06, ("gpt2-tiny", "student_first", 64): 0.07,
              ("t5-tiny", "student_first", 16): 0.05, ("t5-tiny", "uncertainty", 64): 0.06,
              ("t5-tiny", "student_first", 64): 0.05}


def run_id(model, strategy, amount, source="cypher"):
    return (f"imitation/{model}/{source}/{amount}" if strategy == "random"
            else f"imitation/{model}/{source}/{strategy}/{amount}")


def interval(value):
    return value - 0.04, value + 0.04


def _metrics(store, run, values):
    for task in dict.fromkeys(name.split("/")[0] for name in KINDS):
        names = [n for n in KINDS if n.startswith(task + "/")]
        store.put_metrics(STUDY, run, task,
                          {n.split("/")[1]: MetricValue(values[list(KINDS).index(n)],
                                                        *interval(values[list(KINDS).index(n)]),
                                                        200, "wilson") for n in names},
                          {n.split("/")[1]: KINDS[n] for n in names})


def stored_comparisons():
    """(strategy run, random run, difference, low, high, significant) on execution accuracy."""
    rows = []
    for (model, strategy, amount), half in HALF_WIDTH.items():
        difference = VALUES[(model, strategy, amount)][0] - VALUES[(model, "random", amount)][0]
        low, high = difference - half, difference + half
        rows.append((run_id(model, strategy, amount), run_id(model, "random", amount),
                     difference, low, high, low > 0 or high < 0))
    return rows


def build(path):
    with ResultsStore(path) as store:
        fields = register_bases(store, STUDY, path.parent, MODELS, BASE, TARGET, _metrics)
        for model, common in fields.items():
            for (owner, strategy, amount), values in VALUES.items():
                if owner != model:
                    continue
                status = "pending" if (model, strategy, amount) == PENDING else "done"
                # A key only strategy runs have, the same for every model at each data point:
                # it follows the data, so it must not be flagged as a fairness difference.
                config = {"lr": 1e-3, **({"pool_prompts": 200} if strategy != "random" else {})}
                store.put_run(STUDY, Run(run_id(model, strategy, amount), "imitation",
                                         config=config, status=status, data_source="cypher",
                                         data_examples=amount, selection=strategy, **common))
                if status == "done":
                    _metrics(store, run_id(model, strategy, amount), values)
            if model == "gpt2-tiny":
                for amount, values in BROAD.items():
                    store.put_run(STUDY, Run(run_id(model, "random", amount, "broad"),
                                             "imitation", config={"lr": 1e-3}, status="done",
                                             data_source="broad", data_examples=amount,
                                             selection="random", **common))
                    _metrics(store, run_id(model, "random", amount, "broad"), values)
        store.put_comparisons(STUDY, [Comparison(run, baseline, *EXEC.split("/"), d, low, high,
                                                 significant)
                                      for run, baseline, d, low, high, significant
                                      in stored_comparisons()])
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_study(build(tmp_path_factory.mktemp("selection") / "results.sqlite"))


@pytest.fixture(scope="module")
def written(data, tmp_path_factory):
    paths = write_report(data.database, tmp_path_factory.mktemp("selection_report"))
    parsed = parse_html(paths.html.read_text("utf-8"))
    parsed.tables = [table.rows for table in parsed.tables]  # rows of cells, as in Markdown
    return paths, parsed, paths.markdown.read_text("utf-8")


def _selection_tables(tables):
    """The section's tables (header Model, Source, Answers bought, ...), in order."""
    return [t for t in tables if t[0][:3] == ["Model", "Source", "Answers bought"]]


def test_the_section_appears_only_where_a_strategy_chose_answers(written, study_dir, report):
    titles = written[1].headings["h2"]
    assert titles.count(selection.TITLE) == 1
    assert titles[titles.index("Paired comparisons") + 1] == selection.TITLE
    plain = load_study(study_dir)  # the report tests' study: every run bought at random
    assert not analysis.has_strategies(plain)
    assert selection.sections(plain) == ()
    assert selection.TITLE not in parse_html(report[1]).headings["h2"]
    assert selection.TITLE not in report[2]
    # Its labels and rows read as before: no strategy named anywhere.
    assert all(" · random" not in analysis.run_label(r) for r in plain.runs)
    assert {analysis.data_label(r) for r in plain.runs if r.role == "imitation"} == {
        "broad", "local"}


@pytest.mark.parametrize("form", ["html", "markdown"])
def test_table_cells_are_the_stored_metrics_and_comparisons(form, data, written):
    _, parsed, markdown = written
    tables = _selection_tables(parsed.tables if form == "html" else markdown_tables(markdown))
    names = [k.name for k in analysis.metric_keys(data) if k.kind != "other"]
    assert len(tables) == len(names) == 3  # cypher only: broad bought at random
    paired = {(run, baseline): (d, low, high, sig)
              for run, baseline, d, low, high, sig in stored_comparisons()}
    for name, table in zip(names, tables):
        header, body = table[0], table[1:]
        assert header[3:] == [*STRATEGIES, "uncertainty − random", "student_first − random"]
        assert [(r[0], r[1], r[2]) for r in body] == [
            (m, "cypher", f"{n:,}") for m in MODELS for n in AMOUNTS]
        for row in body:
            model, amount = row[0], int(row[2].replace(",", ""))
            cells = dict(zip(header, row))
            for strategy in STRATEGIES:
                if (model, strategy, amount) == PENDING:
                    assert cells[strategy] == "—"
                    continue
                value = VALUES[(model, strategy, amount)][list(KINDS).index(name)]
                shown, bounds = cells[strategy].rstrip(")").split(" (")
                low, high = interval(value)
                assert float(shown) == pytest.approx(value, abs=5e-4)
                assert [float(b) for b in bounds.split(" to " if low < 0 else "-")] == (
                    pytest.approx([low, high], abs=5e-4))
            for strategy in STRATEGIES[1:]:
                cell = cells[f"{strategy} − random"]
                key = (run_id(model, strategy, amount), run_id(model, "random", amount))
                if (model, strategy, amount) == PENDING:
                    assert cell == "—"
                elif name != EXEC or key not in paired:
                    assert cell == "n/a"  # no comparison stored
                else:
                    d, low, high, significant = paired[key]
                    numbers = cell.replace("(", " ").replace(")", " ").replace(" to ", " ")
                    assert [float(x) for x in numbers.split()[:3]] == pytest.approx(
                        [d, low, high], abs=5e-4)
                    assert cell.endswith("✱") == significant


def _expected_best(model, amount, column=0):
    return max(STRATEGIES, key=lambda s: VALUES[(model, s, amount)][column])


def test_findings_name_the_best_strategy_and_its_significance(data, written):
    found = selection.findings(data)
    # One per model and capability metric of the source with strategies, at the largest amount.
    assert len(found) == len(MODELS) * 2
    assert all(" at 64 answers bought: " in sentence for sentence in found)
    gpt2 = next(s for s in found if s.startswith(f"gpt2-tiny on cypher, {EXEC} at 64"))
    assert _expected_best("gpt2-tiny", 64) == "student_first"
    assert "student_first scored highest (0.410 (0.370-0.450))" in gpt2
    assert "+0.110 (+0.040 to +0.180) against random, significant at 95%" in gpt2
    t5 = next(s for s in found if s.startswith(f"t5-tiny on cypher, {EXEC} at 64"))
    assert _expected_best("t5-tiny", 64) == "random"
    assert "random scored highest (0.350" in t5
    assert "no strategy differs significantly from random" in t5
    # mmlu keeps no per-example outputs: the best is named, no significance is claimed.
    mmlu = next(s for s in found if s.startswith("gpt2-tiny on cypher, mmlu/accuracy"))
    assert f"{_expected_best('gpt2-tiny', 64, 1)} scored highest" in mmlu
    assert "no paired comparison with random recorded for uncertainty, student_first" in mmlu
    assert "significant" not in mmlu.replace("no paired", "")
    # Both forms carry the sentences (HTML escapes nothing in them; Markdown escapes "_").
    _, parsed, markdown = written
    html_text = written[0].html.read_text("utf-8")
    assert "+0.110 (+0.040 to +0.180) against random, significant at 95%" in html_text
    assert "+0.110 (+0.040 to +0.180) against random, significant at 95%" in markdown


def test_runs_differing_only_in_strategy_each_keep_their_row(data, written):
    _, parsed, markdown = written
    for tables in (parsed.tables, markdown_tables(markdown)):
        benchmark = next(t for t in tables if t[0][:2] == ["Architecture", "Model"]
                         and "Params" in t[0])
        rows = [(r[1], r[3], r[4]) for r in benchmark[1:]]
        # Sources in the order the study first used them; within one, random first.
        expected = [("gpt2-tiny", "base", "0")]
        expected += [("gpt2-tiny", "cypher" if s == "random" else f"cypher · {s}", f"{n:,}")
                     for s in STRATEGIES for n in AMOUNTS]
        expected += [("gpt2-tiny", "broad", f"{n:,}") for n in AMOUNTS]
        assert rows[:len(expected)] == expected
        gap = next(t for t in tables if t[0][:4] == ["Architecture", "Model", "Data", "Examples"]
                   and "Mean style" in t[0])
        assert len(gap) - 1 == sum(1 for r in data.runs
                                   if r.role == "imitation" and r.status == "done")
    labels = [analysis.run_label(r) for r in data.runs]
    assert len(set(labels)) == len(labels)
    assert "gpt2-tiny · cypher · student_first · 64" in labels
    flagged = {d.key: d for d in analysis.config_differences(data)}
    assert flagged["pool_prompts"].status == "data only"  # follows the strategy, not the model


def test_both_forms_render_the_section_and_its_figures(written):
    paths, parsed, markdown = written
    assert selection.TITLE in parsed.headings["h2"]
    assert f"## {selection.TITLE}" in markdown
    assert not parsed.nesting_errors
    html_rows = _selection_tables(parsed.tables)
    assert html_rows == _selection_tables(markdown_tables(markdown))
    figures = sorted(p.name for p in paths.figures if p.name.startswith("selection_"))
    # One per capability metric of the one source with strategies.
    assert figures == ["selection_cypher_cypher_execution_accuracy.png",
                       "selection_cypher_mmlu_accuracy.png"]
    for name in figures:
        width, height = png_size((paths.html.parent / "figures" / name).read_bytes())
        assert width > 300 and height > 200
        assert f"figures/{name}" in markdown
