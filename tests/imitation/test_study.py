"""The study runner: a tiny study end to end through the CLI, killed and resumed, two studies in
one database, the budget gate, and the configuration's errors."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arch_compare.evaluation import intervals
from arch_compare.imitation import config as study_config
from arch_compare.imitation import evaluation
from arch_compare.imitation.plan import StudyDeclined, confirm, plan
from arch_compare.results import ResultsStore
from arch_compare_tasks import demo_world, registry

from tests.imitation.study_progress import statuses_so_far

TINY_STUDY = Path(__file__).with_name("tiny_study.gin")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_vocabulary(tmp_path_factory):
    return demo_world.write_vocabularies(tmp_path_factory.mktemp("world"))["DEMO_BPE"]


def _command(study_dir, vocabulary, *extra):
    return [sys.executable, "-m", "arch_compare", "study", f"--gin_file={TINY_STUDY}",
            f"--gin.STUDY_DIR='{study_dir}'", f"--gin.VOCABULARY='{vocabulary}'", *extra]


def _environment():
    # The study processes share the session's compilation cache (tests/conftest.py sets
    # ARCH_COMPARE_COMPILATION_CACHE, which `study` reads): each tiny program compiled once.
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _results(database, study="tiny"):
    with ResultsStore(database) as store:
        metrics = {(m.run_id, m.task, m.metric): m.value for m in store.metrics(study)}
        samples = {(s.run_id, s.task, s.example_id): s.output for s in store.samples(study)}
        statuses = {run.run_id: run.status for run in store.runs(study)}
        return metrics, samples, statuses, store.row_counts(study)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, demo_vocabulary):
    study_dir = tmp_path_factory.mktemp("uninterrupted")
    done = subprocess.run(_command(study_dir, demo_vocabulary, "--yes"), capture_output=True,
                          text=True, env=_environment(), cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return study_dir, done.stdout


@pytest.fixture(scope="module")
def shared_database(tmp_path_factory, uninterrupted):
    """A copy of the uninterrupted study's database, for another study to share."""
    path = tmp_path_factory.mktemp("shared") / "shared.sqlite"
    with sqlite3.connect(uninterrupted[0] / "results.sqlite") as source, \
            sqlite3.connect(path) as copy:
        source.backup(copy)
    return path


def test_a_study_runs_every_run_and_records_it(uninterrupted):
    study_dir, stdout = uninterrupted
    metrics, samples, statuses, counts = _results(study_dir)
    assert statuses == {"base/gpt2-tiny": "done", "imitation/gpt2-tiny/broad/8": "done",
                        "imitation/gpt2-tiny/broad/16": "done",
                        "imitation/gpt2-tiny/broad/diversity/8": "done",
                        "imitation/gpt2-tiny/broad/diversity/16": "done",
                        "target/demo-target": "done"}
    for run_id in statuses:
        assert (run_id, "demo_facts_known", "fact_accuracy") in metrics
        assert (run_id, "demo_style", "list_when_target_lists") in metrics
    # The target answers from the knowledge base in its own style: perfect on its own metrics.
    assert metrics[("target/demo-target", "demo_facts_known", "fact_accuracy")] == 100.0
    assert metrics[("target/demo-target", "demo_style", "length_pearson")] == pytest.approx(1.0)
    assert "Budget of study 'tiny'" in stdout and "report:" in stdout
    assert (study_dir / "report" / "report.html").is_file()
    with ResultsStore(study_dir) as store:
        runs = {run.run_id: run for run in store.runs("tiny")}
    imitation = runs["imitation/gpt2-tiny/broad/16"]
    assert imitation.data_examples == 16 and imitation.data_tokens > 16
    assert imitation.measured["steps"] == 4  # 16 examples, batch 4, one epoch
    assert imitation.measured["examples_cut"] == 0  # the demo's answers fit its feature lengths
    # Trimmed padding (the study's training.trim_padding): each step ran over fewer tokens than
    # the feature lengths hold (4 steps of 4 rows of 32 + 64).
    assert 0 < imitation.measured["tokens"] < 4 * 4 * (32 + 64)
    assert imitation.estimate["train_flops"] > 0 and imitation.estimate["cost_usd"] > 0
    assert imitation.config["training"]["steps"] == 4
    # Collected once, exported for training: the largest amount's prompts, each answered once.
    lines = (study_dir / "collection" / "broad.openai_chat.jsonl").read_text().splitlines()
    assert len(lines) == 16
    # Diversity chose 8 of the first 24 prompts with the base model, then 8 more with the model
    # trained on those 8 (the student in the loop); its answers are exported in buying order, and
    # a prompt random data already bought was not asked again.
    rounds = {amount: json.loads((study_dir / "selections" / "broad" / "diversity" / "gpt2-tiny" /
                                  f"{amount}.json").read_text()) for amount in (8, 16)}
    assert rounds[8]["student"] == "the base model"
    assert rounds[16]["student"] == "the model trained on 8"
    assert rounds[16]["indices"][:8] == rounds[8]["indices"]
    assert len(set(rounds[16]["indices"])) == 16 and max(rounds[16]["indices"]) < 24
    chosen = [json.loads(line)["id"] for line in (
        study_dir / "collection" / "broad.diversity.gpt2-tiny.16.openai_chat.jsonl").open()]
    assert chosen == rounds[16]["prompt_ids"]
    random_ids = {json.loads(line)["id"] for line in lines}
    cached = [json.loads(line) for line in (study_dir / "collection" / "broad.jsonl").open()]
    assert len(cached) == len(random_ids | set(chosen))  # each prompt asked once
    assert runs["imitation/gpt2-tiny/broad/diversity/16"].selection == "diversity"
    assert runs["imitation/gpt2-tiny/broad/16"].selection == "random"
    assert counts["predictions"] == len(statuses) * (6 + 6)  # every output of every run


