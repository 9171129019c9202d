"""`arch-compare`: the only place that parses flags (and, for runs, gin files).

Each sub-command is a module with `add_arguments(parser)` and `run(args) -> int`, registered in
`COMMANDS` by name. `arch-compare --help` imports none of them (their summaries are read from
their sources); a command's module imports only what its parser needs, and its `run` the rest, so
`CMD --help` never waits for TensorFlow (about 4 s) or JAX (about 2 s), and a command that reads
a database or prices a run imports neither (tests/cli/test_startup.py holds them to it).

Exit codes: 0 success; 1 the command ran and reports a failure (a run that failed, a set-up that
does not fit); 2 the user's input or the environment stopped it (`EXPECTED_FAILURES`: a bad flag,
file, database, target, or memory), said in one `arch-compare CMD: error: ...` line; 130
interrupted. Any other exception is a bug: its traceback goes to a log file named in one line
(or, with ARCH_COMPARE_TRACEBACK=1, is raised as it is).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import http.client
import importlib
import importlib.util
import logging
import os
import re
import sqlite3
import sys
import tempfile
import traceback
import urllib.error
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from arch_compare.simulated_devices import widen_thread_pool

if TYPE_CHECKING:
    from arch_compare.cli.runs import RunCommand

# TensorFlow's C++ start-up writes to file descriptor 2 before absl logging is set up, so
# TF_CPP_MIN_LOG_LEVEL (which JAX's import sets to 1) cannot hold these back (TF 2.21): absl's
# INFO lines ("I0000 00:00:... port.cc:153] oneDNN custom operations are on...", "... Could not
# find cuda drivers..."), the notice before them, and on machines without a GPU "failed call to
# cuInit" at ERROR level, and the second line of cpu_feature_guard's INFO notice ("To enable the
# following instructions: AVX2 ...", unprefixed). Every other line, warnings and errors included,
# still passes. JAX prints nothing at import; its backend notices ("An NVIDIA GPU may be present
# on this machine, but a CUDA-enabled jaxlib is not installed") appear only where there is an
# accelerator it cannot use, which is worth reading, so they pass too.
_STARTUP_CHATTER = re.compile(
    r"^(I\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\] "
    r"|E\d{4} \d\d:\d\d:\S+\s+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR$"
    r"|To enable the following instructions: [A-Z0-9_ ]+, in other operations, rebuild "
    r"TensorFlow with the appropriate compiler flags\.$)")


@contextlib.contextmanager
def _native_stderr_filtered(chatter: re.Pattern = _STARTUP_CHATTER) -> Iterator[None]:
    """Runs the block with file descriptor 2 captured, then passes on every line but chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not chatter.match(line)]
            sys.stderr.write("".join(kept))


def _tensorflow_without_accelerators() -> None:
    """TensorFlow only feeds data here (seqio's tf.data pipelines); JAX owns the accelerators.
    Left alone, TF's first op would initialise every GPU and reserve its memory. Called inside
    the filtered block: on a machine without a GPU this is where TF logs its failed cuInit."""
    # What importing JAX first used to set for TF: no INFO lines from its C++ runtime (tf.data's
    # "Local rendezvous is aborting ... End of sequence" and the like) once a run is under way.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already ran an op in this process (a test, a notebook)
        pass


@dataclasses.dataclass(frozen=True)
class Command:
    module: str
    run_command: str | None = None  # a gin-configured command in the module's RUN_COMMANDS
    # Reads data through seqio as it runs: TensorFlow is imported (its start-up chatter filtered)
    # just before `run`, never for `--help`. The others never wait for it.
    tensorflow: bool = True

    def load(self) -> ModuleType | RunCommand:
        """The command (`add_arguments`, `run`), imported with native start-up chatter filtered."""
        with _native_stderr_filtered():
            module = importlib.import_module(self.module)
        return module if self.run_command is None else module.RUN_COMMANDS[self.run_command]

    def prepare(self) -> None:
        """Before `run`: TensorFlow imported with its chatter filtered and kept off the GPUs (so
        what `run` imports later prints nothing), for the commands that read data through it."""
        if self.tensorflow or "tensorflow" in sys.modules:
            with _native_stderr_filtered():
                _tensorflow_without_accelerators()

    def summary(self) -> str:
        """The first line of the command's doc, for `arch-compare --help`: read from the module's
        source (nothing imported) unless the command is one of a module's RUN_COMMANDS."""
        if self.run_command is not None:
            doc = self.load().__doc__
        else:
            with open(importlib.util.find_spec(self.module).origin, encoding="utf-8") as source:
                doc = ast.get_docstring(ast.parse(source.read()))
        return doc.strip().splitlines()[0]


