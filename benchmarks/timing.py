"""Timing on a shared CPU machine, for every benchmark script: the standard library only, so the
MaxText peer's own virtual environment (without torch or this package) imports it too."""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from typing import Callable

Step = Callable[[], None]


def _busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has spent busy since boot (Linux /proc/stat;
    NaN elsewhere, which makes the `others` column NaN rather than wrong)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()  # this process, all its threads
    return times.user + times.system


def others_load(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over the next `seconds` (we sleep meanwhile)."""
    busy = _busy_cpu_seconds()
    time.sleep(seconds)
    return (_busy_cpu_seconds() - busy) / seconds


QUIET_LOAD = 0.1  # cores; what "quiet" means for --wait-quiet
QUIET_SECONDS = 3  # consecutive quiet seconds needed
LOADED = 0.25  # cores used by others while a row was timed above which the run warns


def wait_until_quiet(limit: float) -> float:
    """Sleep until other processes have used under QUIET_LOAD cores for QUIET_SECONDS in a row,
    or `limit` seconds have passed; returns the seconds waited. On a shared machine a second
    process on one core slows both frameworks, and torch's OpenMP threads far more (see
    README.md)."""
    began, quiet = time.perf_counter(), 0
    while quiet < QUIET_SECONDS and time.perf_counter() - began < limit:
        load = others_load()
        quiet = quiet + 1 if load < QUIET_LOAD or math.isnan(load) else 0
    return time.perf_counter() - began


@dataclasses.dataclass(frozen=True)
class Timing:
    seconds: tuple[float, ...]  # the timed steps, warm-up excluded
    others: float  # cores kept busy by OTHER processes while they ran (the machine is shared)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the timed steps: how noisy this row was."""
        return (max(self.seconds) - min(self.seconds)) / self.median

    def __add__(self, other: "Timing") -> "Timing":
        total = sum(self.seconds) + sum(other.seconds)
        others = (self.others * sum(self.seconds) + other.others * sum(other.seconds)) / total
        return Timing(self.seconds + other.seconds, others)


def time_steps(step: Step, warmup: int, steps: int) -> Timing:
    for _ in range(warmup):
        step()
    seconds = []
    busy, own = _busy_cpu_seconds(), _own_cpu_seconds()
    for _ in range(steps):
        began = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - began)
    others = (_busy_cpu_seconds() - busy) - (_own_cpu_seconds() - own)
    return Timing(tuple(seconds), max(others, 0.0) / sum(seconds))


def interleaved(steps: dict[str, Step], warmup: int, total: int, rounds: int) -> dict[str, Timing]:
    """Time each side in turn, `rounds` times, so that both see the same drift in the load of
    this shared machine; one untimed step after each switch lets the thread pools settle."""
    timings: dict[str, Timing] = {}
    for r in range(rounds):
        count = total // rounds + (r < total % rounds)
        for name, step in steps.items():
            timing = time_steps(step, warmup if r == 0 else 1, count)
            timings[name] = timings[name] + timing if name in timings else timing
    return timings
