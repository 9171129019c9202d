"""The written report, read back as HTML and as Markdown: every row and metric, the hand-checked
gap-closed numbers, self-containment, escaping, figures, flags, notes and configurations."""

import base64
import html
import json

import pytest

from arch_compare.report import analysis, load_study
from tests.report.fixture_study import (AMOUNTS, COMPARISONS, FAILED, KINDS, MODELS, NOTES,
                                        ODD_LEARNING_RATE, PENDING, SCRIPT, SOURCES, TARGET,
                                        imitation_values, interval)
from tests.report.parsing import markdown_tables, outside_code_fences, parse_html, png_size

SECTIONS = ["Benchmarks", "Metrics against imitation data", "Paired comparisons",
            "Share of the gap closed",
            "Style vs capability", "Compute: estimated and measured",
            "Configuration differences", "Sample outputs", "Notes", "Run configurations"]
LLAMA_BROAD_1024_GAPS = ["-45.5%", "-11.8%", "97.1%", "94.5%"]  # by hand: see test_analysis


@pytest.fixture(scope="module")
def parsed(report):
    return parse_html(report[1])


@pytest.fixture(scope="module")
def md_tables(report):
    return markdown_tables(report[2])


def _expected_grid():
    """(model, data, examples) of every row of a benchmark table, in the report's order."""
    rows = []
    for model in MODELS:
        rows.append((model, "base", "0"))
        rows += [(model, source, f"{n:,}") for source in SOURCES for n in AMOUNTS]
    return rows + [(TARGET, "target", "")]


def _benchmark_tables(tables):
    """task -> table, found by the metric columns each task's table must have."""
    found = {}
    for table in tables:
        header = table[0] if isinstance(table, list) else table.rows[0]
        for task in dict.fromkeys(name.split("/")[0] for name in KINDS):
            metrics = [n.split("/")[1] for n in KINDS if n.startswith(task + "/")]
            if header[:2] == ["Architecture", "Model"] and all(
                    any(cell.startswith(m + " (") for cell in header) for m in metrics):
                found[task] = table if isinstance(table, list) else table.rows
    return found


@pytest.mark.parametrize("form", ["html", "markdown"])
def test_every_benchmark_row_and_metric_is_in_both_forms(form, parsed, md_tables):
    tables = _benchmark_tables(parsed.tables if form == "html" else md_tables)
    assert set(tables) == {"nq_open", "mmlu", "style", "heldout"}
    for task, rows in tables.items():
        header, body = rows[0], rows[1:]
        assert [(r[1], r[3], r[4]) for r in body] == _expected_grid(), task
        cell = {(r[1], r[3], r[4]): dict(zip(header, r)) for r in body}
        llama = cell[("llama-tiny", "broad", "1,024")]
        for name, value in imitation_values("llama-tiny", "broad", 1024).items():
            if name.startswith(task + "/"):
                column = f"{name.split('/')[1]} ({KINDS[name][0].upper()})"
                shown, _, bounds = llama[column].partition(" (")
                assert float(shown) == pytest.approx(value, abs=1e-3)
                low, high = interval(name, value) or (None, None)
                if low is None:  # recorded without an interval: the value alone
                    assert bounds == ""
                else:  # "value (low-high)", or "(low to high)" across zero
                    parts = bounds.rstrip(")").split(" to " if low < 0 else "-")
                    assert [float(p) for p in parts] == pytest.approx([low, high], abs=0.051)
        assert cell[("t5-tiny", "local", "1,024")]["Status"] == "failed"
        assert cell[("gpt2-tiny", "broad", "1,024")]["Status"] == "pending"
        if task == "style":  # T5 cannot write lists at this vocabulary: undefined, not missing
            assert cell[("t5-tiny", "broad", "64")]["list_when_target_lists (S)"] == "n/a"
            assert cell[("t5-tiny", "local", "1,024")]["list_when_target_lists (S)"] == "—"


@pytest.mark.parametrize("form", ["html", "markdown"])
def test_gap_closed_table_has_the_hand_checked_shares(form, parsed, md_tables):
    tables = parsed.tables if form == "html" else md_tables
    rows = next(t.rows if form == "html" else t for t in tables
                if (t.rows if form == "html" else t)[0][-2:] == ["Mean capability",
                                                                 "Mean style"])
    header = rows[0]
    by_run = {(r[1], r[2], r[3]): dict(zip(header, r)) for r in rows[1:]}
    llama = by_run[("llama-tiny", "broad", "1,024")]
    assert [llama[name] for name in KINDS if KINDS[name] != "other"] == LLAMA_BROAD_1024_GAPS
    assert llama["Mean capability"] == "-28.6%" and llama["Mean style"] == "95.8%"
    assert by_run[("llama-tiny", "local", "1,024")]["nq_open/exact_match"] == "63.6%"
    assert "heldout/loss" not in header   # "other" metrics have no gap to close
    assert ("t5-tiny", "local", "1,024") not in by_run                    # failed


def test_summary_states_computed_headlines(report, study_dir):
    summary = report[2].split("\n\n")[1]
    rows = analysis.gap_rows(load_study(study_dir))
    style_mean = sum(r.mean_by_kind["style"] for r in rows) / len(rows)
    capability_mean = sum(r.mean_by_kind["capability"] for r in rows) / len(rows)
    assert f"{style_mean * 100:.1f}% of the base-to-target gap on style" in summary
    assert f"{capability_mean * 100:.1f}% on capability" in summary
    assert "best run on style (llama-tiny · broad · 1,024) closed 95.8%" in summary
    assert "best run on capability (gpt2-tiny · local · 1,024) closed 50.0%" in summary
    assert "20 of 22 runs finished, 1 failed, 1 pending" in summary
    # Significance from the recorded paired comparisons: 2 of the 3 against a base model.
    # Grouped by metric: how many runs of those compared, and their differences.
    assert ("2 of 3 imitation-versus-base differences are significant: "
            "nq_open/exact_match in 1 of 2 runs (+7.0); "
            "style/length_pearson in 1 of 1 runs (+0.690)") in summary
    assert summary in html.unescape(report[1])


