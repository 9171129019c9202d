"""The report's recipe sections, from the database of `recipes_fixture.py` (two models, full at
64 and 256 examples, mix, l2sp, lora and wise@0.5 at 256): the sections exist only with recipe
runs, the side-by-side table carries the stored comparisons and the fixture's costs, the findings
name the recipe the numbers say and whether the data separate it from full, both forms render,
and an older database without the recipe column still renders."""

from __future__ import annotations

import dataclasses
import re
import sqlite3

import pytest

from arch_compare.report import analysis, fmt, load_study, recipes, run_costs, write_report
from arch_compare.results import ResultsStore, Run
from tests.report import recipes_fixture as fx
from tests.report.parsing import markdown_tables, parse_html, png_size

CHANGE = re.compile(r"^([+-][\d.]+) \(([+-][\d.]+) to ([+-][\d.]+)\)( ✱)?$")
LABELS = ("full", "mix", "l2sp", "lora", "wise@0.5")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_study(fx.build(tmp_path_factory.mktemp("recipes") / "results.sqlite"))


@pytest.fixture(scope="module")
def written(data, tmp_path_factory):
    paths = write_report(data.database, tmp_path_factory.mktemp("recipes_report"))
    parsed = parse_html(paths.html.read_text("utf-8"))
    return paths, parsed, paths.markdown.read_text("utf-8")


def _recipe_table(tables):
    found = [t for t in tables if t[0][:4] == ["Model", "Data", "Examples", "Recipe"]]
    assert len(found) == 1
    return found[0]


def test_sections_appear_only_where_a_recipe_run_exists(written, study_dir, report):
    titles = written[1].headings["h2"]
    at = titles.index("Style vs capability")
    assert titles[at + 1:at + 3] == [recipes.COMPUTE_TITLE, recipes.TITLE]
    plain = load_study(study_dir)  # the report tests' study: every run fine-tuned in full
    assert not recipes.has_recipes(plain) and recipes.sections(plain) == ()
    for title in (recipes.COMPUTE_TITLE, recipes.TITLE):
        assert title not in parse_html(report[1]).headings["h2"]
        assert f"## {title}" not in report[2]


def _expected_change(model, label, column):
    """(value, low, high, significant) of the regression (column 0) or style gain (2)."""
    value, half = fx.CHANGES[(model, fx.RECIPE_AMOUNT, label)][column:column + 2]
    low, high = value - half, value + half
    return value, low, high, low > 0 or high < 0


def _parsed(cell):
    match = CHANGE.match(cell)
    assert match, cell
    return [float(match.group(i)) for i in (1, 2, 3)], bool(match.group(4))


def _expected_costs(model, label):
    """(estimated FLOPs, estimated $, measured $ or None) from the fixture's own numbers; a
    wise run carries its full run's cost too."""
    labels = (label, "full") if label.startswith("wise") else (label,)
    flops = sum(fx.estimate(model, fx.RECIPE_AMOUNT, one)["flops"] for one in labels)
    usd = sum(fx.estimate(model, fx.RECIPE_AMOUNT, one)["cost_usd"] for one in labels)
    chips = int(fx.DEVICES[model].split(" x ")[0])
    measured = (sum(chips * fx.measured(model, fx.RECIPE_AMOUNT, one)["wall_seconds"] / 3600
                    * fx.TPU_V4_PRICE for one in labels)
                if "TPU v4" in fx.DEVICES[model] else None)
    return flops, usd, measured


@pytest.mark.parametrize("form", ["html", "markdown"])
def test_table_cells_are_the_fixtures_values(form, written):
    _, parsed, markdown = written
    tables = ([t.rows for t in parsed.tables] if form == "html" else markdown_tables(markdown))
    table = _recipe_table(tables)
    header, body = table[0], table[1:]
    assert header[4:] == [f"Regression {fx.EXEC}", f"Regression {fx.MMLU}",
                          f"Style gain {fx.STYLE}", "Trainable params", "Est. FLOPs", "Est. $",
                          "Measured $"]
    # Only the cells some recipe fine-tuned (256 examples), every recipe in the study's order.
    assert [(r[0], r[1], r[2], r[3]) for r in body] == [
        (m, fx.SOURCE, "256", label) for m in fx.MODELS for label in LABELS]
    for row in body:
        model, label = row[0], row[3]
        cells = dict(zip(header, row))
        for column, name in ((0, f"Regression {fx.EXEC}"), (2, f"Style gain {fx.STYLE}")):
            value, low, high, significant = _expected_change(model, label, column)
            numbers, marked = _parsed(cells[name])
            assert numbers == pytest.approx([value, low, high], abs=5e-4), (model, label, name)
            assert marked == significant
        mmlu = fx.CHANGES[(model, fx.RECIPE_AMOUNT, label)][4]
        shown = cells[f"Regression {fx.MMLU}"]
        assert shown.endswith(" (no paired interval)")  # mmlu keeps no per-example outputs
        assert float(shown.split()[0]) == pytest.approx(mmlu, abs=5e-4)
        trainable = {"lora": fx.TRAINABLE["lora"], "wise@0.5": 0}.get(label, fx.MODELS[model][2])
        assert cells["Trainable params"] == fmt.compact(trainable)
        flops, usd, measured = _expected_costs(model, label)
        assert cells["Est. FLOPs"] == fmt.scientific(flops) + (
            " (with full)" if label.startswith("wise") else "")
        assert cells["Est. $"] == fmt.dollars(usd)
        if measured is None:  # t5-tiny ran on a CPU: no price in the catalogue, said so
            assert cells["Measured $"].startswith("n/a (") and "cpu" in cells["Measured $"]
        else:
            assert cells["Measured $"] == fmt.dollars(measured)


