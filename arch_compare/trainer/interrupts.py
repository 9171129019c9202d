"""Ctrl-C during training: stop at the next safe point, within seconds, leaving a resumable run.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be,
and in a training process that is often somewhere unsafe: inside XLA's compiler (with jax 0.10.2
on CPU the process then dies of a segmentation fault on its way out), inside a checkpoint save or
a metrics write. So while `train` runs, the first Ctrl-C only sets a flag and says what will
happen; the loop looks at the flag between steps and while it waits for a batch, and stops there
with `TrainingInterrupted` (a KeyboardInterrupt, so the command line reports it as an
interruption); a compilation in progress finishes first (seconds for small models). The loop's
`finally` then stops the batch thread and waits for an asynchronous checkpoint already being
written, so the newest checkpoint on disk is whole and a rerun resumes from it. A second Ctrl-C
raises KeyboardInterrupt at once, as Python's handler would (checkpoints are written to a
temporary name and renamed when complete, so even then no half-written checkpoint is taken for a
finished one).

A process started in the background by a non-interactive shell (`cmd &` in a script) ignores
SIGINT from the start; Python then installs no handler, and neither does this module.

The handler is installed only from the main thread and only over Python's default one; it is
restored when training returns.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training between steps; the newest checkpoint is whole."""


class StopRequests:
    """A context manager: Ctrl-C sets `requested`; `check()` raises where stopping is safe."""

    def __init__(self):
        self._requested = threading.Event()
        self._previous = None

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def request(self) -> None:
        """What the first Ctrl-C does (tests call it directly)."""
        self._requested.set()

    def check(self, where: Callable[[], str]) -> None:
        """Raise TrainingInterrupted after a Ctrl-C; `where()` (called only then) says where."""
        if self._requested.is_set():
            message = f"stopped by Ctrl-C {where()}"
            log.warning("%s", message)  # said here too: a caller may report only "interrupted"
            raise TrainingInterrupted(message)

    def _handle(self, signum, frame) -> None:
        if self._requested.is_set():
            raise KeyboardInterrupt  # the second Ctrl-C: at once
        self.request()
        log.warning("Ctrl-C: stopping at the next step boundary (press Ctrl-C again to stop "
                    "at once)")

    def __enter__(self) -> "StopRequests":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
