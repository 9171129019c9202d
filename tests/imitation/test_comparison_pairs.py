"""Which runs the study compares (comparisons.pairs): pure, from Run objects and a StudyConfig."""

from arch_compare.imitation import config as study_config
from arch_compare.imitation.comparisons import pairs
from arch_compare.results import Run

MODELS = ("gpt2-tiny", "t5-tiny")


def _config():
    return study_config.StudyConfig(
        name="s", directory="/tmp/s",
        target={"kind": "function", "name": "t", "function": "x:y"},
        models=[{"preset": m, "vocabulary": "/v", "base_checkpoint": "/b"} for m in MODELS],
        sources=[{"name": "broad", "prompts_task": "demo_broad_prompts", "amounts": [4, 8]},
                 {"name": "local", "prompts_task": "demo_local_prompts", "amounts": [4, 8],
                  "selection": {"strategies": ["random", "uncertainty", "student_first"]}}],
        evaluations=[{"task": "demo_style", "kind": "style"}],
        training={"feature_lengths": {"inputs": 8, "targets": 8}, "batch_size": 2,
                  "optimizer": {"name": "adamw", "schedule": {"peak_learning_rate": 1e-3}}})


def _run(model, source=None, examples=None, selection=None, status="done"):
    if source is None:
        return Run(f"base/{model}", "base", model, "decoder_only", "gpt2", {}, status=status)
    # Ids are deliberately opaque: pairs() must read the fields, never parse the id.
    return Run(f"run-{model}-{source}-{selection}-{examples}", "imitation", model,
               "decoder_only", "gpt2", {}, status=status, data_source=source,
               data_examples=examples, selection=selection)


def _ids(chosen):
    return sorted((run.run_id, baseline.run_id) for run, baseline in chosen)


def test_strategy_runs_are_paired_with_the_random_run_of_the_same_model_source_and_amount():
    runs = [_run(m) for m in MODELS]
    runs += [_run(m, "broad", n) for m in MODELS for n in (4, 8)]
    runs += [_run(m, "local", n, s) for m in MODELS for n in (4, 8)
             for s in ("random", "uncertainty", "student_first")]
    chosen = _ids(pairs(_config(), runs))
    strategy = [(r, b) for r, b in chosen if b.startswith("run-") and "-local-random-" in b]
    assert strategy == sorted(
        (f"run-{m}-local-{s}-{n}", f"run-{m}-local-random-{n}")
        for m in MODELS for n in (4, 8) for s in ("uncertainty", "student_first"))
    # Other source: random against random only (one pair per model and amount, not three).
    across = [(r, b) for r, b in chosen if "-broad-" in b]
    assert across == sorted((f"run-{m}-local-random-{n}", f"run-{m}-broad-None-{n}")
                            for m in MODELS for n in (4, 8))
    # Every imitation run, strategies included, against its base.
    against_base = [r for r, b in chosen if b.startswith("base/")]
    assert sorted(against_base) == sorted(r.run_id for r in runs if r.role == "imitation")
    assert len(chosen) == len(strategy) + len(across) + len(against_base)


def test_a_strategy_run_without_a_finished_random_counterpart_has_no_strategy_pair():
    runs = [_run("gpt2-tiny"),
            _run("gpt2-tiny", "local", 4, "uncertainty"),
            _run("gpt2-tiny", "local", 8, "uncertainty"),
            _run("gpt2-tiny", "local", 8, "random", status="failed"),  # not done
            _run("t5-tiny", "local", 4, "random"),  # another model
            _run("gpt2-tiny", "broad", 4, "random")]  # another source
    chosen = _ids(pairs(_config(), runs))
    assert chosen == sorted([(r.run_id, "base/gpt2-tiny") for r in runs
                             if r.role == "imitation" and r.model == "gpt2-tiny"
                             and r.status == "done"])


def test_a_study_without_strategies_keeps_its_pairs():
    """Runs recorded before selection existed (selection None, read as random)."""
    runs = [_run("gpt2-tiny"), _run("gpt2-tiny", "broad", 4), _run("gpt2-tiny", "local", 4)]
    assert all(r.selection == "random" for r in runs[1:])
    assert _ids(pairs(_config(), runs)) == sorted([
        ("run-gpt2-tiny-broad-None-4", "base/gpt2-tiny"),
        ("run-gpt2-tiny-local-None-4", "base/gpt2-tiny"),
        ("run-gpt2-tiny-local-None-4", "run-gpt2-tiny-broad-None-4")])
