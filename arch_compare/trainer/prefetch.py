"""Batches prepared on a background thread while the devices run the previous steps.

A thread reads the next batches from the data pipeline and places them on the devices (`place`,
e.g. `jax.make_array_from_process_local_data`) into a small bounded queue, so the training loop's
thread only dispatches steps. `position` counts the batches handed to the loop, not the ones
waiting in the queue: it is what a checkpoint of the state those batches trained must store for
an exact resume.

The thread stops when `close()` is called (the loop does so in a `finally`, so also after an error
or a KeyboardInterrupt), and an error in the thread is raised in the loop by the next `next()`. It
is a daemon thread: a pipeline stuck inside a read cannot keep the interpreter from exiting. Once
the thread has stopped, `close()` also closes the source when it has a `close()`.

`limit` (the batches the loop will take, from `position` on) stops the thread once it has read
them, so it never reads (or places on the devices) a batch nobody uses. Deleting the pipeline's
iterator returns at once because it is read without tf.data's autotuning
(`arch_compare.data.iterators`).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often a blocked put or get looks at the stop flag
JOIN_SECONDS = 30.0


class DataExhausted(RuntimeError):
    """The (endless) pipeline ended: an empty task or split."""


class Prefetcher:
    def __init__(self, batches: Iterator[Any], place: Callable[[Any], Any], depth: int = 2,
                 position: int = 0, name: str = "batch-prefetch",
                 while_waiting: Callable[[], None] = lambda: None, limit: int | None = None):
        # `while_waiting` is called every POLL_SECONDS while next() waits for a batch; it may
        # raise to stop waiting (the loop's Ctrl-C check), since a read can take long.
        if depth <= 0:
            raise ValueError(f"prefetch depth must be positive, got {depth}")
        if limit is not None and limit < 0:
            raise ValueError(f"prefetch limit must be None or >= 0, got {limit}")
        self._limit = limit
        self._source, self._place = batches, place
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._while_waiting = while_waiting
        self.position = position  # batches handed out by next()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        read = 0
        try:
            while not self._stop.is_set() and (self._limit is None or read < self._limit):
                read += 1
                try:
                    rows = next(self._source)
                except StopIteration:
                    raise DataExhausted(f"the data pipeline ended after {self.position} batches "
                                        f"were used and {self._queue.qsize()} queued") from None
                self._put((True, self._place(rows)))
        except BaseException as error:  # handed to the loop's thread, which raises it
            self._put((False, error))

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        while True:
            try:
                ok, value = self._queue.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                self._while_waiting()
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch thread stopped without a batch or an error; "
                                       "was the prefetcher closed, or its limit passed?") from None
        if not ok:
            raise value
        self.position += 1
        return value

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread and drop what it had queued (idempotent)."""
        self._stop.set()
        while True:  # unblock a put in progress
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(JOIN_SECONDS)
        if self._thread.is_alive():
            log.warning("the batch thread is still reading after %.0f s; leaving it (daemon)",
                        JOIN_SECONDS)
            return
        # The source can be closed once the thread is done with it: a tf.data iterator left
        # alive until the interpreter exits can hang the exit (its threads call into Python).
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
