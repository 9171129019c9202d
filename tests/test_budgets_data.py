"""The hardware catalogue is complete and every row names its source and date."""

from pathlib import Path

import yaml

CATALOGUE = Path(__file__).resolve().parents[1] / "budgets" / "hardware.yaml"
CHIPS = {"tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e", "a100-40gb", "a100-80gb", "h100", "h200"}
FIELDS = {"platform", "peak_bf16_tflops", "hbm_gb", "hbm_bandwidth_gbs", "usd_per_chip_hour", "source", "date"}


def test_every_chip_has_every_field():
    chips = yaml.safe_load(CATALOGUE.read_text())["chips"]
    assert set(chips) == CHIPS
    for name, row in chips.items():
        assert set(row) == FIELDS, name
        assert row["peak_bf16_tflops"] > 0 and row["hbm_gb"] > 0, name
        assert row["usd_per_chip_hour"] is None or row["usd_per_chip_hour"] > 0, name
        assert row["source"] and row["date"], name
        assert row["platform"] in ("tpu", "gpu"), name
