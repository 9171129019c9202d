"""Study grids: every run priced, most expensive first, evaluations counted, calibration."""


import pytest

from arch_compare.budget import (Evaluation, Setup, StudyGrid, calibrate, estimate_run,
                                 estimate_study)
from arch_compare.budget.flops import forward_flops
from arch_compare.models import PRESETS

GRID = StudyGrid(models=("gpt2-small", "t5-small"), data_tokens=(1e6, 1e7),
                 setups=(("tpu-v4", 4), "a100-80gb"), input_length=256, target_length=256,
                 evaluations=({"name": "mmlu", "examples": 100, "input_length": 512,
                               "target_length": 1},))


def test_grid_is_the_full_product_sorted_by_cost():
    study = estimate_study(GRID)
    assert len(study.runs) == 2 * 2 * 2
    hours = [run.chip_hours for run in study.runs]
    assert hours == sorted(hours, reverse=True)
    assert {(r.spec.model, r.spec.tokens, r.chip.name) for r in study.runs} == {
        (m, t, h) for m in GRID.models for t in GRID.data_tokens for h in ("tpu-v4", "a100-80gb")}
    assert GRID.setups == (Setup("tpu-v4", 4), Setup("a100-80gb"))


def test_evaluations_are_added_to_each_run():
    study = estimate_study(GRID)
    expected = 100 * forward_flops(PRESETS["t5-small"], 512, 1).total
    assert study.evaluation_flops["t5-small"] == pytest.approx(expected)
    run = next(r for r in study.runs if r.spec.model == "t5-small")
    alone = estimate_run(run.spec)
    assert run.train_flops == alone.train_flops
    assert run.total_flops == pytest.approx(alone.train_flops + expected)
    total = study.total_cost_usd("tpu-v4")
    assert total == pytest.approx(sum(r.cost_usd for r in study.runs if r.chip.name == "tpu-v4"))


def test_calibration_reprices_only_the_measured_hardware():
    before = estimate_study(GRID)
    measured = estimate_run(next(r.spec for r in before.runs
                                 if r.spec.model == "gpt2-small" and r.chip.name == "tpu-v4"))
    # a run that went at half the default MFU's speed
    tokens_per_second = measured.spec.tokens / (measured.hours * 3600) / 2
    mfu, after = calibrate(GRID, "gpt2-small", "tpu-v4", 4, tokens_per_second)
    assert mfu == pytest.approx(measured.mfu / 2)
    for old, new in zip(sorted(before.runs, key=id_of), sorted(after.runs, key=id_of)):
        factor = 2 if new.chip.name == "tpu-v4" else 1
        assert new.chip_hours == pytest.approx(factor * old.chip_hours)


def id_of(run):
    return (run.spec.model, run.spec.tokens, run.chip.name)


def test_bad_grids_are_refused():
    with pytest.raises(KeyError, match="unknown preset 'llama-8b'"):
        StudyGrid(models=("llama-8b",), data_tokens=(1,), setups=("h100",))
    with pytest.raises(ValueError, match="at least one"):
        StudyGrid(models=("gpt2-small",), data_tokens=(), setups=("h100",))
    with pytest.raises(ValueError, match="evaluation 'x'"):
        Evaluation("x", examples=0, input_length=1, target_length=1)
