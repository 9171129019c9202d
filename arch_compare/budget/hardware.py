"""The hardware catalogue (`budgets/hardware.yaml`): peak throughput, memory and price per chip.

Rows are validated when read; a bad row is reported as `file:line: chips.<name>: problem`, and an
unknown chip name lists the known ones. Users add rows for their own hardware or prices.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from arch_compare.budget.sheets import load_rows

DEFAULT_CATALOGUE = Path(__file__).resolve().parents[2] / "budgets" / "hardware.yaml"
PLATFORMS = ("tpu", "gpu")
NUMBER_FIELDS = ("peak_bf16_tflops", "hbm_gb", "hbm_bandwidth_gbs")


class HardwareError(ValueError):
    """A malformed hardware catalogue or an unknown chip."""


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    platform: str
    peak_bf16_tflops: float
    hbm_gb: float
    hbm_bandwidth_gbs: float
    usd_per_chip_hour: float | None  # None: no verified on-demand price
    source: str
    date: str

    def __post_init__(self):
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, got {self.platform!r}")
        for name in NUMBER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        price = self.usd_per_chip_hour
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))
                                  or price <= 0):
            raise ValueError(f"usd_per_chip_hour must be a positive number or null, got {price!r}")
        if not str(self.source).strip() or not str(self.date).strip():
            raise ValueError("source and date must be given")

    @property
    def peak_flops_per_second(self) -> float:
        return self.peak_bf16_tflops * 1e12

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gb * 1e9


FIELDS = tuple(field.name for field in dataclasses.fields(Chip) if field.name != "name")


def load_catalogue(path: str | Path | None = None) -> dict[str, Chip]:
    """Every chip in the catalogue at `path` (default: the project's `budgets/hardware.yaml`)."""
    path = Path(path) if path is not None else DEFAULT_CATALOGUE
    return load_rows(path, "chips", Chip, fields=FIELDS, required=FIELDS, error=HardwareError)


def get_chip(name: str, catalogue: dict[str, Chip] | None = None) -> Chip:
    """The chip called `name`; an unknown name lists the known chips."""
    catalogue = load_catalogue() if catalogue is None else catalogue
    if name not in catalogue:
        close = difflib.get_close_matches(name, catalogue, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise HardwareError(f"unknown chip {name!r}; {hint}known chips: {', '.join(catalogue)}")
    return catalogue[name]
