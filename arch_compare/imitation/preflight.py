"""Everything a study can check before its first step, checked at once and reported together.

    report = check(config)   # StudyInputsInvalid (a ValueError) listing every problem found

What is checked, in seconds, before any model is built:
- every data file read through with its reader: each record parses and its fields have their
  types; the file holds enough examples for the largest amount (the study carves no validation
  split off its sources); no example the study trains on holds more than the source's
  `max_record_chars` characters of text. With the source's `skip_bad` bad records are skipped
  and counted instead (`PreflightReport.skipped`), and the count is printed and recorded;
- every prompts task, pre-training task and evaluation task resolvable, with the split read;
- every base checkpoint present, of a kind the loader reads and of the model the study names
  (its architecture compared field by field), and every vocabulary file present;
- the target: a model target's checkpoint present; a function target importable; an HTTP target
  connectable (a TCP connection to its host, or its proxy) when collection would call it. When
  every answer is already collected an unreachable HTTP target is only noted: the target's own
  evaluation run will then fail and be recorded, and everything else runs.

Each problem names the file and line, or the configuration key, it is about.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence

from arch_compare.data.conversations import ImitationExample
from arch_compare.imitation import collection
from arch_compare.imitation.config import DataSource, StudyConfig
from arch_compare.imitation.target_kinds import make_target
from arch_compare.imitation.targets import cache_key
from arch_compare.models.loading import CHECKPOINT_DIR, CHECKPOINT_KINDS, checkpoint_kind
from arch_compare.models.native import PARAMS_DIR
from arch_compare_tasks import catalogue, readers, registry

del catalogue  # imported for its side effect: every shipped task registered

# How long an HTTP target's host may take to accept a connection before it counts as unreachable.
CONNECT_TIMEOUT_SECONDS = 3.0
# Bad records listed one by one per file; the rest are counted.
LISTED_PER_FILE = 5


class StudyInputsInvalid(ValueError):
    """The study's inputs have problems; the message lists every one (file:line or key)."""

    def __init__(self, study: str, problems: Sequence["Problem"]):
        self.problems = tuple(problems)
        super().__init__(f"study {study!r}: {len(self.problems)} problem(s) with its inputs, "
                         f"found before any training:\n"
                         + "\n".join(f"  - {problem}" for problem in self.problems))


@dataclasses.dataclass(frozen=True)
class Problem:
    where: str  # a file:line, a file, or a configuration key
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclasses.dataclass(frozen=True)
class SourceCheck:
    """What was found in one data source: its file's examples and the bad records skipped."""

    name: str
    path: str | None  # None: collected by the study (checked once collected)
    examples: int | None
    skipped: tuple[readers.SkippedRecord, ...] = ()


@dataclasses.dataclass(frozen=True)
class PreflightReport:
    sources: tuple[SourceCheck, ...]
    notes: tuple[str, ...]  # worth saying, but no reason to stop
    seconds: float

    def skipped(self, source: str) -> int:
        """Bad records skipped in a source (its `skip_bad`)."""
        return sum(len(s.skipped) for s in self.sources if s.name == source)

    def summary(self) -> str:
        lines = [f"inputs checked in {self.seconds:.1f} s: " + "; ".join(
            f"{s.name} {s.examples} examples" if s.path else f"{s.name} to be collected"
            for s in self.sources)]
        for source in self.sources:
            if source.skipped:
                lines.append(f"data source {source.name!r}: {len(source.skipped)} bad record(s) "
                             f"skipped (skip_bad)")
                lines += [f"  {skip}" for skip in source.skipped[:LISTED_PER_FILE]]
                if len(source.skipped) > LISTED_PER_FILE:
                    lines.append(f"  ... and {len(source.skipped) - LISTED_PER_FILE} more")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def recorded(self, run_config: Mapping, source: str) -> dict:
        """An imitation run's configuration with its source's skipped-record count."""
        return {**run_config, "source": {**run_config.get("source", {}),
                                         "skipped_bad_records": self.skipped(source)}}