def test_a_study_records_intervals_and_paired_comparisons(uninterrupted):
    study_dir, stdout = uninterrupted
    with ResultsStore(study_dir, read_only=True) as store:
        metrics = {(m.run_id, m.task, m.metric): m for m in store.metrics("tiny")}
        comparisons = store.comparisons("tiny")
        predictions = store.predictions("tiny", "base/gpt2-tiny", "demo_facts_known")
    accuracy = metrics["base/gpt2-tiny", "demo_facts_known", "fact_accuracy"]
    assert (accuracy.method, accuracy.n) == ("wilson", 6)
    hits = round(accuracy.value * 6 / 100)
    assert (accuracy.low, accuracy.high) == pytest.approx(intervals.wilson(hits, 6))
    pearson = metrics["target/demo-target", "demo_style", "length_pearson"]
    assert pearson.method == "bootstrap" and pearson.n == 6
    # Predictions are stored whole, in record order, and re-score to the recorded value.
    records = registry.records("demo_facts_known", "validation")[:6]
    assert [p.example_id for p in predictions] == [str(r["id"]) for r in records]
    rescored = evaluation.score_predictions("demo_facts_known", records,
                                            [p.output for p in predictions])
    assert rescored["fact_accuracy"].value == pytest.approx(accuracy.value)
    # Each imitation run against its base, and each diversity run against random data of the
    # same amount, on every headline metric (one source: no cross-source).
    headline = (("demo_facts_known", "fact_accuracy"), ("demo_style", "list_when_target_lists"),
                ("demo_style", "length_pearson"))
    pairs = [(f"imitation/gpt2-tiny/broad/{where}{amount}", "base/gpt2-tiny")
             for amount in (8, 16) for where in ("", "diversity/")]
    pairs += [(f"imitation/gpt2-tiny/broad/diversity/{amount}", f"imitation/gpt2-tiny/broad/{amount}")
              for amount in (8, 16)]
    assert {(c.run_id, c.baseline_run_id, c.task, c.metric) for c in comparisons} == {
        (run, baseline, task, metric) for run, baseline in pairs for task, metric in headline}
    for c in comparisons:
        if c.metric == "fact_accuracy":
            run, base = (metrics[r, c.task, c.metric].value for r in (c.run_id, c.baseline_run_id))
            assert c.difference == pytest.approx(run - base)
    assert "comparisons: 18 paired" in stdout
    report = (study_dir / "report" / "report.md").read_text()
    assert re.search(r"\| \d+\.\d \(\d+\.\d-\d+\.\d\) \|", report)  # value (low-high) cells
    assert "imitation-versus-base differences are significant" in report
    assert "## Paired comparisons" in report


