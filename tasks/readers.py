"""Readers for the imitation-data formats the paper used, into canonical `ImitationExample`s.

Formats (`READERS`):
- "sharegpt": a JSON array of `{"id", "conversations": [{"from", "value"}, ...]}`. Speakers map to
  roles through `SHAREGPT_SPEAKERS`; an unknown speaker is an error. Bing and Bard turns are kept as
  assistant turns but their examples get source "sharegpt/bing" (or "/bard"), because they are not
  ChatGPT's words and a study may want to leave them out.
- "hc3": JSON lines of `{"id"?, "question", "human_answers", "chatgpt_answers", "source"?}`. Each
  ChatGPT answer is one example; human answers are never targets (they are not the target model's).
- "openai_chat": JSON lines of `{"messages": [{"role", "content"}, ...]}` (the chat fine-tuning
  format; "developer" is the newer name for "system").
- "alpaca": a JSON array of `{"instruction", "input", "output"}` (Alpaca / Self-Instruct). The user
  turn is the instruction, followed by a blank line and the input when the input is not empty.

Every example id starts with the format name and the record's key: its "id" field where it has one,
else `line<N>` (the line where the record starts), so the same file always gives the same ids.

Errors: a malformed record raises `DataFormatError` naming the file, the line where the record
starts and what is wrong. With `skip_bad=True` the record is listed in `ReadResult.skipped` instead.
A well-formed record that holds no target-model turn (a ShareGPT dialogue where only the user
spoke, an HC3 question without ChatGPT answers) is always listed in `skipped`, never raised and
never dropped silently. Invalid JSON inside a JSON array always raises, even with `skip_bad`: the
rest of the array cannot be resynchronised.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from arch_compare.data.conversations import ImitationExample, Turn, examples_from_dialogue

FIXTURES_DIR = Path(__file__).parent / "fixtures" / "imitation"


class DataFormatError(ValueError):
    """A record (or the file around it) does not follow its format; names the file and line."""

    def __init__(self, path: str | os.PathLike, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")


class RecordError(ValueError):
    """What is wrong with one record; the reader adds the file and line."""


@dataclasses.dataclass(frozen=True)
class SkippedRecord:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class ReadResult:
    """The examples of one file, in file order, and every record that gave none."""

    path: str
    format: str
    records: int  # records seen, including skipped ones
    examples: tuple[ImitationExample, ...]
    skipped: tuple[SkippedRecord, ...]

    def summary(self) -> str:
        lines = [f"{self.path} ({self.format}): {len(self.examples)} examples from "
                 f"{self.records - len(self.skipped)} of {self.records} records; "
                 f"{len(self.skipped)} skipped"]
        lines += [f"  skipped line {skip.line}: {skip.reason}" for skip in self.skipped]
        return "\n".join(lines)


# --- Record streams: (line where the record starts, record) in file order -------------------------

@dataclasses.dataclass(frozen=True)
class _Unparsable:
    """A JSON-lines line that is not valid JSON; a bad record like any other."""

    reason: str


def _json_array_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    # Decode one element at a time (instead of json.loads on the whole file) to learn the line
    # where each record starts; the C scanner does the work either way.
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)

    def skip_space(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def decode(pos: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, err.lineno,
                                  f"invalid JSON: {err.msg} (column {err.colno})") from None

    pos = skip_space(0)
    if not text.startswith("[", pos):
        if pos < len(text) and text[pos] == "{":
            raise DataFormatError(path, lines.line_at(pos),
                                  "expected a JSON array of records, found one object")
        decode(pos)  # reports invalid JSON where it is
        raise DataFormatError(path, lines.line_at(pos), "expected a JSON array of records")
    pos = skip_space(pos + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            record, end = decode(pos)
            yield lines.line_at(pos), record
            pos = skip_space(end)
            if text.startswith(",", pos):
                pos = skip_space(pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise DataFormatError(path, lines.line_at(pos),
                                      "invalid JSON: expected ',' or ']' after a record")
    pos = skip_space(pos)
    if pos < len(text):
        raise DataFormatError(path, lines.line_at(pos), "unexpected content after the JSON array")


def _json_lines_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # blank lines separate nothing and hold no record
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as err:
            yield line, _Unparsable(f"invalid JSON: {err.msg} (column {err.colno})")


class _LineCounter:
    """Line numbers of increasing offsets without rescanning the text from the start."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def line_at(self, pos: int) -> int:
        if pos < self.pos:
            return 1 + self.text.count("\n", 0, pos)
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


