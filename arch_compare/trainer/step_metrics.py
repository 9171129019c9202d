"""The asynchronous loop's bookkeeping: each dispatched step's metrics, read on the host a step
later (`StepMetrics`)."""

from __future__ import annotations

import collections
import math
import time
from typing import Callable

import jax


class StepMetrics:
    """Metrics of dispatched steps, read on the host later (each read waits for its step).

    Step time: the wall time between consecutive reads. While steps are queued back to back that
    is the time the devices took per step (the host work of dispatching, logging and preparing
    batches overlaps it); after the queue ran dry (the first step, or after a checkpoint or an
    evaluation) the clock restarts at the next dispatch, so the first step after a start includes
    compilation, as a synchronous loop's would, and checkpoint or evaluation time counts nowhere.
    """

    def __init__(self, on_read: Callable[[int, dict[str, float], float], None],
                 on_diverged: Callable[[int, float], Exception]):
        self._pending: collections.deque = collections.deque()  # (step, device metrics)
        self._on_read, self._on_diverged = on_read, on_diverged
        self._clock = time.perf_counter()

    def before_dispatch(self) -> None:
        if not self._pending:  # the devices are idle: the next interval starts now
            self._clock = time.perf_counter()

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self._pending.append((step, metrics))

    def read_until(self, step: int) -> None:
        """Read, check and report the metrics of every pending step up to `step`."""
        while self._pending and self._pending[0][0] <= step:
            done, metrics = self._pending.popleft()
            metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
            now = time.perf_counter()
            seconds, self._clock = now - self._clock, now
            if not math.isfinite(metrics["loss"]):
                self._pending.clear()
                raise self._on_diverged(done, metrics["loss"])
            self._on_read(done, metrics, seconds)
