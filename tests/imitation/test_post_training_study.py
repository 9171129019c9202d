"""Post-training as a study stage (`StudyConfig.post_training`): the configuration's errors, the
plan and its price, and one tiny study run in-process (`post_training_study.gin`: gpt2-tiny and
t5-tiny, each cell followed by DPO on checked pairs and rejection sampling judged by the target),
shared by the tests below."""

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from arch_compare.budget.flops import forward_flops
from arch_compare.cli import study as study_cli
from arch_compare.imitation import config as study_config
from arch_compare.imitation import plan as plan_lib
from arch_compare.imitation import study_models
from arch_compare.preference.pairs import read_pairs
from arch_compare.results import ResultsStore
from arch_compare_tasks import demo_world
from tests.imitation import post_training_fixtures as fixtures

STUDY = Path(__file__).with_name("post_training_study.gin")
MODELS = ("gpt2-tiny", "t5-tiny")
DPO = {"name": "dpo", "kind": "dpo", "prompts": fixtures.TASK}


def _config(post_training, **changes):
    fields = dict(
        name="s", directory="/tmp/s", target={"kind": "function", "name": "t", "function": "x:y"},
        models=[{"preset": "gpt2-tiny", "vocabulary": "/v", "base_checkpoint": "/b"}],
        sources=[{"name": "broad", "prompts_task": "demo_broad_prompts", "amounts": [4, 8]},
                 {"name": "chosen", "prompts_task": "demo_local_prompts", "amounts": [4],
                  "selection": {"strategies": ["diversity"]}}],
        evaluations=[{"task": "demo_style", "kind": "style"}],
        training={"feature_lengths": {"inputs": 8, "targets": 8}, "batch_size": 2,
                  "optimizer": {"name": "adamw", "schedule": {"peak_learning_rate": 1e-3}}},
        recipes=[{"name": "pull", "kind": "l2sp", "l2sp_weight": 0.1}])
    return study_config.StudyConfig(**{**fields, **changes}, post_training=post_training)


@pytest.mark.parametrize("entries, message", [
    ([DPO | {"kind": "ppo"}], "post_training 'dpo': kind must be one of dpo, rejection_sampling"),
    ([DPO | {"compare": "vibes"}], "compare must be one of checks, judge"),
    ([DPO | {"temperature": 0}], "temperature must be > 0"),
    ([DPO | {"samples": 1}], "samples must be an integer >= 2"),
    ([DPO | {"kind": "rejection_sampling", "compare": "revise"}], "needs kind 'dpo'"),
    ([DPO | {"label_smoothing": 0.5}], r"label_smoothing must be in \[0, 0.5\)"),
    ([DPO | {"kind": "rejection_sampling", "beta": 0.3}], "belong to kind 'dpo'"),
    ([DPO | {"models": ["gpt2-tiyn"]}], r"models \['gpt2-tiyn'\] are not in the study"),
    ([DPO | {"sources": ["chosen"]}], "post_training 'dpo': selects no cell"),
    ([DPO | {"name": "pull"}], "a recipe's run is labelled 'pull' already"),
    ([DPO, DPO], "names repeat"),
    ([DPO | {"betta": 1}], r"post_training\[0\]: unknown key\(s\) betta"),
])
def test_configuration_errors_name_the_entry(entries, message):
    with pytest.raises(ValueError, match=message):
        _config(entries)


def test_a_task_without_a_checker_is_refused_when_planned():
    config = _config([DPO | {"prompts": "demo_broad_prompts"}])
    with pytest.raises(ValueError, match="post_training 'dpo': task 'demo_broad_prompts' has no "
                                         "answer checker"):
        plan_lib.plan(config)
    # A study without post-training keeps the configuration (and database hash) it had.
    assert "post_training" not in _config([]).to_dict()