@pytest.mark.parametrize("form", ["html", "markdown"])
def test_every_paired_comparison_is_listed_with_its_interval(form, parsed, md_tables):
    tables = parsed.tables if form == "html" else md_tables
    rows = next(t.rows if form == "html" else t for t in tables
                if (t.rows if form == "html" else t)[0][:2] == ["Run", "Against"])
    listed = {(r[0], r[1], r[2]): r[3:] for r in rows[1:]}
    assert len(listed) == len(COMPARISONS)
    for run, baseline, name, difference, low, high, significant in COMPARISONS:
        shown, bounds, mark = listed[run, baseline, name]
        assert float(shown) == pytest.approx(difference)
        assert [float(b) for b in bounds.split(" to ")] == pytest.approx([low, high])
        assert (mark != "") == significant


def test_html_is_one_self_contained_page_in_the_documented_order(report, parsed):
    text = report[1]
    assert parsed.nesting_errors == [] and parsed.open == []
    assert parsed.headings["h2"] == SECTIONS
    assert "http://" not in text and "https://" not in text
    tags = {tag for tag, _ in parsed.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed"}
    for tag, attributes in parsed.tags:
        assert not any(name.startswith("on") for name in attributes), tag   # no handlers
        if "src" in attributes:
            assert attributes["src"].startswith("data:image/png;base64,")
        if "href" in attributes:
            assert attributes["href"].startswith("#")
    images = [a["src"] for tag, a in parsed.tags if tag == "img"]
    assert len(images) == len(report[0].figures)
    for src in images:
        width, height = png_size(base64.b64decode(src.split(",", 1)[1]))
        assert 300 <= width <= 2000 and 200 <= height <= 1200


def test_database_text_is_escaped(report, parsed):
    text = report[1]
    assert "<script>" not in text
    assert html.escape(SCRIPT) in text
    assert SCRIPT in parsed.pre_texts             # shown verbatim to the reader
    assert "&lt;b&gt;France&lt;/b&gt;" in text   # a prompt's markup, too
    assert "&lt;HBM&gt;" in text                   # and a failed run's error
    markdown = report[2]
    assert SCRIPT in markdown                      # inside a code fence, where it is inert
    prose = outside_code_fences(markdown)
    assert "<script" not in prose and "<b>" not in prose and "&lt;HBM&gt;" in prose


def test_markdown_figures_exist_and_are_reasonable_pngs(report):
    paths, _, markdown = report
    out_dir = paths.markdown.parent
    referenced = [line.split("](", 1)[1].rstrip(")") for line in markdown.splitlines()
                  if line.startswith("![")]
    assert sorted(referenced) == sorted(str(p.relative_to(out_dir)) for p in paths.figures)
    # one per metric, the gap-closed curves and the style-vs-capability scatter
    assert len(referenced) == len(KINDS) + 2
    for name in referenced:
        data = (out_dir / name).read_bytes()
        width, height = png_size(data)
        assert 300 <= width <= 2000 and 200 <= height <= 1200, name
        assert 5_000 < len(data) < 1_000_000, name


def test_failed_and_pending_runs_are_shown_with_their_error(parsed):
    status = next(t for t in parsed.tables if t.rows[0] == ["Run", "Role", "Model", "Status",
                                                           "Error"])
    rows = {r[0]: r for r in status.rows[1:]}
    assert set(rows) == {FAILED, PENDING}
    assert rows[FAILED][4] == "… RuntimeError: RESOURCE_EXHAUSTED: out of memory allocating " \
                              "1.2GiB <HBM>"
    assert status.row_classes[1:] == ["pending", "failed"]


@pytest.mark.parametrize("form", ["html", "markdown"])
def test_a_configuration_difference_is_flagged(form, parsed, md_tables):
    if form == "html":
        table = next(t for t in parsed.tables if t.rows[0][0] == "Key")
        rows = dict(zip((r[0] for r in table.rows[1:]), zip(table.row_classes[1:],
                                                              table.rows[1:])))
        style, row = rows["optimizer.learning_rate"]
        assert style == "flag" and row[3] == "⚠ flagged" and ODD_LEARNING_RATE in row[1]
        assert rows["train_steps"][0] == "" and rows["train_steps"][1][3] == \
            "allowed by the study"
        assert rows["optimizer.warmup_steps"][0] == "" and \
            rows["optimizer.warmup_steps"][1][3] == "same for every model"
    else:
        table = next(t for t in md_tables if t[0][0] == "Key")
        keys = [r[0] for r in table[1:]]
        assert "⚠ optimizer.learning_rate" in keys and "train_steps" in keys
        assert "optimizer.warmup_steps" in keys


def test_notes_and_exact_configurations_are_included(report, parsed, study_dir):
    text = html.unescape(report[1])
    for note in NOTES:
        assert note in text
        assert note.replace("<", "&lt;").replace(">", "&gt;") in report[2]
    data = load_study(study_dir)
    configs = [json.loads(t) for t in parsed.pre_texts if t.startswith("{")]
    assert configs[0] == data.study.config
    assert configs[1:] == [run.config for run in analysis.sorted_runs(data)]
    assert report[1].count("<details>") == len(data.runs) + 1
    assert report[2].count("<details>") == len(data.runs) + 1
