"""The collection cache: one append-only JSON-lines file of answers, read and written here
(`collection.collect` fills it online, `batch_collection.collect_batch` through the batch
interface).

Every record carries the answer's `key` (`cache_key(target.name, prompt, settings)`), the prompt
id, the messages, the settings, the target's name and either `response` (the answer, with its
`usage` where known) or `error` (with `transient`), and the number of `attempts`. Each record is
flushed and fsynced as it is written, by the collector's one writer, so a collector killed at any
moment loses at most the answers in flight; running it again skips every key already answered.

What a rerun does with a key, by its records so far:
- any `response`: done, never asked again (one success per key, so nothing is duplicated);
- last record a transient error (retries ran out: a server down, rate limits): asked again;
- last record a permanent error (HTTP 400, an empty answer): kept as it is unless
  `retry_failed=True`.

A kill can leave the last line cut short (no final newline); it is dropped and overwritten. Any
other line that does not parse is an error naming `file:line`: the file was edited or damaged,
and guessing would risk answers silently lost or duplicated. Two collectors cannot append to one
file at once (an exclusive lock says so). Errors are recorded to be seen, never exported.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from arch_compare.data.conversations import Turn
from arch_compare.imitation.targets import GenerationSettings, Prompt, Reply, TokenUsage

# Every record has these; a success adds `response` (and `usage` where the target counts tokens),
# a failure `error`, `transient`; both add `attempts`.
RECORD_FIELDS = ("key", "prompt_id", "messages", "settings", "target")


class CacheError(ValueError):
    """A cache file that cannot be read safely (the message names file:line)."""


@dataclasses.dataclass(frozen=True)
class CollectionResult:
    """What a `collect` call found and did; every count is in distinct prompts (cache keys)."""

    path: Path
    total: int  # distinct prompts asked for
    cached: int  # answered before this call
    collected: int  # answered by this call
    failed: int  # permanent errors: not retried unless retry_failed=True
    retry_later: int  # transient errors that ran out of attempts: asked again next time

    def __post_init__(self):
        counts = (self.cached, self.collected, self.failed, self.retry_later)
        if min(counts) < 0 or sum(counts) != self.total:
            raise ValueError(f"CollectionResult: counts {counts} must be >= 0 and add up to "
                             f"total={self.total}")

    def __str__(self) -> str:
        return (f"{self.total} prompts: {self.cached} already answered, {self.collected} "
                f"answered now, {self.failed} failed, {self.retry_later} to retry next time "
                f"(cache {self.path})")

    @property
    def answered(self) -> int:
        return self.cached + self.collected

    @classmethod
    def of(cls, path: Path, keys, latest: dict[str, dict], *, cached: int,
           collected: int) -> "CollectionResult":
        """The counts of a finished call over `keys`, from each key's deciding record."""
        final = [latest.get(key) for key in keys]
        failures = [record for record in final if record is not None and "error" in record]
        return cls(path=path, total=len(final), cached=cached, collected=collected,
                   failed=sum(not record.get("transient") for record in failures),
                   retry_later=sum(bool(record.get("transient")) for record in failures))


@dataclasses.dataclass(frozen=True)
class CollectedAnswer:
    """A successful record of the cache."""

    key: str
    prompt: Prompt
    settings: GenerationSettings
    target: str
    response: str
    usage: TokenUsage | None = None  # what the target billed, where the record has it


# --- Reading the cache ----------------------------------------------------------------------------

def _records(path: Path) -> Iterator[tuple[int, int, dict]]:
    """(line number, offset after the line, record) for every complete line; a last line
    without its newline (a write cut short by a kill) is not complete."""
    offset = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                _check_record(record)
            except (ValueError, TypeError) as error:
                raise CacheError(f"{path}:{number}: not a cache record ({error}); the file was "
                                 f"edited or damaged — fix or remove that line") from None
            yield number, offset, record


def _check_record(record) -> None:
    if not isinstance(record, dict):
        raise TypeError(f"expected a JSON object, got {type(record).__name__}")
    missing = [name for name in RECORD_FIELDS if name not in record]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if ("response" in record) == ("error" in record):
        raise ValueError("needs exactly one of 'response' and 'error'")
    if "response" in record and not (isinstance(record["response"], str)
                                     and record["response"].strip()):
        raise ValueError("'response' must be a non-empty string")


def _latest(path: Path) -> tuple[dict[str, dict], int]:
    """key -> the record that decides it (its success, else its last error), and the size of the
    file's complete lines."""
    latest, size = {}, 0
    if path.exists():
        for _, size, record in _records(path):
            if "response" not in latest.get(record["key"], {}):
                latest[record["key"]] = record
    return latest, size