@pytest.fixture(scope="module")
def post_config(tmp_path_factory):
    vocabularies = demo_world.write_vocabularies(tmp_path_factory.mktemp("world"))
    directory = tmp_path_factory.mktemp("post")
    return study_cli.study_config([str(STUDY)], [
        f"STUDY_DIR='{directory}'", f"DEMO_BPE='{vocabularies['DEMO_BPE']}'",
        f"DEMO_SENTENCEPIECE_T5='{vocabularies['DEMO_SENTENCEPIECE_T5']}'"])


def _cell(model):
    return f"imitation/{model}/broad/8"


def test_the_plan_puts_post_training_after_its_cell_and_prices_it(post_config):
    planned = plan_lib.plan(post_config)
    assert [p.run.run_id for p in planned] == [
        "base/gpt2-tiny", "base/t5-tiny",
        _cell("gpt2-tiny"), f"{_cell('gpt2-tiny')}/dpo", f"{_cell('gpt2-tiny')}/best",
        f"{_cell('gpt2-tiny')}/revised",
        _cell("t5-tiny"), f"{_cell('t5-tiny')}/dpo", f"{_cell('t5-tiny')}/best",
        "target/judge-target"]
    by_id = {p.run.run_id: p for p in planned}
    estimates = plan_lib.estimates(post_config, planned)
    lengths = post_config.training.feature_lengths
    for model in MODELS:
        dpo, best = by_id[f"{_cell(model)}/dpo"], by_id[f"{_cell(model)}/best"]
        # At most one pair or example per prompt: 8 prompts and 6 (limit), batch 4.
        assert (dpo.steps, best.steps) == (2, 2)
        assert dpo.full_run == best.full_run == _cell(model)
        assert dpo.run.recipe == "dpo" and dpo.run.config["recipe"]["kind"] == "dpo"
        assert dpo.run.config["post_training"]["beta"] == 0.5
        assert dpo.run.config["training"]["optimizer"]["schedule"]["peak_learning_rate"] == 1e-3
        cfg = dpo.model.config
        forward = forward_flops(cfg, lengths["inputs"], lengths["targets"]).total
        sample = forward_flops(cfg, lengths["inputs"], post_config.decode_max_tokens).total
        full = estimates[_cell(model)]["train_flops"]  # 2 steps of 4 sequences, as DPO takes
        work = estimates[f"{_cell(model)}/dpo"]["post_training"]
        assert work == {"prompts": 8, "sampling_flops": pytest.approx(8 * 4 * sample),
                        "reference_flops": pytest.approx(2 * 8 * forward), "target_calls": 0}
        # Two sequences per pair, plus the samples and the reference pass.
        assert estimates[f"{_cell(model)}/dpo"]["train_flops"] == pytest.approx(
            2 * full + work["sampling_flops"] + work["reference_flops"])
        judged = estimates[f"{_cell(model)}/best"]["post_training"]
        assert (judged["target_calls"], judged["reference_flops"]) == (6 * 3 * 2, 0.0)
    revising = estimates[f"{_cell('gpt2-tiny')}/revised"]["post_training"]
    assert (revising["prompts"], revising["target_calls"]) == (4, 4)
    table, _ = plan_lib.budget_table(post_config, estimates, collections=[])
    assert "post-training (5 runs" in table and "76 calls to the target" in table


@pytest.fixture(scope="module")
def post_study(post_config):
    from arch_compare.imitation.study import StudyRunner
    lines = []
    outcome = StudyRunner(post_config, progress=False, echo=lines.append).run(yes=True)
    assert outcome.failed == [], lines
    with ResultsStore(outcome.database, read_only=True) as store:
        runs = {run.run_id: run for run in store.runs("post")}
        comparisons = store.comparisons("post")
    again = StudyRunner(post_config, progress=False, echo=lines.append).run(yes=True)
    return dataclasses.make_dataclass("Study", ["runs", "comparisons", "again", "directory"])(
        runs, comparisons, again, Path(post_config.directory))


