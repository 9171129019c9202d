"""The report's numbers: gap closed (checked by hand), headlines, configuration differences,
compute totals, number formats, and how a study is found in a database."""

import ast
import sqlite3
from pathlib import Path

import pytest

from arch_compare.report import analysis, fmt, load_study, samples, tables
from arch_compare.report.load import StudyData
from arch_compare.results import ResultsStore, Run, Study
from tests.report.fixture_study import FAILED, ODD_LEARNING_RATE, PENDING, STUDY

REPORT_PACKAGE = Path(analysis.__file__).parent


@pytest.fixture(scope="module")
def data(study_dir):
    return load_study(study_dir)


@pytest.fixture(scope="module")
def gaps(data):
    return {row.run.run_id: row for row in analysis.gap_rows(data)}


def test_gap_closed_is_the_share_of_the_distance_to_the_target():
    assert analysis.gap_closed(25.0, 20.0, 30.0) == pytest.approx(0.5)
    assert analysis.gap_closed(15.0, 20.0, 31.0) == pytest.approx(-5 / 11)  # moved away
    assert analysis.gap_closed(-0.2, 0.1, -0.5) == pytest.approx(0.5)      # target below base
    assert analysis.gap_closed(0.4, 0.3, 0.3) is None                       # no gap to close
    assert analysis.gap_closed(0.4, 1e12, 1e12 + 1e-3) is None              # ~0 for its size
    assert analysis.gap_closed(0.31, 0.3, 0.3 + 1e-6) is not None           # small but real
    assert analysis.gap_closed(None, 0.1, 0.5) is None
    assert analysis.gap_closed(0.2, None, 0.5) is None


def test_gap_rows_match_hand_computed_shares(gaps):
    # llama-tiny, broad data, 1024 examples (numbers in fixture_study.py):
    # NQ 20 -> 15 with target 31; MMLU 0.35 -> 0.33 with 0.52; lists 0.13 -> 0.79 with 0.81;
    # length correlation -0.11 -> 0.58 with 0.62.
    row = gaps["imitation/llama-tiny/broad/1024"]
    assert row.closed["nq_open/exact_match"] == pytest.approx(-5 / 11)
    assert row.closed["mmlu/accuracy"] == pytest.approx(-0.02 / 0.17)
    assert row.closed["style/list_when_target_lists"] == pytest.approx(0.66 / 0.68)
    assert row.closed["style/length_pearson"] == pytest.approx(0.69 / 0.73)
    assert row.mean_by_kind["capability"] == pytest.approx((-5 / 11 - 0.02 / 0.17) / 2)
    assert row.mean_by_kind["style"] == pytest.approx((0.66 / 0.68 + 0.69 / 0.73) / 2)
    local = gaps["imitation/llama-tiny/local/1024"]
    assert local.closed["nq_open/exact_match"] == pytest.approx(7 / 11)      # 20 -> 27 of 31


def test_undefined_values_and_runs_without_results_give_no_share(gaps):
    t5 = gaps["imitation/t5-tiny/broad/256"]
    assert t5.closed["style/list_when_target_lists"] is None    # recorded as undefined
    assert t5.closed["heldout/loss"] is None                     # base equals target
    assert t5.mean_by_kind["style"] == t5.closed["style/length_pearson"]  # mean of the rest
    assert FAILED not in gaps and PENDING not in gaps
    assert all(row.run.role == "imitation" for row in gaps.values())
    assert len(gaps) == 16   # 3 models x 2 sources x 3 amounts, less the failed and pending


def test_headlines_pick_the_best_run_per_kind(gaps):
    rows = list(gaps.values())
    style, capability = analysis.headline(rows, "style"), analysis.headline(rows, "capability")
    assert style.best.run.run_id == "imitation/llama-tiny/broad/1024"
    assert style.best_value == pytest.approx((0.66 / 0.68 + 0.69 / 0.73) / 2)
    # gpt2-tiny with 1024 local examples closes half of each capability gap by construction.
    assert capability.best.run.run_id == "imitation/gpt2-tiny/local/1024"
    assert capability.best_value == pytest.approx(0.5)
    means = [row.mean_by_kind["style"] for row in rows]
    assert style.mean == pytest.approx(sum(means) / len(means))


