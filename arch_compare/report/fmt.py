"""Number formats shared by the HTML and Markdown reports; `None` always reads "n/a"."""

from __future__ import annotations

import math

NA = "n/a"


def percent(share: float | None) -> str:
    """A share (1.0 = 100%) with one decimal."""
    return NA if share is None else f"{share * 100:.1f}%"


def scientific(value: float | None) -> str:
    """FLOPs: 1.23e18 (no "+" and no leading zeros in the exponent, to keep columns narrow)."""
    if value is None:
        return NA
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def dollars(value: float | None) -> str:
    if value is None:
        return NA
    if 0 < value < 0.005:
        return "<$0.01"  # "$0.00" would read as free
    return f"${value:,.2f}"


def compact(value: float | None) -> str:
    """Counts of parameters or tokens: 950, 12.3k, 1.56M, 7B."""
    if value is None:
        return NA
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def count(value: float | None) -> str:
    return NA if value is None else f"{value:,.0f}"


def amount(value: float | None) -> str:
    """Hours, rates: whole numbers with separators from 100 up, three significant digits below."""
    if value is None:
        return NA
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def duration(hours: float | None) -> str:
    """Seconds for runs under a minute, minutes under an hour, else hours."""
    if hours is None:
        return NA
    seconds = hours * 3600
    if 0 < seconds < 0.1:
        return "<0.1 s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{hours:,.2f} h"


def ratio(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}x"


def metric_formatter(values: list[float | None]):
    """One format for a whole column: 3 decimals for metrics on a 0-1 scale, else 1 decimal.
    The returned function takes an optional 95% interval: `value (low-high)`, or
    `value (low to high)` when a bound is negative (a dash would read as a minus sign)."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    decimals = 3 if known and all(abs(v) <= 1 for v in known) else 1

    def render(value: float | None, interval: tuple[float, float] | None = None) -> str:
        if value is None:
            return NA
        text = f"{value:.{decimals}f}"
        if interval is None:
            return text
        low, high = interval
        joint = " to " if min(low, high) < 0 else "-"
        return f"{text} ({low:.{decimals}f}{joint}{high:.{decimals}f})"

    return render


def signed(value: float | None, decimals: int = 1) -> str:
    """A difference with its sign: +4.2, -0.8."""
    return NA if value is None else f"{value:+.{decimals}f}"
