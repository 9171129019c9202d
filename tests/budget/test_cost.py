"""Time, dollars and the hardware catalogue; the LLaMA paper's published GPU-hours as a check."""

import pytest

from arch_compare.budget import (HardwareError, RunSpec, estimate_run, get_chip, load_catalogue,
                                 realised_mfu)
from arch_compare.models import PRESETS

# LLaMA paper (Touvron et al. 2023), table 15: A100-80GB GPU-hours for 1T tokens at 2048 context.
PUBLISHED_A100_HOURS = {"llama-7b": 82_432, "llama-13b": 135_168}


@pytest.mark.parametrize("name", list(PUBLISHED_A100_HOURS))
def test_llama_pretraining_hours_within_a_quarter_of_published(name):
    estimate = estimate_run(RunSpec(name, tokens=1e12, hardware="a100-80gb", chips=2048))
    assert estimate.mfu == 0.45  # the default for decoders on GPUs, not a fitted value
    assert estimate.chip_hours == pytest.approx(PUBLISHED_A100_HOURS[name], rel=0.25)


def test_time_and_cost_follow_from_flops():
    spec = RunSpec("gpt2-xl", examples=1000, input_length=0, target_length=1024,
                   hardware="tpu-v4", chips=8, mfu=0.5)
    estimate = estimate_run(spec)
    chip = get_chip("tpu-v4")
    expected_hours = estimate.train_flops / (8 * 275e12 * 0.5) / 3600
    assert estimate.hours == pytest.approx(expected_hours)
    assert estimate.cost_usd == pytest.approx(expected_hours * 8 * chip.usd_per_chip_hour)
    row = estimate.to_dict()
    for key in ("model", "arch", "params", "train_flops", "inference_flops_per_token",
                "memory_bytes", "hardware", "chips", "hours", "cost_usd", "mfu"):
        assert key in row
    assert row["params"] == 1_557_611_200 and row["mfu_source"] == "given"


def test_tokens_split_by_lengths():
    by_tokens = estimate_run(RunSpec("t5-small", tokens=3e6, input_length=512,
                                     target_length=256))
    by_examples = estimate_run(RunSpec("t5-small", examples=3e6 / 768, input_length=512,
                                       target_length=256))
    assert by_tokens.train_flops == pytest.approx(by_examples.train_flops)


def test_price_unknown_gives_no_dollars():
    estimate = estimate_run(RunSpec("gpt2-small", tokens=1e9, hardware="tpu-v5p", chips=4))
    assert estimate.cost_usd is None and estimate.hours > 0


def test_chips_default_to_the_fewest_that_fit_as_a_power_of_two():
    estimate = estimate_run(RunSpec("llama-13b", tokens=1e9, hardware="a100-40gb", remat=True))
    assert estimate.min_chips is not None and estimate.fits
    assert estimate.chips >= estimate.min_chips and estimate.chips & (estimate.chips - 1) == 0
    assert estimate.chips < 2 * estimate.min_chips


def test_realised_mfu_inverts_the_estimate():
    cfg = PRESETS["llama-7b"]
    chip = get_chip("a100-80gb")
    estimate = estimate_run(RunSpec("llama-7b", tokens=1e9, chips=8, mfu=0.37))
    tokens_per_second = 1e9 / (estimate.hours * 3600)
    assert realised_mfu(cfg, tokens_per_second, 0, 2048, chip, 8) == pytest.approx(0.37)


def test_unknown_chip_lists_known_chips():
    with pytest.raises(HardwareError, match="known chips: tpu-v4, tpu-v5e"):
        RunSpec("gpt2-small", tokens=1e6, hardware="v100")
        estimate_run(RunSpec("gpt2-small", tokens=1e6, hardware="v100"))
    with pytest.raises(HardwareError, match="did you mean 'h100'"):
        get_chip("h10")


def test_malformed_catalogue_names_file_line_and_row(tmp_path):
    path = tmp_path / "hardware.yaml"
    path.write_text("chips:\n  good:\n    platform: gpu\n    peak_bf16_tflops: 100\n"
                    "    hbm_gb: 10\n    hbm_bandwidth_gbs: 100\n    usd_per_chip_hour: null\n"
                    "    source: a\n    date: 2024\n"
                    "  broken:\n    platform: gpu\n    peak_bf16_tflops: -3\n    hbm_gb: 10\n"
                    "    hbm_bandwidth_gbs: 100\n    usd_per_chip_hour: 1\n    source: b\n"
                    "    date: 2024\n")
    with pytest.raises(HardwareError, match=r"hardware.yaml:10: chips.broken: peak_bf16_tflops"):
        load_catalogue(path)
    path.write_text("chips:\n  partial:\n    platform: gpu\n")
    with pytest.raises(HardwareError, match=r":2: chips.partial: missing peak_bf16_tflops"):
        load_catalogue(path)
    path.write_text("chips: [1, 2]\n")
    with pytest.raises(HardwareError, match="top-level 'chips:' mapping"):
        load_catalogue(path)


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="exactly one of tokens or examples"):
        RunSpec("gpt2-small")
    with pytest.raises(ValueError, match="mfu"):
        RunSpec("gpt2-small", tokens=1, mfu=1.5)
    with pytest.raises(ValueError, match="optimizer"):
        RunSpec("gpt2-small", tokens=1, optimizer="sgd")
