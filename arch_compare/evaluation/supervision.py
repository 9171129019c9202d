"""Watching a sandboxed process: bounded output capture, a deadline, and a clean kill.

`supervise` reads the program's pipes until its leader exits or the deadline passes (a pidfd
says when it exits, so nothing polls), then kills the whole process group and drains what the
pipes still hold. `OutputTail` keeps only the last bytes of each stream.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time

_KILL_GRACE_S = 5.0  # how long to wait for killed processes to close their pipes
_READ_CHUNK = 65536


class OutputTail:
    """The last `limit` bytes written to a stream."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[:len(self.data) - self.limit]
            self.truncated = True

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def supervise(process: subprocess.Popen, tails: dict, deadline: float) -> bool:
    """Collect output until the program ends or the deadline passes; kill what is left.

    Returns whether the deadline passed. The process group is killed while its leader is still
    unreaped (a zombie at worst), so its id cannot have been reused by an unrelated group.
    """
    selector = selectors.DefaultSelector()
    for pipe in tails:
        selector.register(pipe, selectors.EVENT_READ)
    exit_fd = os.pidfd_open(process.pid)  # becomes readable when the leader exits
    selector.register(exit_fd, selectors.EVENT_READ)
    timed_out = False
    try:
        try:
            while not _has_exited(process.pid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                _read_ready(selector, tails, remaining)
        finally:
            # Runs on every path: ends the program at the deadline, stray children after a normal
            # exit (`process_group` mode; a finished namespace is already empty), and everything
            # when the caller is interrupted.
            _kill_group(process.pid)
        selector.unregister(exit_fd)
        grace = time.monotonic() + _KILL_GRACE_S
        while selector.get_map() and time.monotonic() < grace:
            _read_ready(selector, tails, grace - time.monotonic())
    finally:
        selector.close()
        os.close(exit_fd)
    return timed_out


def _read_ready(selector: selectors.BaseSelector, tails: dict, timeout: float) -> None:
    for key, _ in selector.select(timeout):
        if key.fileobj not in tails:
            continue  # the exit notification; the caller's loop condition handles it
        chunk = os.read(key.fileobj.fileno(), _READ_CHUNK)
        if chunk:
            tails[key.fileobj].add(chunk)
        else:
            selector.unregister(key.fileobj)


def _has_exited(pid: int) -> bool:
    # WNOWAIT leaves the zombie in place so the group id stays reserved until we kill the group.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