def collection_cache(config: StudyConfig, source: DataSource) -> Path:
    """Where the study caches the target's answers to a source's prompts."""
    return Path(config.directory) / "collection" / f"{source.name}.jsonl"


# --- data ------------------------------------------------------------------------------------------

def _text_chars(example: ImitationExample) -> int:
    return len(example.target) + sum(len(turn.text) for turn in example.history)


def _lines_of(path: Path, format: str, ids: set[str]) -> dict[str, int]:
    """The line of the record each example id comes from (read again, only on the error path)."""
    reader = readers.READERS[format]
    text = path.read_text(encoding="utf-8-sig")
    lines = {}
    for line, record in readers.CONTAINERS[reader.container](path, text):
        try:
            found = reader.parse(record, line)
        except (readers.RecordError, TypeError, ValueError):
            continue
        lines.update({example.example_id: line for example in found
                      if example.example_id in ids})
    return lines


def _check_file(source: DataSource, where: str, problems: list[Problem]) -> SourceCheck:
    path = Path(source.file)
    needed = max(source.amounts)
    try:
        # Always read with skip_bad, so every bad record of the file is listed at once.
        result = readers.read_examples(path, source.format, skip_bad=True)
    except readers.DataFormatError as error:  # a broken JSON array cannot be read on
        problems.append(Problem(f"{error.path}:{error.line}", f"{error.reason} ({where})"))
        return SourceCheck(source.name, str(path), None)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else error
        problems.append(Problem(str(path), f"{reason} ({where}.file)"))
        return SourceCheck(source.name, str(path), None)
    no_examples = readers.READERS[source.format].no_examples
    bad = tuple(skip for skip in result.skipped if skip.reason != no_examples)
    if bad and not source.skip_bad:
        problems += [Problem(f"{skip.path}:{skip.line}", skip.reason)
                     for skip in bad[:LISTED_PER_FILE]]
        if len(bad) > LISTED_PER_FILE:
            problems.append(Problem(str(path), f"... and {len(bad) - LISTED_PER_FILE} more bad "
                                               f"records"))
        problems.append(Problem(where, f"{len(bad)} bad record(s) in {path}; fix them, or set "
                                       f"skip_bad=True on the source to skip and count them"))
    if result.records == 0:
        problems.append(Problem(str(path), f"holds no records ({where})"))
    elif len(result.examples) < needed:
        problems.append(Problem(str(path), f"{len(result.examples)} examples from "
                                           f"{result.records} records ({len(result.skipped)} "
                                           f"skipped); the largest amount, {needed}, needs "
                                           f"{needed} ({where}.amounts)"))
    limit = source.max_record_chars
    if limit is not None:
        oversized = [(example.example_id, _text_chars(example))
                     for example in result.examples[:needed] if _text_chars(example) > limit]
        if oversized:
            lines = _lines_of(path, source.format, {example_id for example_id, _ in oversized})
            problems += [Problem(f"{path}:{lines.get(example_id, '?')}",
                                 f"example {example_id!r} holds {chars:,} characters of text, "
                                 f"over {where}.max_record_chars={limit:,}")
                         for example_id, chars in oversized[:LISTED_PER_FILE]]
            if len(oversized) > LISTED_PER_FILE:
                problems.append(Problem(str(path), f"... and {len(oversized) - LISTED_PER_FILE}"
                                                   f" more oversized examples"))
    return SourceCheck(source.name, str(path), len(result.examples),
                       bad if source.skip_bad else ())


