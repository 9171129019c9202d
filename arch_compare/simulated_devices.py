"""Simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`) that cannot
deadlock their own collectives.

XLA's CPU client runs every simulated device's work on one shared pool of
`max(NPROC or the CPU count, N)` threads, and a collective blocks its thread until every device
of its group arrives. XLA orders a device's collectives only when it schedules them, so a device
can have several in flight at once, each holding a thread. With exactly N threads (any machine
with fewer cores than simulated devices), the devices that are already waiting can hold every
thread while a device they wait for has none: XLA aborts after 40 s ("Termination timeout for
`all reduce RendezvousKey...`"). Seen on a 2-core machine, 8 devices, one DPO step with two
microbatches: 2 of 12 runs with other work on the cores, and 0 of 20 with the pool 32 wide. A
pool several threads per device wide leaves the waiting collectives room; idle threads cost
nothing measurable (that test took 15.0 s with 8 threads and 14.7 to 15.1 s with 32).

Nothing here imports JAX: the pool is sized when JAX first creates its CPU backend, which the
CLI (and a test's subprocess) must precede.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, MutableMapping

# Concurrent collectives a device may hold a thread for, with room to spare: XLA schedules a
# device's collectives in program order, and a step rarely has more than two or three
# independent ones in flight.
THREADS_PER_DEVICE = 4

_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def simulated_device_count(environ: Mapping[str, str] = os.environ) -> int:
    """The number of CPU devices `XLA_FLAGS` asks for (the last setting wins, as in XLA); 1 when
    it asks for none."""
    counts = _DEVICE_COUNT.findall(environ.get("XLA_FLAGS", ""))
    return int(counts[-1]) if counts else 1


def widen_thread_pool(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """Sets `NPROC` (the variable XLA's CPU client sizes its pool from) to
    THREADS_PER_DEVICE threads per simulated device when several are simulated, unless the user
    set it; returns the pool width it set, else None. Call it before JAX creates its backend."""
    devices = simulated_device_count(environ)
    if devices <= 1 or "NPROC" in environ:
        return None
    width = max(os.cpu_count() or 1, THREADS_PER_DEVICE * devices)
    environ["NPROC"] = str(width)
    return width
