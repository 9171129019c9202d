"""Run an untrusted Python program in a separate, limited process.

Generated code (HumanEval completions, for example) is executed, never imported. Each run gets:

- a fresh temporary working directory (also `HOME` and `TMPDIR`), deleted afterwards;
- a minimal environment, stdin from /dev/null, stdout/stderr captured and cut to their last
  `max_output_bytes` bytes;
- resource limits set in the child with `setrlimit`: CPU seconds, address space, file size, no core
  dumps, and a process count (`RLIMIT_NPROC`, which also counts threads);
- a wall-clock timeout after which the whole process group is killed with SIGKILL;
- an audit hook in the program's interpreter that refuses every `socket.*` event.

How strongly processes and the network are contained depends on what the kernel allows; the best
available isolation is probed once per process (`detect_isolation`):

- `namespaces` (preferred): the program runs under `unshare` in fresh user, network, PID, mount, IPC
  and UTS namespaces. The network namespace has only a down loopback, so no connection is possible
  even from a subprocess that escapes the audit hook. `RLIMIT_NPROC` is counted per user *per user
  namespace*, so the limit covers exactly this sandbox's processes and a fork bomb cannot eat into
  the caller's own process budget. When the namespace's first process exits or is killed, the kernel
  kills every process left in the PID namespace, including ones that called `setsid()`. A fresh
  /proc shows the program only its own processes.
- `process_group` (fallback when user namespaces are disabled): no network namespace (only the audit
  hook, which a subprocess or ctypes can bypass); `RLIMIT_NPROC` counts every process of the sandbox
  user system-wide, so the limit is set to that user's task count at launch plus `max_processes` —
  a fork bomb gets at most that many processes, shared with concurrent sandboxes of the same user;
  cleanup kills the process group, which a process that calls `setsid()` escapes.

The kernel never enforces `RLIMIT_NPROC` for uid 0, and a user namespace mapped onto root keeps
kuid 0. So when the caller is root the sandbox drops to `nobody` (uid/gid 65534) before anything
else; only if that is impossible does it run as root, with a logged warning that the process count
is then unlimited. In every mode, files the program writes with absolute paths into world-writable
directories (`/tmp`, `/dev/shm`) outlive the run; relative paths, `HOME` and `tempfile` land in the
deleted working directory.

Linux only (`setrlimit`, `pidfd_open`, `unshare`). The interpreter is the caller's own when the
sandbox user can run it, else the system `python3` (a virtual environment under a private home
directory is out of `nobody`'s reach); programs should need nothing beyond the standard library.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

from arch_compare.evaluation.supervision import OutputTail, supervise

logger = logging.getLogger(__name__)

WORKDIR_PREFIX = "arch_compare_sandbox_"
NOBODY = "nobody"
NOBODY_ID = 65534  # the conventional uid/gid of `nobody` where /etc/passwd lacks it

# Exit codes the bootstrap uses for its own verdicts; 128 + N means "killed by signal N" (shell
# convention), because the namespace's first process cannot re-raise a signal on itself.
_EXIT_RESOURCE = 120
_EXIT_SETUP = 121
_SIGNAL_BASE = 128
# Signals the kernel sends for a limit: CPU soft/hard limit, file size limit; SIGKILL is also what
# the OOM killer sends.
_RESOURCE_SIGNALS = (signal.SIGXCPU, signal.SIGKILL, signal.SIGXFSZ)


class Status(str, enum.Enum):
    PASSED = "passed"  # exited with status 0
    FAILED = "failed"  # non-zero exit, uncaught exception, crash
    TIMEOUT = "timeout"  # still running at the wall-clock limit; killed
    RESOURCE_LIMIT = "resource_limit"  # hit the CPU, memory, file-size or process limit
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself could not start the program


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits for one run. `max_processes` counts processes and threads, the program included."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 2**30  # address space (RLIMIT_AS)
    max_processes: int = 32
    max_output_bytes: int = 64 * 1024  # per stream; the tail is kept
    max_file_bytes: int = 16 * 2**20  # largest file the program may write (RLIMIT_FSIZE)

    def __post_init__(self):
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                or not self.timeout_s > 0:
            raise ValueError(f"SandboxLimits.timeout_s must be a positive number of seconds, "
                             f"got {self.timeout_s!r}")
        for name in ("cpu_s", "memory_bytes", "max_processes", "max_output_bytes",
                     "max_file_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    status: Status
    exit_code: int | None  # as returned to the sandbox; None when the program never started
    duration_s: float  # wall-clock, launch to cleanup
    stdout: str  # last max_output_bytes bytes, decoded with replacement
    stderr: str
    output_truncated: bool  # True when either stream was longer than max_output_bytes
    detail: str  # one line saying why, e.g. the exception's last traceback line
    workdir: str  # where the program ran; already deleted when the caller sees this
    isolation: str  # the mode used: "namespaces" or "process_group"

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


@dataclasses.dataclass(frozen=True)
class _Mode:
    wrapper: tuple[str, ...]  # argv placed before the interpreter
    contains_processes: bool  # every process dies with the sandbox, even after setsid()
    isolates_network: bool  # a kernel-level barrier, not just the audit hook
    # (max_processes, uid) -> the RLIMIT_NPROC value to set in the program's process
    process_limit: Callable[[int, int], int]


def _namespaced_process_limit(max_processes: int, uid: int) -> int:
    # Counted inside the fresh user namespace only: the program and its children plus two
    # processes of ours, `unshare` (which entered the namespace) and the bootstrap init.
    return max_processes + 2


def _shared_process_limit(max_processes: int, uid: int) -> int:
    # Counted over every task of the user: leave `max_processes` of headroom above what the user
    # runs now, plus one for the bootstrap init.
    return _count_tasks(uid) + 1 + max_processes


MODES: dict[str, _Mode] = {
    "namespaces": _Mode(
        wrapper=("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork",
                 "--kill-child", "--mount-proc", "--ipc", "--uts", "--"),
        contains_processes=True, isolates_network=True,
        process_limit=_namespaced_process_limit),
    "process_group": _Mode(wrapper=(), contains_processes=False, isolates_network=False,
                           process_limit=_shared_process_limit),
}


@dataclasses.dataclass(frozen=True)
class Isolation:
    """How programs are started: the mode, the interpreter and the user to run as."""

    mode: str
    interpreter: str
    uid: int | None = None  # drop to this uid/gid before starting (root only); None: stay
    gid: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Isolation.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (self.uid is None) != (self.gid is None):
            raise ValueError("Isolation.uid and Isolation.gid must be given together")

    @property
    def contains_processes(self) -> bool:
        return MODES[self.mode].contains_processes

    @property
    def isolates_network(self) -> bool:
        return MODES[self.mode].isolates_network

    @property
    def enforces_process_limit(self) -> bool:
        # RLIMIT_NPROC is never enforced for processes whose kernel uid is root.
        return (self.uid if self.uid is not None else os.getuid()) != 0


# The program side, run as `python -I -B -u -c _BOOTSTRAP CONFIG_JSON` in the working directory.
# It forks once: the parent is a minimal init (in `namespaces` mode, PID 1 of the new PID
# namespace, which ignores signals it has no handler for and inherits every orphan), the child sets
# the limits and runs the program, exiting through SystemExit so that Python's normal shutdown
# (thread joins, atexit, flushing) happens. Only the standard library is used.
_BOOTSTRAP = r'''
import errno, json, os, resource, runpy, sys, traceback

config = json.loads(sys.argv[1])

def set_limits():
    for name, value in config["rlimits"].items():
        kind = getattr(resource, name)
        _, hard = resource.getrlimit(kind)
        # An existing hard limit can only be lowered; keep it when it is already stricter.
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        soft = value
        if name == "RLIMIT_CPU" and hard == resource.RLIM_INFINITY:
            # SIGXCPU at the soft limit, SIGKILL one second later if the program ignores it.
            value += 1
        resource.setrlimit(kind, (soft, value))

def deny_network(event, args):
    if event.startswith("socket."):
        raise PermissionError(f"network access is disabled in the sandbox ({event})")

def run_program():
    try:
        set_limits()
        sys.addaudithook(deny_network)
    except Exception:
        traceback.print_exc()
        return config["exit_setup"]
    message = None
    try:
        runpy.run_path(config["program"], run_name="__main__")
        return 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        message = str(stop.code)
        code = 1
    except MemoryError:
        # Print after the except block: by then the program's objects are freed.
        message = "MemoryError: the program exceeded its memory limit"
        code = config["exit_resource"]
    except OSError as error:
        traceback.print_exc()
        code = config["exit_resource"] if error.errno in (
            errno.EAGAIN, errno.ENOMEM, errno.EFBIG) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    if message is not None:
        print(message, file=sys.stderr)
    return code

child = os.fork()
if child == 0:
    sys.exit(run_program())
while True:
    # Reap everything (orphans included) until the program itself has finished.
    pid, status = os.wait()
    if pid == child:
        break
if os.WIFSIGNALED(status):
    os._exit(config["signal_base"] + os.WTERMSIG(status))
os._exit(os.waitstatus_to_exitcode(status))
'''


def run_program(source: str, limits: SandboxLimits = SandboxLimits(),
                isolation: Isolation | None = None) -> SandboxResult:
    """Run `source` as `__main__` in a fresh sandbox and report how it ended."""
    isolation = isolation or detect_isolation()
    workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX)
    try:
        return _run_in(workdir, source, limits, isolation)
    finally:
        _remove_tree(workdir)


@functools.cache
def available_isolations() -> tuple[Isolation, ...]:
    """One working isolation per mode, strongest first (probed once per process).

    All of them run as the same user: `nobody` when the caller is root and dropping privileges
    works, otherwise the caller.
    """
    for uid, gid in _users():
        found = []
        for mode in MODES:
            for interpreter in _interpreters():
                candidate = Isolation(mode, interpreter, uid, gid)
                result = _probe(candidate)
                if result.passed and result.stdout == "ok\n":
                    found.append(candidate)
                    break
                logger.debug("sandbox: %s unavailable: %s", candidate, result.detail)
        if found:
            return tuple(found)
    return ()


def detect_isolation() -> Isolation:
    """The strongest isolation that works here; logs a warning when it is a weaker one."""
    found = available_isolations()
    if not found:
        raise RuntimeError("sandbox: no Python interpreter could be started in any isolation "
                           f"mode (tried {', '.join(_interpreters())})")
    best = found[0]
    if not best.contains_processes:
        _warn_once("sandbox: user namespaces unavailable; using a process group (no network "
                   "namespace, process limit shared with the user's other processes)")
    if not best.enforces_process_limit:
        _warn_once("sandbox: running untrusted code as root; RLIMIT_NPROC is not enforced, so "
                   "fork bombs are stopped only by the timeout")
    return best


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def _users() -> list[tuple[int | None, int | None]]:
    # Root is tried last: the kernel does not enforce RLIMIT_NPROC for it.
    return [_nobody(), (None, None)] if os.geteuid() == 0 else [(None, None)]


def _interpreters() -> list[str]:
    # The project's own interpreter first; a system one when the sandbox user cannot reach it
    # (a virtual environment under a private home directory, for example). One path per file.
    system_path = "/usr/local/bin:/usr/bin:/bin"
    found = [sys.executable, getattr(sys, "_base_executable", None),
             shutil.which(f"python3.{sys.version_info.minor}", path=system_path),
             shutil.which("python3", path=system_path)]
    by_file = {}
    for path in found:
        if path and os.path.exists(path):
            by_file.setdefault(os.path.realpath(path), path)
    return list(by_file.values())


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(NOBODY)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return NOBODY_ID, NOBODY_ID


def _probe(candidate: Isolation) -> SandboxResult:
    limits = SandboxLimits(timeout_s=10.0, cpu_s=5, max_processes=4)
    workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX)
    try:
        return _run_in(workdir, "print('ok')\n", limits, candidate)
    finally:
        _remove_tree(workdir)


def _run_in(workdir: str, source: str, limits: SandboxLimits,
            isolation: Isolation) -> SandboxResult:
    program = os.path.join(workdir, "program.py")
    with open(program, "w", encoding="utf-8") as handle:
        handle.write(source)
    if isolation.uid is not None:
        for path in (workdir, program):
            os.chown(path, isolation.uid, isolation.gid)
    uid = isolation.uid if isolation.uid is not None else os.getuid()
    config = {
        "program": program,
        "rlimits": {
            "RLIMIT_CPU": limits.cpu_s,
            "RLIMIT_AS": limits.memory_bytes,
            "RLIMIT_FSIZE": limits.max_file_bytes,
            "RLIMIT_CORE": 0,
            "RLIMIT_NPROC": MODES[isolation.mode].process_limit(limits.max_processes, uid),
        },
        "exit_resource": _EXIT_RESOURCE, "exit_setup": _EXIT_SETUP, "signal_base": _SIGNAL_BASE,
    }
    argv = [*MODES[isolation.mode].wrapper, isolation.interpreter, "-I", "-B", "-u",
            "-c", _BOOTSTRAP, json.dumps(config)]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    user = {} if isolation.uid is None else {
        "user": isolation.uid, "group": isolation.gid, "extra_groups": []}
    start = time.monotonic()
    try:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, **user)
    except (OSError, subprocess.SubprocessError) as error:
        return SandboxResult(Status.SANDBOX_ERROR, None, time.monotonic() - start, "", "", False,
                             f"could not start the sandbox: {error}", workdir, isolation.mode)
    with process:
        stdout, stderr = OutputTail(limits.max_output_bytes), OutputTail(limits.max_output_bytes)
        timed_out = supervise(process, {process.stdout: stdout, process.stderr: stderr},
                               start + limits.timeout_s)
        exit_code = process.wait()
    duration = time.monotonic() - start
    status, detail = _classify(exit_code, timed_out, stderr.text(), limits)
    return SandboxResult(status, exit_code, duration, stdout.text(), stderr.text(),
                         stdout.truncated or stderr.truncated, detail, workdir, isolation.mode)


# "OSError: ..." / "BlockingIOError: [Errno 11] ..." at the start of a traceback's last line.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


def _classify(exit_code: int, timed_out: bool, stderr: str,
              limits: SandboxLimits) -> tuple[Status, str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    # Several processes (a fork bomb's) may interleave their tracebacks: report the last
    # exception line rather than whatever frame line happened to come last.
    last_line = next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)),
                     lines[-1] if lines else "")
    if timed_out:
        return Status.TIMEOUT, f"still running after {limits.timeout_s:g} s; killed"
    if exit_code == 0:
        return Status.PASSED, ""
    if exit_code == _EXIT_RESOURCE:
        return Status.RESOURCE_LIMIT, last_line
    if exit_code == _EXIT_SETUP:
        return Status.SANDBOX_ERROR, f"could not apply the limits: {last_line}"
    if exit_code > _SIGNAL_BASE and exit_code - _SIGNAL_BASE in _RESOURCE_SIGNALS:
        name = signal.Signals(exit_code - _SIGNAL_BASE).name
        return Status.RESOURCE_LIMIT, f"killed by {name} (CPU, file-size or memory limit)"
    if exit_code > _SIGNAL_BASE and exit_code - _SIGNAL_BASE < signal.NSIG:
        return Status.FAILED, f"killed by {signal.Signals(exit_code - _SIGNAL_BASE).name}"
    if exit_code < 0:
        return Status.FAILED, f"sandbox killed by {signal.Signals(-exit_code).name}"
    return Status.FAILED, last_line or f"exit code {exit_code}"


def _count_tasks(uid: int) -> int:
    """Tasks (processes and threads) whose real uid is `uid`, as RLIMIT_NPROC counts them."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue  # exited while we looked
        if int(fields["Uid"].split()[0]) == uid:
            total += int(fields["Threads"])
    return total


def _remove_tree(path: str) -> None:
    def make_writable_and_retry(function, failed_path, _):
        # The program may have removed write permission from a directory it created.
        os.chmod(os.path.dirname(failed_path), 0o700)
        function(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)
