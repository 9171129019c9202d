"""What gin does not check for us: every macro and binding a user sets is read by the run.

Gin accepts `TRAIN_STEP = 3` beside a configuration that reads `%TRAIN_STEPS`: a macro nobody
references is stored and ignored, so a typo silently runs the defaults. After parsing,
`check_used` walks the parsed configuration from the entry point the command calls (the
configurables it reaches through `@references`, the macros through `%references`) and refuses,
naming where it was set (`--gin.NAME` or `file:line`) and the closest macro the run reads:
- a `--gin.NAME=VALUE` flag the walk never reaches (a typo, or MESH_FSDP beside MESH = 'auto',
  which drops the MeshConfig that reads it), unless a file declares NAME %gin.REQUIRED;
- a macro a user's gin file defines that nothing in the configuration references (a typo);
  a file may hold alternatives a flag picks between, so reached is not asked of it;
- a flag binding a configurable (`--gin.some.Configurable.param=...`) the run never calls.
User files are those outside the shipped `gin_configs/` (and the user files they include);
shipped files define optional macros a run may leave unread (MESH_FSDP when MESH = 'auto').

Also here: gin's exception decorations turned into a plain message, and the order gin searches
for `include`d files (the project root first), which keeps `ERROR Path not found` lines off the
terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Sequence

import gin
from gin import config_parser

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = PROJECT_ROOT / "gin_configs"
MACRO = "gin.macro"  # the selector gin files a macro `NAME = value` under: (NAME, 'gin.macro')


@dataclasses.dataclass(frozen=True)
class Setting:
    """A macro (`selector` None) or a configurable's parameter the user set, and where."""

    name: str  # the macro's name, or `selector.param` as written
    where: str  # `--gin.NAME` or `path:line`
    selector: str | None = None  # the configurable, as written (possibly a partial selector)

    @property
    def is_flag(self) -> bool:
        return self.where.startswith("--gin.")

    @property
    def label(self) -> str:
        """`--gin.NAME` (the flag names the setting) or `path:line: NAME`."""
        return self.where if self.is_flag else f"{self.where}: {self.name}"


class _Recorder(config_parser.ParserDelegate):
    """Parses statements without resolving references, noting every `%NAME` the text uses."""

    def __init__(self):
        self.macros: set[str] = set()

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return None

    def macro(self, macro_name):
        self.macros.add(macro_name)
        return None


def is_shipped(path: str | Path) -> bool:
    return Path(path).resolve().is_relative_to(SHIPPED)


def search_project_first() -> None:
    """`include 'gin_configs/...'` resolves against the project root before the working directory.
    gin tries each search prefix with each file reader in turn; trying the working directory first
    makes its package-resource reader log `ERROR Path not found` for every shipped include run
    from elsewhere (and fail outright when the project root is on sys.path as a namespace
    package). gin only appends search paths, hence the list itself."""
    prefixes = gin.config._LOCATION_PREFIXES
    if str(PROJECT_ROOT) not in prefixes:
        prefixes.insert(0, str(PROJECT_ROOT))


def resolve_include(name: str) -> Path | None:
    """Where gin finds an `include`d file (as `search_project_first` orders the search)."""
    for prefix in (str(PROJECT_ROOT), ""):
        candidate = Path(os.path.join(prefix, name))
        if candidate.is_file():
            return candidate
    return None


@dataclasses.dataclass(frozen=True)
class Written:
    """What the gin files say as written (before later files and flags override any of it)."""

    settings: tuple[Setting, ...]  # every macro and binding of the user's files, with its line
    references: frozenset[str]  # every `%NAME` in any file, shipped or not