def _check_prompts(config: StudyConfig, source: DataSource, where: str, target_name: str | None,
                   problems: list[Problem]) -> bool:
    """Checks a collected source; whether collection still has prompts to ask the target."""
    from arch_compare.imitation.evaluation import prompt_of  # seqio: only when collecting
    try:
        records = registry.records(source.prompts_task, "train")
    except (KeyError, ValueError, OSError) as error:
        problems.append(Problem(f"{where}.prompts_task", _message(error)))
        return True
    needed = max(source.amounts)
    if len(records) < needed:
        problems.append(Problem(f"{where}.prompts_task", f"{source.prompts_task!r} has "
                                                         f"{len(records)} prompts; the largest "
                                                         f"amount needs {needed}"))
    pool = source.selection.pool
    if pool is not None and len(records) < pool:
        problems.append(Problem(f"{where}.selection.pool", f"{source.prompts_task!r} has "
                                                           f"{len(records)} prompts, fewer than "
                                                           f"the pool of {pool}"))
    if "student_first" in source.selection.strategies:
        try:
            registry.checker(source.prompts_task)
        except ValueError as error:
            problems.append(Problem(f"{where}.selection", f"student_first: {error}"))
    cache = collection_cache(config, source)
    try:
        answered = {answer.key for answer in collection.load_collected(cache)}
    except (ValueError, OSError) as error:
        problems.append(Problem(str(cache), _message(error)))
        return True
    if target_name is None:
        return True
    keys = {cache_key(target_name, prompt_of(record), config.generation)
            for record in records[:needed]}
    return bool(keys - answered)


# --- tasks, checkpoints, vocabularies --------------------------------------------------------------

def _message(error: BaseException) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def _check_task(task: str, split: str | None, where: str, problems: list[Problem]) -> None:
    try:
        if task in registry.MIXTURES:
            registry.get_mixture(task)
            return
        spec = registry.get_task(task)
        if split is not None:
            registry.records(task, split)  # a missing data folder is found here, with its path
        elif not spec.splits:
            raise ValueError(f"task {task!r} has no splits")
    except (KeyError, ValueError, OSError) as error:
        problems.append(Problem(where, _message(error)))


# checkpoint kind -> whether its parameters are there, and what is looked for (the config alone
# is not a checkpoint: its loader would fail when the base run starts).
PARAMETERS_PRESENT: dict[str, tuple[Callable[[Path], bool], str]] = {
    "training": (lambda path: any(step.name.isdigit() for step in
                                  (path / CHECKPOINT_DIR).iterdir()), f"{CHECKPOINT_DIR}/<step>"),
    "native": (lambda path: (path / PARAMS_DIR).is_dir(), f"{PARAMS_DIR}/"),
    "hf": (lambda path: any(path.glob("*.safetensors")), "*.safetensors"),
}


def _check_checkpoint(model, where: str, problems: list[Problem]) -> None:
    path = Path(model.base_checkpoint)
    if not path.exists():
        problems.append(Problem(f"{where}.base_checkpoint", f"{path}: no such checkpoint"))
        return
    try:
        kind = checkpoint_kind(path)
        found = CHECKPOINT_KINDS[kind].read_config(path).architecture_dict()
    except (ValueError, OSError, KeyError) as error:
        problems.append(Problem(f"{where}.base_checkpoint", _message(error)))
        return
    present, looked_for = PARAMETERS_PRESENT[kind]
    if not present(path):
        problems.append(Problem(f"{where}.base_checkpoint", f"{path}: a {kind} checkpoint "
                                                            f"without parameters ({looked_for})"))
    wanted = model.config.architecture_dict()
    differ = [key for key in sorted(set(wanted) | set(found)) if wanted.get(key) != found.get(key)]
    if differ:
        shown = ", ".join(f"{key} {found.get(key)!r} (study: {wanted.get(key)!r})"
                          for key in differ[:4])
        problems.append(Problem(f"{where}.base_checkpoint",
                                f"{path} holds another model than preset {model.preset!r} with "
                                f"its overrides: {shown}" + (" ..." if len(differ) > 4 else "")))


