"""The hosts of a multi-host study: one writer (process 0), barriers, and agreement.

Every process of a study walks the same plan in lockstep; these are the points where they meet.
With one process every call is a no-op (or returns its own answer).
"""

from __future__ import annotations

import jax
import numpy as np


class Processes:
    """The study's view of the hosts: one writer (process 0), barriers, and agreement."""

    def __init__(self):
        self.count = jax.process_count()
        self.index = jax.process_index()

    @property
    def writer(self) -> bool:
        """Whether this process calls the target and writes the study's files."""
        return self.index == 0

    def barrier(self, name: str) -> None:
        if self.count > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)

    def from_writer(self, values: np.ndarray) -> np.ndarray:
        """Process 0's `values` on every process (the same shape and dtype everywhere)."""
        if self.count == 1:
            return values
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.broadcast_one_to_all(values))

    def failed_anywhere(self, failed: bool) -> list[int]:
        """The processes on which a step failed (every process calls this, in lockstep)."""
        if self.count == 1:
            return [0] if failed else []
        from jax.experimental import multihost_utils
        flags = np.asarray(multihost_utils.process_allgather(np.int32(failed)))
        return [int(i) for i in np.flatnonzero(flags.reshape(-1))]