def read_files(files: Sequence[str | Path]) -> Written:
    """Walk `files` and what they include (as gin finds it); the user's files are those outside
    the shipped gin_configs/."""
    recorder, settings, seen = _Recorder(), [], set()

    def visit(path: Path) -> None:
        if path.resolve() in seen:
            return
        seen.add(path.resolve())
        users = not is_shipped(path)
        for statement in config_parser.ConfigParser(path.read_text(), recorder):
            if isinstance(statement, config_parser.BindingStatement) and users:
                scope, selector, arg, _, location = statement
                where = f"{path}:{location.line_num}"
                if arg:
                    settings.append(Setting(f"{selector}.{arg}", where, selector))
                else:  # a macro: `NAME = value` (or `scope/NAME = value`)
                    settings.append(Setting(f"{scope}/{selector}" if scope else selector, where))
            elif isinstance(statement, config_parser.IncludeStatement):
                included = resolve_include(statement.filename)
                if included is not None:  # gin has already refused a missing one
                    visit(included)

    for path in files:
        visit(Path(path))
    return Written(tuple(settings), frozenset(recorder.macros))


def binding_settings(bindings: Sequence[str]) -> list[Setting]:
    """The `NAME=VALUE` bindings of `--gin.NAME=VALUE` flags: a macro, or (with a dot)
    `[scope/]some.Configurable.param`."""
    settings = []
    for binding in bindings:
        name = binding.partition("=")[0].strip()
        selector = name.rpartition(".")[0].rpartition("/")[2] or None
        settings.append(Setting(name, f"--gin.{name}", selector))
    return settings


@dataclasses.dataclass(frozen=True)
class Reach:
    """What a call of the entry point reads: macros and configurables (full selectors)."""

    macros: frozenset[str]
    selectors: frozenset[str]


def _macro_name(reference) -> str | None:
    """The macro a `%NAME` reference names (gin stores it as `@NAME/gin.macro()`)."""
    if reference.configurable.wrapped is gin.config.macro:
        return "/".join(reference.scopes)
    return None


def reach(entry_point: Callable) -> Reach:
    """Walk the parsed configuration from `entry_point`: every configurable it reaches through
    `@references` and every macro it reaches through `%references`, transitively. Bindings of a
    configurable under any scope count (an over-approximation: a scoped binding is read only
    inside that scope)."""
    # gin has no public walk: _CONFIG maps (scope, selector) -> {param: value}, a macro `NAME`
    # being (NAME, 'gin.macro'). Nodes here: ('macro', NAME) or ('configurable', selector).
    bindings: dict[tuple[str, str], list[dict]] = {}
    for (scope, selector), params in gin.config._CONFIG.items():
        node = ("macro", scope) if selector == MACRO else ("configurable", selector)
        bindings.setdefault(node, []).append(params)
    entry = gin.config._inverse_lookup(entry_point, allow_decorators=True)
    seen, pending = set(), [("configurable", entry.selector)]
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        for params in bindings.get(node, []):
            for reference in gin.config.iterate_references(params):
                name = _macro_name(reference)
                pending.append(("macro", name) if name is not None
                               else ("configurable", reference.configurable.selector))
    return Reach(frozenset(name for kind, name in seen if kind == "macro"),
                 frozenset(name for kind, name in seen if kind == "configurable"))


def readers() -> dict[str, set[str]]:
    """Macro -> what references it (`%NAME`) anywhere in the parsed configuration, reached or not:
    configurables (full selectors) and other macros (`%NAME`)."""
    found: dict[str, set[str]] = {}
    for (scope, selector), params in gin.config._CONFIG.items():
        for reference in gin.config.iterate_references(params):
            name = _macro_name(reference)
            if name is not None:
                found.setdefault(name, set()).add(f"%{scope}" if selector == MACRO else selector)
    return found


def _full_selector(selector: str) -> str | None:
    try:
        match = gin.config._REGISTRY.get_match(selector)
    except (KeyError, ValueError):  # an ambiguous partial selector: gin has accepted it already
        return None
    return match.selector if match else None


def _short(selector: str) -> str:
    return selector.rpartition(".")[2]


def _typo(setting: Setting, candidates: set[str]) -> str:
    close = difflib.get_close_matches(setting.name, sorted(candidates), n=1)
    return (f"{setting.label} is not used by any configurable"
            + (f"; did you mean {close[0]}?" if close else ""))