def _expected_best(model):
    """The least execution-accuracy regression among the recipes that kept at least half of
    full's style gain, computed from the fixture's table of changes."""
    full_gain = fx.CHANGES[(model, fx.RECIPE_AMOUNT, "full")][2]
    kept = [label for label in LABELS
            if fx.CHANGES[(model, fx.RECIPE_AMOUNT, label)][2] >= 0.5 * full_gain]
    return min(kept, key=lambda label: fx.CHANGES[(model, fx.RECIPE_AMOUNT, label)][0])


def _sentence(found, model, metric=fx.EXEC):
    return next(s for s in found if s.startswith(f"{model} on {fx.SOURCE}, 256 examples, {metric}"))


def test_findings_name_the_least_regression_and_whether_it_is_told_apart(data, written):
    found = recipes.findings(recipes.RecipeGrid(data))
    # mix regressed least of all on gpt2-tiny but kept under half of full's style gain.
    naive = min(LABELS, key=lambda label: fx.CHANGES[("gpt2-tiny", 256, label)][0])
    assert naive == "mix" and _expected_best("gpt2-tiny") == "lora"
    gpt2 = _sentence(found, "gpt2-tiny")
    assert "lora regressed least: +0.010 (-0.020 to +0.040) against full's +0.100 (+0.060 to " \
           "+0.140) ✱" in gpt2
    assert "lora − full on the same examples +0.090 (+0.050 to +0.130), so the data separate " \
           "them" in gpt2
    assert "Left out, with less than 50% of full's style gain: mix (regression +0.000" in gpt2
    assert "style/length_pearson +0.400 (+0.340 to +0.460) ✱" in gpt2
    # t5-tiny: lora regressed least, but its paired interval against full includes 0.
    assert _expected_best("t5-tiny") == "lora"
    t5 = _sentence(found, "t5-tiny")
    assert "lora regressed least: +0.060" in t5
    difference = fx.CHANGES[("t5-tiny", 256, "full")][0] - fx.CHANGES[("t5-tiny", 256, "lora")][0]
    half = fx.AGAINST_FULL["t5-tiny"]
    assert (f"lora − full on the same examples {difference:+.3f} ({difference - half:+.3f} to "
            f"{difference + half:+.3f}), an interval that includes 0: the data cannot tell them "
            f"apart") in t5
    # mmlu keeps no per-example outputs: no interval, so nothing is claimed separated.
    assert "the data cannot tell them apart" in _sentence(found, "gpt2-tiny", fx.MMLU)
    assert found[0].startswith("Least regression at a given style gain")
    assert "lora 4" in found[0]
    for text in (written[0].html.read_text("utf-8"), written[2]):
        assert "so the data separate them" in text and "cannot tell them apart" in text


def test_without_a_paired_comparison_to_full_the_intervals_decide(data):
    fulls = {fx.run_id(m, fx.RECIPE_AMOUNT, "full") for m in fx.MODELS}
    stripped = dataclasses.replace(data, comparisons=tuple(
        c for c in data.comparisons if c.baseline_run_id not in fulls))
    assert len(stripped.comparisons) < len(data.comparisons)
    found = recipes.findings(recipes.RecipeGrid(stripped))
    # gpt2-tiny: lora's regression interval (-0.02, 0.04) lies below full's (0.06, 0.14).
    assert "their intervals do not overlap, so the data separate them" in _sentence(
        found, "gpt2-tiny")
    # t5-tiny: lora's (-0.01, 0.13) overlaps full's (0.02, 0.14).
    assert "their intervals overlap: the data cannot tell them apart" in _sentence(
        found, "t5-tiny")


def test_both_forms_render_the_sections_and_their_figures(written):
    paths, parsed, markdown = written
    assert not parsed.nesting_errors
    for title in (recipes.COMPUTE_TITLE, recipes.TITLE):
        assert title in parsed.headings["h2"] and f"## {title}" in markdown
    assert _recipe_table([t.rows for t in parsed.tables]) == _recipe_table(
        markdown_tables(markdown))
    names = {p.name for p in paths.figures}
    for name in ("compute_capability.png", "compute_style.png",
                 "recipes_regression_vs_style.png"):
        assert name in names and f"figures/{name}" in markdown
        width, height = png_size((paths.html.parent / "figures" / name).read_bytes())
        assert width > 600 and height > 250