@pytest.mark.scale  # the study below: 10 runs of two tiny models, about 1.5 minutes
@pytest.mark.parametrize("model", MODELS)
def test_dpo_trains_on_checked_pairs_from_the_full_runs_weights(post_study, post_config, model):
    run = post_study.runs[f"{_cell(model)}/dpo"]
    assert run.status == "done" and run.recipe == "dpo"
    summary = run.measured["post_training"]
    run_dir = post_study.directory / "runs" / run.run_id
    pairs = read_pairs(run_dir / "pairs.jsonl")
    assert summary["kept"] == len(pairs) >= 1 and summary["prompts"] == 8
    records = {record["prompt"]: record for record in fixtures._records()}
    for pair in pairs:  # chosen passes the task's checker, rejected fails it
        record = records[pair.prompt.turns[-1].text]
        assert fixtures.passes(record, pair.chosen) and not fixtures.passes(record,
                                                                             pair.rejected)
    assert run.measured["steps"] == math.ceil(len(pairs) / post_config.training.batch_size)
    assert (run_dir / "reference_logps.npz").exists()
    # Trained from the full run: its weights moved away from them.
    planned = {p.run.run_id: p for p in plan_lib.plan(post_config)}[run.run_id]
    from arch_compare.models import build_model
    network = build_model(planned.model.config)
    execution = post_config.execution_for(planned.model)
    full = study_models.params_from(post_study.directory / "runs" / _cell(model), network,
                                    execution, "full")
    trained = study_models.params_from(run_dir, network, execution, "dpo")
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(trained)))
    assert 0 < moved < 1


@pytest.mark.scale
@pytest.mark.parametrize("model", MODELS)
def test_rejection_sampling_fine_tunes_on_the_judges_best_answers(post_study, model):
    run = post_study.runs[f"{_cell(model)}/best"]
    assert run.status == "done" and run.recipe == "best"
    summary = run.measured["post_training"]
    run_dir = post_study.directory / "runs" / run.run_id
    examples = [json.loads(line) for line in (run_dir / "examples.jsonl").open()]
    assert summary["kept"] == len(examples) >= 1 and summary["prompts"] == 6
    assert summary["method"] == "best of n by judge"
    # Each prompt's distinct answers judged in both orders, through the cache in the run.
    verdicts = (run_dir / "judge_answers.jsonl").read_text().splitlines()
    assert 0 < len(verdicts) <= 6 * 3 * 2
    assert all(example["messages"][-1]["role"] == "assistant" for example in examples)


@pytest.mark.scale
def test_dpo_on_the_targets_revisions_prefers_each_revision_to_its_answer(post_study):
    run = post_study.runs[f"{_cell('gpt2-tiny')}/revised"]
    assert run.status == "done" and run.measured["post_training"]["method"] == "critique and revise"
    pairs = read_pairs(post_study.directory / "runs" / run.run_id / "pairs.jsonl")
    assert run.measured["post_training"]["kept"] == len(pairs) >= 1
    for pair in pairs:
        assert pair.chosen == fixtures.revision_of(pair.rejected)
    assert run.measured["steps"] == 1  # at most 4 pairs, batch 4


@pytest.mark.scale
def test_post_training_runs_are_compared_with_their_cell_and_resume_as_done(post_study,
                                                                          tmp_path):
    compared = {(c.run_id, c.baseline_run_id) for c in post_study.comparisons}
    labels = [(model, label) for model in MODELS for label in ("dpo", "best")]
    for model, label in labels + [("gpt2-tiny", "revised")]:
        run_id = f"{_cell(model)}/{label}"
        assert (run_id, _cell(model)) in compared
        assert (run_id, f"base/{model}") in compared
    assert post_study.again.failed == [] and post_study.again.skipped == len(post_study.runs)
    # The report lists them with the recipes, by label and kind.
    from arch_compare.report import write_report
    report = write_report(post_study.directory, tmp_path).markdown.read_text()
    assert "dpo (dpo)" in report and "best (rejection_sampling)" in report