CONTAINERS: dict[str, Callable[[Path, str], Iterator[tuple[int, Any]]]] = {
    "json_array": _json_array_records,
    "json_lines": _json_lines_records,
}


# --- Field access with errors that say which key is wrong -----------------------------------------

def _require_object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {_json_type(record)}")
    return record


def _typed(record: dict, key: str, kind: type, kind_name: str, where: str):
    if key not in record:
        raise RecordError(f"{where}missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise RecordError(f"{where}{key!r} must be {kind_name}, got {_json_type(value)}")
    return value


def _string(record: dict, key: str, *, where: str = "") -> str:
    return _typed(record, key, str, "a string", where)


def _list(record: dict, key: str, *, where: str = "") -> list:
    return _typed(record, key, list, "a list", where)


def _record_key(record: dict, line: int) -> str:
    """The record's own id where it has one, else its line: stable for an unchanged file."""
    if "id" not in record:
        return f"line{line}"
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise RecordError(f"'id' must be a non-empty string or integer, got {value!r}")
    return str(value)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _turn(role: str, text: str, *, where: str) -> Turn:
    try:
        return Turn(role, text)
    except ValueError as err:
        raise RecordError(f"{where}{err}") from None


def _dialogue(turns: list[Turn], source: str, id_prefix: str) -> list[ImitationExample]:
    try:
        return examples_from_dialogue(turns, source, id_prefix)
    except ValueError as err:
        raise RecordError(str(err)) from None


# --- The formats ----------------------------------------------------------------------------------

# ShareGPT speaker -> (role, the model that wrote the turn when it is not ChatGPT).
SHAREGPT_SPEAKERS: dict[str, tuple[str, str | None]] = {
    "system": ("system", None),
    "human": ("user", None),
    "user": ("user", None),
    "gpt": ("assistant", None),
    "chatgpt": ("assistant", None),
    "assistant": ("assistant", None),
    "bing": ("assistant", "bing"),
    "bard": ("assistant", "bard"),
}


def _sharegpt(record: Any, line: int) -> list[ImitationExample]:
    record = _require_object(record)
    key = _record_key(record, line)
    turns, other_models = [], set()
    for index, message in enumerate(_list(record, "conversations")):
        where = f"conversations[{index}]: "
        if not isinstance(message, dict):
            raise RecordError(f"{where}expected an object, got {_json_type(message)}")
        speaker = _string(message, "from", where=where)
        if speaker.lower() not in SHAREGPT_SPEAKERS:
            raise RecordError(f"{where}unknown speaker {speaker!r}; known: "
                              f"{', '.join(SHAREGPT_SPEAKERS)}")
        role, model = SHAREGPT_SPEAKERS[speaker.lower()]
        if model:
            other_models.add(model)
        turns.append(_turn(role, _string(message, "value", where=where), where=where))
    source = "/".join(["sharegpt", *sorted(other_models)])
    return _dialogue(turns, source, f"sharegpt:{key}")


def _hc3(record: Any, line: int) -> list[ImitationExample]:
    record = _require_object(record)
    question = _turn("user", _string(record, "question"), where="question: ")
    subset = _string(record, "source") if "source" in record else ""
    # HC3 numbers its records per subset, so the subset is part of the record's key.
    key = _record_key(record, line)
    key = f"{subset}/{key}" if subset and "id" in record else key
    if "human_answers" in record:
        _list(record, "human_answers")  # checked for shape only: never a target
    examples = []
    for index, answer in enumerate(_list(record, "chatgpt_answers")):
        if not isinstance(answer, str) or not answer.strip():
            raise RecordError(f"chatgpt_answers[{index}] must be a non-empty string, "
                              f"got {answer!r}")
        examples.append(ImitationExample(
            example_id=f"hc3:{key}:{index}", history=(question,), target=answer,
            source=f"hc3/{subset}" if subset else "hc3"))
    return examples


OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user",
                "assistant": "assistant"}