def test_recipe_runs_are_labelled_and_not_flagged_as_unfair(data, written):
    labels = [analysis.run_label(r) for r in data.runs]
    assert len(set(labels)) == len(labels)
    assert "gpt2-tiny · broad · wise@0.5 · 256" in labels
    # The recipe section of each run's configuration differs by recipe, never across models
    # that share one: listed as following the data, not flagged.
    differences = analysis.config_differences(data)
    assert any(d.key.startswith("recipe.") for d in differences)
    assert not any(d.flagged for d in differences)


def test_an_older_database_without_the_recipe_column_still_renders(tmp_path):
    path = fx.build_without_recipe_column(tmp_path / "results.sqlite")
    with sqlite3.connect(path) as db:
        assert "recipe" not in {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    with ResultsStore(path, read_only=True) as store:
        assert {r.recipe for r in store.runs(fx.STUDY) if r.role == "imitation"} == {"full"}
    paths = write_report(path, tmp_path / "report")
    markdown = paths.markdown.read_text("utf-8")
    assert f"## {recipes.TITLE}" not in markdown and f"## {recipes.COMPUTE_TITLE}" not in markdown
    assert "## Share of the gap closed" in markdown
    assert not parse_html(paths.html.read_text("utf-8")).nesting_errors


@pytest.mark.parametrize("kind, chip", [("TPU v4", "tpu-v4"), ("NVIDIA H100 80GB HBM3", "h100"),
                                        ("TPU v5 lite", "tpu-v5e"), ("cpu", None)])
def test_devices_are_matched_to_the_hardware_catalogue(kind, chip):
    catalogue, problem = run_costs.price_catalogue()
    assert problem is None
    assert run_costs.device_chip(kind, catalogue) == chip


def _run(measured):
    return Run("imitation/m/broad/8", "imitation", "m", "decoder_only", "gpt2", {},
               data_source="broad", data_examples=8, measured=measured)


def test_measured_dollars_say_why_a_device_has_no_price():
    catalogue = {"tpu-v4": 3.22, "h200": None}
    # 2 chips for half an hour: one chip-hour.
    assert run_costs.measured_dollars(_run({"device": "2 x TPU v4", "wall_seconds": 1800}),
                                      catalogue) == (pytest.approx(3.22),
                                                     "tpu-v4 at $3.22/chip-hour")
    # A recorded chip-hours figure wins over devices x wall time.
    assert run_costs.measured_dollars(_run({"device": "2 x TPU v4", "wall_seconds": 1800,
                                            "chip_hours": 2.0}), catalogue)[0] == (
        pytest.approx(6.44))
    assert run_costs.measured_dollars(_run({"device": "1 x NVIDIA H200", "wall_seconds": 60}),
                                      catalogue) == (None, "h200: no verified price in "
                                                           "budgets/hardware.yaml")
    assert run_costs.measured_dollars(_run(None), catalogue) == (None, "not measured")


def test_a_failed_recipe_run_shows_no_numbers_and_drops_out_of_the_finding(data):
    lora = fx.run_id("gpt2-tiny", fx.RECIPE_AMOUNT, "lora")
    failed = dataclasses.replace(data, runs=tuple(
        dataclasses.replace(r, status="failed", error="boom") if r.run_id == lora else r
        for r in data.runs))
    grid = recipes.RecipeGrid(failed)
    table = recipes.recipe_table(grid)
    row = next(r for r, style in zip(table.rows, table.styles)
               if r[0] == "gpt2-tiny" and r[3] == "lora" and style == "failed")
    assert row[4:7] == ("—", "—", "—")
    # Without lora, the least regression at half of full's style gain is wise@0.5's (0.04).
    assert "wise@0.5 regressed least: +0.040" in _sentence(recipes.findings(grid), "gpt2-tiny")


def test_a_metric_no_run_changed_is_left_out_and_counted(data):
    # gpt2-tiny's execution accuracy made equal to its base for every run (paired differences
    # exactly 0, as Cypher accuracy is after broad imitation): nothing to reduce, no verdict.
    base = "base/gpt2-tiny"
    zeroed = tuple(
        dataclasses.replace(c, difference=0.0, low=0.0, high=0.0, significant=False)
        if c.baseline_run_id == base and c.metric == fx.EXEC.split("/")[1]
        and c.task == fx.EXEC.split("/")[0] else c
        for c in data.comparisons)
    assert zeroed != data.comparisons
    found = recipes.findings(recipes.RecipeGrid(dataclasses.replace(data, comparisons=zeroed)))
    assert any(line.startswith("Left out of the comparison: 1 (cell, capability metric) pair ")
               for line in found)
    assert all(not (line.startswith("gpt2-tiny") and fx.EXEC in line) for line in found)
    assert any(line.startswith("t5-tiny") and fx.EXEC in line for line in found)