def load_collected(cache_path: str | os.PathLike, *, target: str | None = None
                   ) -> list[CollectedAnswer]:
    """Every answered prompt in the cache (one per key, in the order first answered), optionally
    only those of one target name."""
    answers = []
    for record in _latest(Path(cache_path))[0].values():
        if "response" in record and target in (None, record["target"]):
            turns = tuple(Turn(m["role"], m["content"]) for m in record["messages"])
            answers.append(CollectedAnswer(
                key=record["key"], prompt=Prompt(record["prompt_id"], turns),
                settings=GenerationSettings(**record["settings"]), target=record["target"],
                response=record["response"],
                usage=TokenUsage.from_dict(record["usage"]) if "usage" in record else None))
    return answers


def export_openai_chat(cache_path: str | os.PathLike, out_path: str | os.PathLike, *,
                       target: str | None = None) -> tuple[Path, int]:
    """Write the answered prompts as OpenAI chat JSONL (`{"id", "messages"}`, the answer as the
    last, assistant, message), the "openai_chat" format of `arch_compare_tasks.readers`.

    Note that the reader makes an example of every assistant turn; earlier assistant turns of a
    multi-turn history are exported as they were given. Ids must be unique: collect different
    targets or settings into different files, or pass `target`. Examples come in the order of
    their ids, not the order answered: concurrent workers and a resumed collector answer in
    an order that timing decides, and the training data must not depend on it.
    """
    answers = sorted(load_collected(cache_path, target=target),
                     key=lambda answer: answer.prompt.prompt_id)
    seen: dict[str, str] = {}
    for answer in answers:
        if answer.prompt.prompt_id in seen:
            raise ValueError(f"{cache_path}: prompt id {answer.prompt.prompt_id!r} is answered "
                             f"twice (keys {seen[answer.prompt.prompt_id][:12]}…, "
                             f"{answer.key[:12]}…: other settings or targets); export one "
                             f"target or settings at a time")
        seen[answer.prompt.prompt_id] = answer.key
    out = Path(out_path)
    return out, write_openai_chat(out, (answer_conversation(answer) for answer in answers))


def answer_conversation(answer: CollectedAnswer) -> tuple[str, list[dict]]:
    """(prompt id, the prompt's messages and the answer as the last, assistant, message)."""
    return answer.prompt.prompt_id, answer.prompt.messages() + [
        {"role": "assistant", "content": answer.response}]


def write_openai_chat(out: Path, conversations: Iterable[tuple[str, list[dict]]]) -> int:
    """(id, messages) pairs as OpenAI chat JSONL (`{"id", "messages"}`), written whole or not
    at all; the number written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    written = 0
    with partial.open("w", encoding="utf-8") as handle:
        for conversation_id, messages in conversations:
            handle.write(json.dumps({"id": conversation_id, "messages": messages},
                                    ensure_ascii=False) + "\n")
            written += 1
    partial.replace(out)  # readers never see half a file
    return written


# --- Writing the cache ----------------------------------------------------------------------------

def answer_record(key: str, prompt: Prompt, settings: GenerationSettings, target_name: str,
                  reply: Reply, attempts: int, **extra) -> dict:
    """The cache record of one settled prompt: its answer (with its usage) or its error.
    `extra` adds fields such as how it was bought (`mode`)."""
    record = {"key": key, "prompt_id": prompt.prompt_id, "messages": prompt.messages(),
              "settings": settings.to_dict(), "target": target_name}
    if reply.ok:
        record["response"] = reply.text
        if reply.usage is not None:
            record["usage"] = reply.usage.to_dict()
    else:
        record.update(error=reply.error or "the target answered with no text",
                      transient=bool(reply.error and reply.transient))
    return record | {"attempts": attempts, **extra}


class _CacheWriter:
    """Appends records durably to a cache file held under an exclusive lock."""

    def __init__(self, path: Path, complete_size: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("ab")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise CacheError(f"{path}: another collector is writing this cache") from None
        # Drop a line cut short by a kill; the locked file cannot have grown since it was read.
        self._handle.truncate(complete_size)

    def write(self, record: dict) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict]) -> None:
        """Several records with one fsync (what arrived together from concurrent workers):
        a disk that syncs in a millisecond would otherwise bound collection at ~1,000 answers/s."""
        self._handle.write(b"".join(json.dumps(record, ensure_ascii=False).encode() + b"\n"
                                    for record in records))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()  # also releases the lock