@pytest.mark.scale  # a study SIGKILLed and restarted in subprocesses: about a minute
def test_a_killed_study_resumes_to_the_same_results_without_duplicates(
        tmp_path, uninterrupted, demo_vocabulary):
    study_dir = tmp_path / "killed"
    database = study_dir / "results.sqlite"
    process = subprocess.Popen(_command(study_dir, demo_vocabulary, "--yes", "--no-report"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=_environment(), cwd=ROOT)
    deadline = time.monotonic() + 300
    try:  # kill it once the base model is done and the first imitation run has begun
        while time.monotonic() < deadline and process.poll() is None:
            if statuses_so_far(database).get("imitation/gpt2-tiny/broad/8") == "running":
                break
            time.sleep(0.05)
        assert process.poll() is None, "the study finished before it could be interrupted"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    _, _, statuses, _ = _results(study_dir)
    assert statuses["base/gpt2-tiny"] == "done"
    assert statuses["imitation/gpt2-tiny/broad/8"] == "running"

    resumed = subprocess.run(_command(study_dir, demo_vocabulary, "--yes", "--no-report"),
                             capture_output=True, text=True, env=_environment(),
                             cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 already done" in resumed.stdout
    assert _results(study_dir) == _results(uninterrupted[0])


@pytest.mark.scale  # a second tiny study in a subprocess: about a minute
def test_two_studies_share_one_database(tmp_path, uninterrupted, shared_database,
                                        demo_vocabulary):
    before = _results(shared_database)
    done = subprocess.run(
        _command(tmp_path / "second", demo_vocabulary, "--yes", "--no-report",
                 "--gin.STUDY_NAME='second'", f"--gin.DATABASE='{shared_database}'"),
        capture_output=True, text=True, env=_environment(), cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _results(shared_database) == before  # the first study's rows are untouched
    second = _results(shared_database, "second")
    assert second[3] == before[3]  # same grid, its own rows
    assert second[0] == before[0]  # same configuration, same numbers
    with ResultsStore(shared_database) as store:
        assert [study.name for study in store.studies()] == ["tiny", "second"]


def test_a_study_above_its_budget_threshold_asks_first(tmp_path, demo_vocabulary):
    done = subprocess.run(_command(tmp_path, demo_vocabulary, "--gin.CONFIRM_ABOVE_USD=0.0"),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=ROOT, timeout=300)
    assert done.returncode == 1
    assert "pass --yes" in done.stdout
    assert not (tmp_path / "results.sqlite").exists()  # nothing ran


def _config(**changes):
    fields = dict(
        name="s", directory="/tmp/s", target={"kind": "function", "name": "t",
                                               "function": "x:y"},
        models=[{"preset": "t5-tiny", "vocabulary": "/v", "base_checkpoint": "/b"}],
        sources=[{"name": "broad", "prompts_task": "demo_broad_prompts", "amounts": [4, 8]}],
        evaluations=[{"task": "demo_style", "kind": "style"}],
        training={"feature_lengths": {"inputs": 8, "targets": 8}, "batch_size": 2,
                  "optimizer": {"name": "adamw", "schedule": {"peak_learning_rate": 1e-3}}},
        budget={"confirm_above_usd": 10.0})
    return study_config.StudyConfig(**{**fields, **changes})


def test_the_plan_covers_the_grid_in_order():
    config = _config(models=[
        {"preset": "t5-tiny", "vocabulary": "/v", "base_checkpoint": "/b"},
        {"preset": "llama-tiny", "vocabulary": "/v", "base_checkpoint": "/b"}])
    ids = [item.run.run_id for item in plan(config)]
    assert ids == ["base/t5-tiny", "base/llama-tiny",
                   "imitation/t5-tiny/broad/4", "imitation/t5-tiny/broad/8",
                   "imitation/llama-tiny/broad/4", "imitation/llama-tiny/broad/8", "target/t"]
    steps = {item.run.run_id: item.steps for item in plan(config)}
    assert steps["imitation/t5-tiny/broad/8"] == 4  # 8 examples, batch 2, one epoch


@pytest.mark.parametrize("changes, message", [
    ({"models": [{"preset": "t5-tiny", "vocabulary": "/v", "base_checkpont": "/b"}]},
     "unknown key.*base_checkpont"),
    ({"models": [{"preset": "t5-tiny", "vocabulary": "/v"}]}, "exactly one of base_checkpoint"),
    ({"models": [{"preset": "t5-tiyn", "vocabulary": "/v", "base_checkpoint": "/b"}]},
     "did you mean t5-tiny"),
    ({"sources": [{"name": "b", "prompts_task": "x", "amounts": [8, 4]}]}, "increasing"),
    ({"sources": [{"name": "b", "prompts_task": "x", "file": "y", "amounts": [4]}]},
     "exactly one of prompts_task"),
    ({"evaluations": [{"task": "demo_style", "kind": "vibes"}]}, "kind must be one of"),
    ({"target": {"kind": "function"}}, "target needs 'kind' and 'name'"),
    ({"training": {"feature_lengths": {"inputs": 8, "targets": 8}, "batch_size": 2,
                   "trim_padding": "yes",
                   "optimizer": {"name": "adamw", "schedule": {"peak_learning_rate": 1e-3}}}},
     "training.trim_padding must be True or False"),
])
def test_configuration_errors_name_the_field(changes, message):
    with pytest.raises((ValueError, KeyError), match=message):
        _config(**changes)


def test_confirmation_gate():
    config = _config()
    confirm(config, 5.0, yes=False)  # under the threshold: no question
    confirm(config, 50.0, yes=True)
    with pytest.raises(StudyDeclined, match="not confirmed"):
        confirm(config, 50.0, yes=False, ask=lambda question: "n")
    confirm(config, 50.0, yes=False, ask=lambda question: "y")
    with pytest.raises(StudyDeclined, match="cost is unknown"):
        confirm(config, None, yes=False, ask=lambda question: "")


def test_the_report_renders_in_chromium_with_every_plot_visible(uninterrupted, chromium):
    study_dir, _ = uninterrupted
    chromium.get((study_dir / "report" / "report.html").as_uri())
    images = chromium.find_elements("css selector", "img")
    assert len(images) >= 4  # one plot per metric, the gap and style-vs-capability plots
    for image in images:
        loaded = chromium.execute_script(
            "const img = arguments[0]; img.scrollIntoView();"
            "return img.complete && img.naturalWidth > 100 && img.naturalHeight > 100 "
            "&& img.getBoundingClientRect().width > 100;", image)
        assert loaded, image.get_attribute("alt")
    headings = [h.text for h in chromium.find_elements("css selector", "h2")]
    assert any("gap" in h.lower() for h in headings) and any("Style" in h for h in headings)


def test_a_pre_collected_file_is_a_data_source_in_its_own_format(tmp_path):
    from arch_compare.imitation.study import StudyRunner
    from arch_compare_tasks import catalogue, registry
    fixture = catalogue.FIXTURES / "imitation" / "sharegpt.json"
    available = len(registry.records("imitation_sharegpt_fixture", "train")) + 1  # + validation
    config = _config(directory=str(tmp_path), sources=[
        {"name": "given", "file": str(fixture), "format": "sharegpt", "amounts": [1, available]},
        {"name": "too_much", "file": str(fixture), "format": "sharegpt",
         "amounts": [available + 1]}],
        target={"kind": "function", "name": "t",
                "function": "arch_compare_tasks.demo_world:target_respond"})
    runner = StudyRunner(config, progress=False, echo=lambda *_: None)
    files = runner.sources.collect()  # nothing to ask the target: files are used as they are
    assert files == {"given": fixture, "too_much": fixture}
    assert not (tmp_path / "collection").exists()
    task = runner.sources.task("given", "random", "t5-tiny", 1, fixture)
    assert len(registry.records(task, "train")) == 1
    assert registry.records(task, "train")[0]["source"] == "sharegpt"
    with pytest.raises(RuntimeError, match=r"data source 'too_much' .*only \d+ exist"):
        runner.sources.task("too_much", "random", "t5-tiny", available + 1, fixture)


def test_a_run_that_does_not_fit_is_refused_before_compute_and_recorded(tmp_path, monkeypatch):
    """Every model run of a study whose device is far too small fails with the budget module's
    MemoryShortfall (recorded, the study goes on); nothing is built or trained."""
    from arch_compare.imitation import plan_memory, preflight
    # Its checkpoint and vocabulary paths do not exist: the inputs are not what is tested here.
    monkeypatch.setattr(preflight, "check",
                        lambda config, **_: preflight.PreflightReport((), (), 0.0))
    from arch_compare.imitation.study import StudyRunner
    config = _config(directory=str(tmp_path), budget={"hardware": "tpu-v4", "chips": 1},
                     target={"kind": "function", "name": "t",
                             "function": "arch_compare_tasks.demo_world:target_respond"},
                     evaluations=[{"task": "demo_style", "kind": "style", "max_examples": 2}])
    runner = StudyRunner(config, progress=False, echo=lambda *_: None)
    runner.devices = plan_memory.Devices(1, 2 ** 20, "a 1 MiB device")
    outcome = runner.run(yes=True)
    assert outcome.failed == ["base/t5-tiny", "imitation/t5-tiny/broad/4",
                              "imitation/t5-tiny/broad/8"]
    with ResultsStore(tmp_path) as store:
        runs = {run.run_id: run for run in store.runs("s")}
    assert runs["imitation/t5-tiny/broad/8"].error.startswith("MemoryShortfall: t5 training")
    assert "evaluation needs" in runs["base/t5-tiny"].error  # only evaluated, never trained
    assert runs["target/t"].status == "done"
    assert not (tmp_path / "runs" / "imitation").exists()  # nothing was trained