def _check_path(path: str | None, where: str, what: str, problems: list[Problem]) -> None:
    if path is not None and not Path(path).exists():
        problems.append(Problem(where, f"{path}: no such {what}"))


# --- the target ------------------------------------------------------------------------------------

def _connect_to(base_url: str) -> str | None:
    """None when a TCP connection to the URL's host (or the proxy it goes through) opens."""
    parts = urllib.parse.urlsplit(base_url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "//" in proxy else f"//{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as error:
        return f"cannot connect to {host}:{port} ({error})"
    return None


def _target_name(spec: Mapping, problems: list[Problem]) -> str | None:
    """The target's name (answers are cached under it), building only targets that load
    nothing; None for a model target (local: nothing to reach)."""
    try:
        if spec["kind"] == "model":
            _check_path(spec.get("checkpoint"), "target.checkpoint", "checkpoint", problems)
            _check_path(spec.get("vocabulary"), "target.vocabulary", "vocabulary", problems)
            return None
        return make_target(spec).name
    except (ValueError, ImportError, TypeError) as error:
        problems.append(Problem("target", str(error)))
        return None


# kind -> how to tell whether the target answers (None when it does, else why not).
TARGET_PROBES: dict[str, Callable[[Mapping], str | None]] = {
    "openai": lambda spec: _connect_to(spec["base_url"]),
}


# --- all of it ---------------------------------------------------------------------------------

def check(config: StudyConfig, *, probe_target: bool = True) -> PreflightReport:
    """Every input of the study checked; StudyInputsInvalid listing all problems found.
    `probe_target=False` leaves the target's reachability unchecked (hosts that never call it)."""
    began = time.perf_counter()
    problems: list[Problem] = []
    notes: list[str] = []
    target_name = _target_name(config.target, problems)
    sources, collecting = [], []
    for index, source in enumerate(config.sources):
        where = f"sources[{index}] ({source.name!r})"
        if source.file is not None:
            sources.append(_check_file(source, where, problems))
        else:
            sources.append(SourceCheck(source.name, None, None))
            if _check_prompts(config, source, where, target_name, problems):
                collecting.append(source.name)
    for index, model in enumerate(config.models):
        where = f"models[{index}] ({model.name!r})"
        _check_path(model.vocabulary, f"{where}.vocabulary", "vocabulary", problems)
        if model.base_checkpoint is not None:
            _check_checkpoint(model, where, problems)
        else:
            _check_task(model.pretraining.task, None, f"{where}.pretraining.task", problems)
    for index, spec in enumerate(config.evaluations):
        _check_task(spec.task, spec.split, f"evaluations[{index}] ({spec.task!r})", problems)
    _check_path(config.reference_vocabulary, "reference_vocabulary", "vocabulary", problems)
    probe = TARGET_PROBES.get(config.target.get("kind"))
    if probe_target and probe is not None and target_name is not None:
        unreachable = probe(config.target)
        if unreachable and collecting:
            problems.append(Problem("target", f"{unreachable}; data source(s) "
                                              f"{', '.join(collecting)} still need its answers"))
        elif unreachable:
            notes.append(f"target {target_name!r}: {unreachable}; every answer is collected, "
                         f"but its own evaluation run will fail unless already done")
    if problems:
        raise StudyInputsInvalid(config.name, problems)
    return PreflightReport(tuple(sources), tuple(notes), time.perf_counter() - began)


def before_study(config: StudyConfig, processes, echo) -> PreflightReport:
    """`check` on every process of a study (process 0 alone probes the target, the one that
    calls it); all stop together when any found a problem."""
    found, report = None, None
    try:
        report = check(config, probe_target=processes.writer)
    except StudyInputsInvalid as error:
        found = error
    if processes.failed_anywhere(found is not None):
        raise found or StudyInputsInvalid(config.name, [Problem("process 0", "found problems "
                                                                             "(its output lists "
                                                                             "them)")])
    echo(report.summary())
    return report