def unused(settings: Sequence[Setting], reached: Reach, required: set[str] = frozenset(),
           written_references: frozenset[str] = frozenset()) -> list[str]:
    """One message per setting the run does not read.

    A flag (`--gin.NAME=VALUE`) is meant for this run: it must be reached from the entry point,
    unless a file declares it %gin.REQUIRED (the files demand a value whether or not this run
    reads it). A gin file may hold alternatives the command line picks between (`MODELS =
    [%GPT2]` leaves `%LLAMA` unread), so a macro it defines need only be referenced somewhere:
    in the parsed configuration or in any file's text (`written_references`: the file's
    `MODELS = [%GPT2, %LLAMA]` was overridden). That still catches every misspelling. Its
    configurable bindings gin itself has checked."""
    referencing = readers()
    problems = []
    for setting in settings:
        if setting.selector is not None:
            full = _full_selector(setting.selector)
            if setting.is_flag and full is not None and full not in reached.selectors:
                problems.append(f"{setting.label} is not used: this run never calls "
                                f"{_short(full)}")
        elif not setting.is_flag:
            if setting.name not in referencing and setting.name not in written_references:
                problems.append(_typo(setting, set(referencing) | written_references))
        elif setting.name not in reached.macros | required:
            names = sorted(_short(r) for r in referencing.get(setting.name, ()))
            if not names:
                problems.append(_typo(setting, set(reached.macros)))
            else:  # spelled right, but read only by something this run does not call
                one = len(names) == 1
                problems.append(f"{setting.label} is not used: only {', '.join(names)} "
                                f"read{'s' * one} it, and this run never calls "
                                f"{'it' if one else 'them'}")
    return problems


def check_used(entry_point: Callable, files: Sequence[str], bindings: Sequence[str],
               required: set[str] = frozenset()) -> None:
    """Every macro and binding the user set (`bindings`, `NAME=VALUE`, and gin files outside the
    shipped ones) is read as `unused` asks; else a ValueError naming each that is not, where it
    was set and the closest macro the run reads. `required`: macros the files declare
    %gin.REQUIRED."""
    written = read_files(files)
    settings = [*written.settings, *binding_settings(bindings)]
    problems = unused(settings, reach(entry_point), set(required), written.references)
    if problems:
        raise ValueError("\n  ".join(problems))


# Gin appends `\n  In call to configurable 'train' (<function train at 0x...>)` (and a scope) to an
# exception for every configurable it passes through, innermost first. File locations
# (`In file "x.gin", line 3`) it appends too are kept: they say where to look.
_CALL = re.compile(r"\n  In call to configurable '([^']*)' \((?:[^()]|\([^()]*\))*\)"
                   r"(?: in scope '[^']*')?")


def is_gin_proxy(error: BaseException) -> bool:
    """gin re-raises a dynamic subclass of the error's type whose `__str__` appends its text."""
    return "ExceptionProxy" in getattr(type(error).__str__, "__qualname__", "")


def plain_message(error: BaseException) -> str:
    """The exception's message without gin's call-stack decorations, prefixed with the innermost
    configurable it came from: `TrainConfig: train_steps must be positive, got 0`."""
    text = str(error)
    original = error
    while is_gin_proxy(original) and original.__context__ is not None:
        original = original.__context__  # gin raises the proxy inside `except original`
    if isinstance(original, KeyError) and original.args:  # str(KeyError) quotes its message
        text = str(original.args[0]) + text[len(str(original)):]
    calls = _CALL.findall(text)
    text = _CALL.sub("", text)
    named = not calls or re.search(rf"\b{re.escape(calls[0])}\b", text)  # already says where
    return text if named else f"{calls[0]}: {text}"


class _DropGinSearchMisses(logging.Filter):
    """gin's resource reader logs `ERROR Path not found: <include>` for every search-path prefix
    that does not hold an included file before it finds it under the next one; a file that is
    truly missing still fails the parse with its own error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Path not found: %s"
                    and record.pathname.endswith(os.path.join("gin", "resource_reader.py")))


@contextlib.contextmanager
def quiet_search() -> Iterator[None]:
    root = logging.getLogger()
    dropped = _DropGinSearchMisses()
    root.addFilter(dropped)
    try:
        yield
    finally:
        root.removeFilter(dropped)