COMMANDS: dict[str, Command] = {
    "presets": Command("arch_compare.cli.presets", tensorflow=False),
    "convert": Command("arch_compare.cli.convert", tensorflow=False),
    "budget": Command("arch_compare.cli.budget", tensorflow=False),
    "tasks": Command("arch_compare.cli.tasks"),
    "serve": Command("arch_compare.cli.serve"),
    "report": Command("arch_compare.cli.report", tensorflow=False),
    "study": Command("arch_compare.cli.study"),
    "demo": Command("arch_compare.cli.demo"),
    "pairwise": Command("arch_compare.cli.pairwise", tensorflow=False),
    **{name: Command("arch_compare.cli.runs", name) for name in ("train", "eval", "infer")},
}


def build_parser(names: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the commands `names`, with their arguments (each one imported); default:
    every command listed by name and summary, none imported (`arch-compare --help`)."""
    parser = argparse.ArgumentParser(prog="arch-compare", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if names is None:
        for name, command in COMMANDS.items():
            commands.add_parser(name, help=command.summary())
        return parser
    for name in names:
        command = COMMANDS[name].load()
        doc = command.__doc__.strip()
        sub = commands.add_parser(name, help=doc.splitlines()[0], description=doc)
        command.add_arguments(sub)
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    # Only the command named (when it is one) is imported; help and mistakes in the name see the
    # list of commands.
    parser = build_parser([argv[0]] if argv and argv[0] in COMMANDS else None)
    if any(arg.startswith("--gin.") for arg in argv):
        from arch_compare.cli.runs import split_gin_flags  # gin only: the runs import the rest
        argv = split_gin_flags(argv)
    return parser.parse_args(argv)


# -- library log lines -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LibraryNoise:
    """A library's log line that means nothing to a user as worded: dropped, or reworded."""

    logger: str
    starts: str  # how the library's format string starts
    rewrite: str | None = None  # None: dropped; else a format string taking the same arguments


LIBRARY_NOISE: tuple[LibraryNoise, ...] = (
    # seqio's Evaluator without its TensorBoard loggers (we write metrics.json ourselves).
    LibraryNoise("absl", "'logger_cls' is empty so seqio.Evaluator will not log"),
    # Says something true (the lengths waste compute) in seqio's API terms ("pass `None` for
    # `sequence_length`"), in three lines.
    LibraryNoise("absl", "Given sequence lengths are longer than necessary",
                 "evaluation: the feature lengths %s are longer than the longest example needs "
                 "(%s); shorter ones would compute less"),
)


class _LibraryNoiseFilter(logging.Filter):
    def __init__(self, noise: tuple[LibraryNoise, ...]):
        super().__init__()
        self.noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        for noise in self.noise:
            if isinstance(record.msg, str) and record.msg.startswith(noise.starts):
                if noise.rewrite is None:
                    return False
                record.msg = noise.rewrite
        return True


def filter_library_noise() -> None:
    """Installs the `LIBRARY_NOISE` filters (once) on the loggers they name."""
    for name in dict.fromkeys(noise.logger for noise in LIBRARY_NOISE):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LibraryNoiseFilter) for f in logger.filters):
            logger.addFilter(_LibraryNoiseFilter(
                tuple(noise for noise in LIBRARY_NOISE if noise.logger == name)))


# -- failures --------------------------------------------------------------------------------------

# gin adds where a configurable was called to an error's message, with the function's address.
_GIN_CALL_LINE = re.compile(r"\n\s*In call to configurable '[^']*' \(<[^>]*>\)")