def _openai_chat(record: Any, line: int) -> list[ImitationExample]:
    record = _require_object(record)
    key = _record_key(record, line)
    turns = []
    for index, message in enumerate(_list(record, "messages")):
        where = f"messages[{index}]: "
        if not isinstance(message, dict):
            raise RecordError(f"{where}expected an object, got {_json_type(message)}")
        role = _string(message, "role", where=where)
        if role not in OPENAI_ROLES:
            raise RecordError(f"{where}unsupported role {role!r}; supported: "
                              f"{', '.join(OPENAI_ROLES)}")
        turns.append(_turn(OPENAI_ROLES[role], _string(message, "content", where=where),
                           where=where))
    return _dialogue(turns, "openai_chat", f"openai_chat:{key}")


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The user turn of an Alpaca record: instruction, then a blank line and the input if any."""
    instruction, input_text = instruction.strip(), input_text.strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def _alpaca(record: Any, line: int) -> list[ImitationExample]:
    record = _require_object(record)
    key = _record_key(record, line)
    input_text = _string(record, "input") if "input" in record else ""
    user = _turn("user", alpaca_prompt(_string(record, "instruction"), input_text),
                 where="instruction: ")
    output = _string(record, "output")
    if not output.strip():
        raise RecordError("'output' is empty")
    return [ImitationExample(example_id=f"alpaca:{key}", history=(user,), target=output,
                             source="alpaca")]


@dataclasses.dataclass(frozen=True)
class Reader:
    """How one format is stored (`container`) and how one record becomes examples."""

    container: str
    parse: Callable[[Any, int], list[ImitationExample]]
    no_examples: str  # why a well-formed record gave no example

    def __post_init__(self):
        if self.container not in CONTAINERS:
            raise ValueError(f"Reader.container={self.container!r} is not one of "
                             f"{', '.join(CONTAINERS)}")


READERS: dict[str, Reader] = {
    "sharegpt": Reader("json_array", _sharegpt, "conversation has no assistant turn"),
    "hc3": Reader("json_lines", _hc3, "no chatgpt_answers"),
    "openai_chat": Reader("json_lines", _openai_chat, "messages have no assistant turn"),
    "alpaca": Reader("json_array", _alpaca, "record gave no example"),
}


def read_examples(path: str | os.PathLike, format: str, *, skip_bad: bool = False) -> ReadResult:
    """All examples of one file in file order; see the module docstring for the error policy."""
    if format not in READERS:
        close = difflib.get_close_matches(format, READERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown imitation data format {format!r}{hint}; known: "
                         f"{', '.join(READERS)}")
    reader, path = READERS[format], Path(path)
    text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    examples, skipped, first_line_of_id, records = [], [], {}, 0
    for line, record in CONTAINERS[reader.container](path, text):
        records += 1
        try:
            if isinstance(record, _Unparsable):
                raise RecordError(record.reason)
            found = reader.parse(record, line)
            for example in found:
                if example.example_id in first_line_of_id:
                    raise RecordError(f"example id {example.example_id!r} repeats the one from "
                                      f"line {first_line_of_id[example.example_id]}")
        except RecordError as err:
            if not skip_bad:
                raise DataFormatError(path, line, str(err)) from None
            skipped.append(SkippedRecord(str(path), line, str(err)))
            continue
        if not found:
            skipped.append(SkippedRecord(str(path), line, reader.no_examples))
        for example in found:
            first_line_of_id[example.example_id] = line
        examples.extend(found)
    return ReadResult(path=str(path), format=format, records=records, examples=tuple(examples),
                      skipped=tuple(skipped))


def first_n(examples: Iterable[ImitationExample], n: int) -> list[ImitationExample]:
    """Exactly the first `n` examples in file order; an error when fewer exist."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"first_n needs a non-negative integer count, got {n!r}")
    taken = list(itertools.islice(examples, n))
    if len(taken) < n:
        raise ValueError(f"asked for the first {n} examples but only {len(taken)} exist")
    return taken