def test_configuration_differences_flag_what_the_fairness_rule_forbids(data):
    differences = {d.key: d for d in analysis.config_differences(data)}
    learning_rate = differences["optimizer.learning_rate"]
    assert learning_rate.flagged and learning_rate.varies_with == "models"
    assert learning_rate.values[1] == ("0.001", (ODD_LEARNING_RATE,))
    assert learning_rate.values[0][0] == "0.002" and len(learning_rate.values[0][1]) == 17
    warmup = differences["optimizer.warmup_steps"]     # same for every model at each amount
    assert not warmup.flagged and warmup.varies_with == "data only"
    assert warmup.status == "data only"
    assert differences["train_steps"].status == "allowed by the study"
    for key in ("model.preset", "data.source", "data.examples", "model_dir"):
        assert differences[key].status == "model or data"
    assert "batch_size" not in differences and "optimizer.name" not in differences


def test_differences_in_the_study_runners_layout():
    """Runs configured as the study runner writes them: model and source sections, steps that
    follow the amount (one epoch), and one model given another learning rate."""
    def config(model, source, examples, learning_rate=2e-3):
        return {"model": {"name": model, "preset": model}, "examples": examples,
                "source": {"name": source, "file": f"/data/{source}.jsonl"},
                "training": {"steps": examples // 8, "batch_size": 8,
                             "optimizer": {"name": "adamw", "learning_rate": learning_rate}}}
    runs = tuple(
        Run(run_id=f"{model}/{source}/{n}", role="imitation", model=model,
            architecture="decoder_only", family="gpt2", data_source=source, data_examples=n,
            config=config(model, source, n, 1e-3 if (model, n) == ("b", 64) else 2e-3))
        for model in ("a", "b") for source in ("broad", "local") for n in (64, 256))
    data = StudyData(Path("x"), Study("s", {}, "x", 0.0), runs, (), ())
    status = {d.key: d.status for d in analysis.config_differences(data)}
    assert status == {"model.name": "model or data", "model.preset": "model or data",
                      "examples": "model or data", "source.name": "model or data",
                      "source.file": "model or data", "training.steps": "data only",
                      "training.optimizer.learning_rate": "flagged"}


def _run(run_id, estimate=None, measured=None, status="done"):
    return Run(run_id=run_id, role="imitation", model="m", architecture="decoder_only",
               family="gpt2", config={}, status=status, data_source="broad", data_examples=8,
               estimate=estimate, measured=measured)


def test_compute_table_totals_known_values_and_counts_unknown_ones():
    runs = (
        _run("a", {"flops": 1e18, "train_flops": 8e17, "cost_usd": 1234.5, "hours": 2.0,
                   "chip_hours": 32.0, "hardware": "tpu-v4", "chips": 16},
             {"flops": 1.2e18, "wall_seconds": 7200, "device": "tpu-v4"}),
        _run("b", {"train_flops": 5e17, "cost_usd": 10.0, "hours": 1.0, "chip_hours": 16.0}),
        _run("c", {"flops": 2e17, "cost_usd": None}, status="failed"),
    )
    data = StudyData(Path("x"), Study("s", {}, "x", 0.0), runs, (), ())
    table = tables.compute_table(data)
    rows = {row[0]: dict(zip(table.columns, row)) for row in table.rows}
    assert rows["a"]["Run / est."] == "1.50x" and rows["a"]["Est. hardware"] == "tpu-v4 x 16"
    assert rows["a"]["Measured time (device)"] == "2.00 h (tpu-v4)"
    assert rows["b"]["Est. FLOPs"] == "5.00e17" and rows["b"]["FLOPs run"] == "n/a"
    assert "c (failed)" in rows
    total = rows["Total"]
    assert total["Est. FLOPs"] == "1.70e18"
    assert total["Est. $"] == "$1,244.50 (+1 n/a)"
    assert total["FLOPs run"] == "1.20e18 (+2 n/a)"
    assert total["Est. chip-hours"] == "48 (+1 n/a)"
    assert table.style(len(runs)) == "total" and table.style(2) == "failed"