def _text(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return _GIN_CALL_LINE.sub("", str(text)).strip() or type(error).__name__


def _os_text(error: OSError) -> str:
    """`path: reason` rather than `[Errno 13] Permission denied: 'path'`."""
    if isinstance(error, urllib.error.HTTPError):  # reached, and it said no
        return f"{error.url}: HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):  # its reason is the socket's error
        where = getattr(error, "filename", None)
        return f"{where + ': ' if where else ''}cannot reach it ({error.reason})"
    if error.strerror and error.filename is not None:
        other = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{error.filename}{other}: {error.strerror}"
    return _text(error)


def _pair_file_error(error: BaseException | None) -> BaseException | None:
    """The `PairFileError` behind `error`: gin re-raises a configurable's error as a proxy of its
    type (the original its context), which `runs.call_configured` re-raises as a ValueError."""
    pairs = sys.modules.get("arch_compare.preference.pairs")
    if pairs is None:  # never imported: nothing read a pairs file (and failing imports nothing)
        return None
    from arch_compare.cli.gin_checks import is_gin_proxy
    while error is not None and not (isinstance(error, pairs.PairFileError)
                                     and not is_gin_proxy(error)):
        error = error.__cause__ or error.__context__
    return error


def _pair_file_text(error: BaseException) -> str:
    """`pairs.jsonl:3: not JSON (...)`, without the Python API's note on the pairs it kept."""
    original = _pair_file_error(error)
    text = str(original)
    return text.rpartition("; the ")[0] if original.line else text


def _out_of_device_memory(error: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error)


def _device_memory_text(error: BaseException) -> str:
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return (f"out of device memory: {first.strip()} (try more devices, a smaller batch, "
            f"microbatches or remat: `arch-compare budget` and `study --plan` estimate it)")


def _jax_runtime_error() -> type[BaseException]:
    import jax
    return jax.errors.JaxRuntimeError


@dataclasses.dataclass(frozen=True)
class ExpectedFailure:
    """A kind of exception the user's input or environment causes, and how to say it."""

    types: Callable[[], tuple[type[BaseException], ...]]  # imported only when one is raised
    describe: Callable[[BaseException], str] = _text
    applies: Callable[[BaseException], bool] = lambda error: True


# The first entry whose types and `applies` match an exception describes it; anything else is a
# bug. ValueError covers the project's own refusals (CheckpointError, MemoryShortfall,
# StudyConflict, HardwareError, ... all subclass it); OSError covers unreadable files
# (PermissionError, IsADirectoryError, FileNotFoundError) and unreachable targets
# (ConnectionError, TimeoutError, urllib's URLError).
EXPECTED_FAILURES: tuple[ExpectedFailure, ...] = (
    ExpectedFailure(lambda: (ValueError,), _pair_file_text,
                    lambda error: _pair_file_error(error) is not None),
    ExpectedFailure(lambda: (KeyError, ValueError)),
    ExpectedFailure(lambda: (OSError,), _os_text),
    ExpectedFailure(lambda: (http.client.HTTPException,),
                    lambda error: f"the connection failed ({type(error).__name__}: {error})"),
    ExpectedFailure(lambda: (sqlite3.DatabaseError,), lambda error: f"database error: {error}"),
    ExpectedFailure(lambda: (_jax_runtime_error(),), _device_memory_text, _out_of_device_memory),
)


def expected_failure(error: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug."""
    for failure in EXPECTED_FAILURES:
        if isinstance(error, failure.types()) and failure.applies(error):
            return failure.describe(error)
    return None


def _log_internal_error(command: str, argv: list[str]) -> str:
    """Writes the command line and the traceback being handled to a new log file; its path."""
    handle, path = tempfile.mkstemp(prefix=f"arch-compare-{command}-", suffix=".log")
    with os.fdopen(handle, "w") as log:
        log.write(f"arch-compare {' '.join(argv)}\n\n{traceback.format_exc()}")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    prefix = f"arch-compare {command}" if command else "arch-compare"
    widen_thread_pool()  # before any command can start JAX's CPU backend
    try:
        args = _parse(argv)  # imports the command: Ctrl-C may come while it loads
        COMMANDS[args.command].prepare()
        filter_library_noise()
        return COMMANDS[args.command].load().run(args)
    except KeyboardInterrupt:
        print(f"\n{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = expected_failure(error)
        if message is not None:
            print(f"{prefix}: error: {message}", file=sys.stderr)
            return 2
        if os.environ.get("ARCH_COMPARE_TRACEBACK") == "1":
            raise
        first_line = next(iter(_text(error).splitlines()), "")
        print(f"{prefix}: internal error: {type(error).__name__}: {first_line} (traceback in "
              f"{_log_internal_error(command or 'cli', argv)}; please report it)", file=sys.stderr)
        return 1
