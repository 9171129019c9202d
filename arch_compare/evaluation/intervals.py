"""95% intervals for the numbers a study reports.

A metric that is a share of examples (accuracy, pass rate, "lists when the target lists") is
returned by its metric function as a `Proportion`: a float percentage that remembers how many of
how many examples it counts, so its interval is Wilson's score interval without re-scoring.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


class Proportion(float):
    """`100 * hits / n` as a float (NaN when n is 0) that keeps `hits` and `n`.

    Everything that takes a float takes it; `float(p)` drops the counts.
    """

    hits: int
    n: int

    def __new__(cls, hits: int, n: int) -> "Proportion":
        if n < 0 or hits < 0 or hits > n:
            raise ValueError(f"a proportion needs 0 <= hits <= n, got {hits} of {n}")
        value = super().__new__(cls, 100.0 * hits / n if n else math.nan)
        value.hits, value.n = int(hits), int(n)
        return value

    def __reduce__(self):
        return Proportion, (self.hits, self.n)

    def __repr__(self) -> str:
        return f"Proportion({self.hits}/{self.n} = {float(self):.1f}%)"

    __str__ = float.__repr__  # printed, it is the number


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for `hits` of `n`, in percent; (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)
