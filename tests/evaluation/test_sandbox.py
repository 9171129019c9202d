import os
import socket

import pytest

from arch_compare.evaluation.sandbox import (Isolation, SandboxLimits, Status,
                                             available_isolations, detect_isolation, run_program)

# Every isolation mode that works on this machine (user namespaces and the process-group
# fallback here); most behaviour must hold in each of them.
ISOLATIONS = available_isolations()
CONTAINED = [iso for iso in ISOLATIONS if iso.contains_processes]
FAST = SandboxLimits(timeout_s=5.0, cpu_s=5, memory_bytes=256 * 2**20, max_processes=8,
                     max_output_bytes=4096)


def mode_id(isolation: Isolation) -> str:
    return isolation.mode


def processes_mentioning(marker: str) -> list[str]:
    """A process listing: every live process whose command line contains `marker`.

    Zombies have an empty command line, so processes that are dead but not yet reaped by the
    machine's init do not count.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue  # exited while we looked
        if marker.encode() in command:
            found.append(f"{entry}: {command[:80]!r}")
    return found


@pytest.mark.parametrize("field, value", [
    ("timeout_s", 0), ("timeout_s", True), ("cpu_s", 1.5), ("memory_bytes", -1),
    ("max_processes", 0), ("max_output_bytes", "big"), ("max_file_bytes", 0),
])
def test_invalid_limits_name_their_field(field, value):
    with pytest.raises(ValueError, match=f"SandboxLimits.{field}"):
        SandboxLimits(**{field: value})


def test_unknown_isolation_mode_is_refused():
    with pytest.raises(ValueError, match="Isolation.mode"):
        Isolation(mode="chroot", interpreter="python3")


def test_the_strongest_working_isolation_is_chosen():
    assert ISOLATIONS and detect_isolation() == ISOLATIONS[0]
    strength = [iso.contains_processes for iso in ISOLATIONS]
    assert strength == sorted(strength, reverse=True)
    # Root is dropped to an unprivileged user, so RLIMIT_NPROC applies.
    assert detect_isolation().enforces_process_limit


def test_output_and_exit_status_are_reported():
    ok = run_program("print('hello')\n", FAST)
    assert (ok.status, ok.exit_code, ok.stdout, ok.output_truncated) == (
        Status.PASSED, 0, "hello\n", False)
    crash = run_program("def f():\n    raise ValueError('boom')\nf()\n", FAST)
    assert crash.status is Status.FAILED and crash.exit_code == 1
    assert crash.detail == "ValueError: boom"
    assert 'program.py", line 2' in crash.stderr
    assert run_program("import sys\nsys.exit(3)\n", FAST).exit_code == 3


def test_output_is_cut_to_its_tail():
    limits = SandboxLimits(max_output_bytes=1000)
    result = run_program("print('x' * 100_000)\nprint('last line')\n", limits)
    assert result.passed and result.output_truncated
    assert len(result.stdout.encode()) == 1000
    assert result.stdout.endswith("x\nlast line\n")


def test_environment_is_minimal_and_stdin_is_empty(monkeypatch):
    monkeypatch.setenv("ARCH_COMPARE_SECRET_TOKEN", "do-not-leak")
    result = run_program("import os\nprint(sorted(os.environ))\n", FAST)
    assert result.passed and "ARCH_COMPARE_SECRET_TOKEN" not in result.stdout
    reading = run_program("input()\n", FAST)
    assert reading.status is Status.FAILED and reading.detail.startswith("EOFError")


def test_files_written_by_the_program_are_deleted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = ("import os, tempfile\n"
              "open('result.txt', 'w').write('data')\n"
              "open(os.path.join(os.environ['HOME'], 'home.txt'), 'w').write('data')\n"
              "handle, path = tempfile.mkstemp()\n"
              "print(os.getcwd())\nprint(path)\n")
    result = run_program(source, FAST)
    assert result.passed
    cwd, temp_file = result.stdout.split()
    # The program saw the sandbox directory as its cwd and temp dir; none of it is left.
    assert os.path.realpath(cwd) == os.path.realpath(result.workdir)
    assert temp_file.startswith(cwd)
    assert not os.path.exists(result.workdir)
    assert not (tmp_path / "result.txt").exists()


@pytest.mark.parametrize("isolation", ISOLATIONS, ids=mode_id)
def test_wall_clock_timeout_kills_the_program(isolation):
    limits = SandboxLimits(timeout_s=1.0, cpu_s=30, max_processes=8)
    result = run_program("import time\ntime.sleep(60)\n", limits, isolation)
    assert result.status is Status.TIMEOUT
    assert 1.0 <= result.duration_s < 2.5
    assert processes_mentioning(result.workdir) == []


@pytest.mark.parametrize("isolation", ISOLATIONS, ids=mode_id)
def test_cpu_limit_stops_a_busy_loop(isolation):
    limits = SandboxLimits(timeout_s=10.0, cpu_s=1)
    result = run_program("while True:\n    pass\n", limits, isolation)
    assert result.status is Status.RESOURCE_LIMIT and "SIGXCPU" in result.detail
    assert result.duration_s < 4.0


@pytest.mark.parametrize("isolation", ISOLATIONS, ids=mode_id)
def test_memory_limit_stops_an_unbounded_allocation(isolation):
    source = "hoard = []\nwhile True:\n    hoard.append(bytearray(10**7))\n"
    result = run_program(source, FAST, isolation)
    assert result.status is Status.RESOURCE_LIMIT and "MemoryError" in result.detail
    assert result.duration_s < 3.0


@pytest.mark.parametrize("isolation", ISOLATIONS, ids=mode_id)
def test_fork_bomb_hits_the_process_limit_and_leaves_nothing(isolation):
    result = run_program("import os\nwhile True:\n    os.fork()\n", FAST, isolation)
    assert result.status is Status.RESOURCE_LIMIT and "BlockingIOError" in result.detail
    assert result.duration_s < 3.0
    assert processes_mentioning(result.workdir) == []


@pytest.mark.parametrize("isolation", ISOLATIONS, ids=mode_id)
def test_persistent_fork_bomb_is_killed_at_the_timeout(isolation):
    # Keeps every process slot it gets and retries forever: only the timeout ends it.
    source = ("import os, time\nwhile True:\n    try:\n        os.fork()\n"
              "    except OSError:\n        time.sleep(0.01)\n")
    limits = SandboxLimits(timeout_s=1.0, cpu_s=30, max_processes=16)
    result = run_program(source, limits, isolation)
    assert result.status is Status.TIMEOUT and result.duration_s < 2.5
    assert processes_mentioning(result.workdir) == []


@pytest.mark.parametrize("isolation", CONTAINED, ids=mode_id)
def test_process_limit_counts_only_the_sandbox(isolation):
    # Each child sleeps, so they all exist at once; the program itself is one of max_processes.
    source = ("import os, time\nchildren = 0\ntry:\n    while True:\n"
              "        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
              "        children += 1\nexcept BlockingIOError:\n    print(children)\n")
    result = run_program(source, SandboxLimits(max_processes=6), isolation)
    assert result.passed and result.stdout == "5\n"
    assert processes_mentioning(result.workdir) == []


@pytest.mark.parametrize("isolation", CONTAINED, ids=mode_id)
def test_processes_that_leave_the_session_still_die(isolation):
    source = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
              "print('parent done')\n")
    result = run_program(source, FAST, isolation)
    assert result.passed and result.duration_s < 3.0
    assert processes_mentioning(result.workdir) == []


@pytest.fixture
def listener():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    yield server
    server.close()


def assert_nobody_connected(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        server.accept()


@pytest.mark.parametrize("isolation", ISOLATIONS, ids=mode_id)
def test_sockets_are_refused_in_process(isolation, listener):
    port = listener.getsockname()[1]
    source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    result = run_program(source, FAST, isolation)
    assert result.status is Status.FAILED and "network access is disabled" in result.detail
    assert_nobody_connected(listener)


@pytest.mark.parametrize("isolation", CONTAINED, ids=mode_id)
def test_network_namespace_blocks_a_subprocess_without_the_audit_hook(isolation, listener):
    # A fresh interpreter has no audit hook; only the empty network namespace stops it.
    port = listener.getsockname()[1]
    source = ("import subprocess, sys\n"
              "code = \"import socket; socket.create_connection(('127.0.0.1', %d), timeout=2)\"\n"
              "sys.exit(subprocess.run([sys.executable, '-c', code]).returncode)\n" % port)
    result = run_program(source, FAST, isolation)
    assert result.status is Status.FAILED
    assert "Network is unreachable" in result.stderr
    assert_nobody_connected(listener)