def test_sample_text_stays_verbatim_except_for_empty_runs_and_length():
    assert samples.readable("- a\n- b\n\nend") == "- a\n- b\n\nend"
    assert samples.readable("x\n\n\n\n\ny") == "x\n[4 empty lines]\ny"
    cut = samples.readable("word " * 400, limit=100)
    assert cut.startswith("word " * 20) and cut.endswith("[cut here; 2,000 characters in all]")


def test_number_formats():
    assert fmt.percent(-5 / 11) == "-45.5%" and fmt.percent(None) == "n/a"
    assert fmt.scientific(2.346e13) == "2.35e13" and fmt.scientific(3e-5) == "3.00e-5"
    assert fmt.dollars(1234.567) == "$1,234.57" and fmt.dollars(0.001) == "<$0.01"
    assert fmt.dollars(0.0) == "$0.00"
    assert fmt.compact(1_558_000_000) == "1.56B" and fmt.compact(950) == "950"
    assert fmt.duration(30 / 3600) == "30.0 s" and fmt.duration(1.5) == "1.50 h"
    assert fmt.metric_formatter([0.5, None])(0.25) == "0.250"
    assert fmt.metric_formatter([20.0, 0.5])(20.0) == "20.0"


def test_a_missing_path_or_database_is_named_and_nothing_is_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_study(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no results database"):
        load_study(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    with pytest.raises(ValueError, match="not an arch_compare results database"):
        load_study(tmp_path / "notes.txt")


def test_the_study_must_be_named_when_a_database_holds_several(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        store.register_study("alpha", {"a": 1}, tmp_path)
        store.register_study("beta", {"b": 2}, tmp_path)
    with pytest.raises(ValueError, match=r"2 studies \(alpha, beta\).*--study"):
        load_study(path)
    assert load_study(path, "beta").study.config == {"b": 2}
    with pytest.raises(KeyError, match="studies: alpha, beta"):
        load_study(path, "gamma")


def test_loading_reads_the_whole_study(data):
    assert data.study.name == STUDY
    assert len(data.runs) == 22 and len(data.metrics) > 0 and len(data.samples) > 0
    assert sqlite3.connect(data.database).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 22


def test_the_report_imports_nothing_that_trains_models_or_needs_jax():
    forbidden = ("jax", "flax", "optax", "arch_compare.trainer", "arch_compare.models",
                 "arch_compare.decoding", "arch_compare.data", "seqio", "tensorflow")
    for path in REPORT_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_execution_settings_are_listed_as_execution_never_flagged():
    """Models laid out differently (a mesh per model, another dtype for one) differ in their
    `execution` section and in a model's own override: listed as execution, never flagged."""
    def config(model, n):
        mesh = {"data": 1, "fsdp": 4, "tensor": 2} if model == "a" else {"data": 8}
        return {"model": {"name": model, "execution": {"mesh": mesh} if model == "a" else {}},
                "examples": n, "training": {"steps": n // 8},
                "execution": {"mesh": mesh, "dtype": "bfloat16" if model == "a" else "float32",
                              "remat": "block", "microbatches": 1}}
    runs = tuple(
        Run(run_id=f"{model}/broad/{n}", role="imitation", model=model,
            architecture="decoder_only", family="gpt2", data_source="broad", data_examples=n,
            config=config(model, n), measured={"device": "8 x cpu", "processes": 2})
        for model in ("a", "b") for n in (64, 256))
    data = StudyData(Path("x"), Study("s", {}, "x", 0.0), runs, (), ())
    status = {d.key: d.status for d in analysis.config_differences(data)}
    assert status["execution.dtype"] == "execution"
    assert status["execution.mesh.fsdp"] == "execution"
    assert status["model.execution.mesh.fsdp"] == "execution"
    assert not any(d.flagged for d in analysis.config_differences(data))
    shown = analysis.execution(runs[0])
    assert (shown.mesh, shown.dtype, shown.devices) == ("fsdp 4 x tensor 2", "bfloat16",
                                                        "8 x cpu on 2 processes")
    assert analysis.execution(runs[2]).mesh == "data 8"
