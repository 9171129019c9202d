"""Collecting a target's answers through the OpenAI batch interface: about half the price of
asking online, answered within 24 hours, into the same cache `collection.collect` writes.

    result = collect_batch(OpenAIChatTarget("https://api.openai.com/v1", "gpt-4o-mini"),
                           prompts, GenerationSettings(max_tokens=512), "answers.jsonl")

The prompts not yet settled in the cache (the rules of `collect`) become one JSONL request file
(`custom_id` = the cache key); it is uploaded, a batch is created over it, polled until it ends,
and every result line becomes a cache record with `mode: "batch"` and the batch's id. Prompts
that failed transiently (HTTP 429/5xx, `batch_expired`, server errors) go again in a new, smaller
batch of only them, up to `max_attempts` batches per prompt; permanent failures (HTTP 400, an
empty answer) are recorded and not asked again.

Never paying twice: a state file beside the cache (`<cache>.batch.json`, replaced atomically)
records each step as it happens: the batch's prompts, then the uploaded file's id, then the
batch's id. A collector killed and started again carries on from the last step recorded: it
creates the batch from the uploaded file (no second upload), or polls the same batch. A kill
after the create request was sent but before its id was recorded is covered by the batch's
metadata: it carries a hash of the request file and a random id of the state, and before creating
a batch the collector looks for one with that metadata and adopts it. Once a batch's results are
all in the cache the state file is removed.

A batch that ends `expired` or `cancelled` keeps what it answered; the rest count as transient
failures (an expired batch's are asked again now, a cancelled batch's on the next run: someone
chose to stop it). A batch that ends `failed` (the file did not validate) raises an error naming
the batch and its errors and removes the state file, so a rerun uploads afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from arch_compare.imitation.batch_api import BatchAPI, BatchAPIError, CHAT_ENDPOINT
from arch_compare.imitation.collection import (CacheError, CollectionResult, _CacheWriter,
                                               _latest, answer_record)
from arch_compare.imitation.openai_chat import (ERROR_BODY_CHARS, TRANSIENT_STATUSES,
                                                OpenAIChatTarget, _completion_reply)
from arch_compare.data.conversations import Turn
from arch_compare.imitation.targets import GenerationSettings, Prompt, Reply, cache_key

STATE_VERSION = 1
# Statuses after which a batch changes no more.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# Error codes of a result line worth asking again (a request that did not run or the server
# failed); any other code is the request's own fault.
TRANSIENT_CODES = frozenset({"batch_expired", "batch_cancelled", "request_timeout",
                             "server_error", "rate_limit_exceeded", "internal_error"})
# What one batch may hold (the OpenAI interface's limits are 50,000 requests and 200 MB); more
# prompts go in successive batches.
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 190_000_000
# How long polling rides out an unreachable batch interface before giving up (a rerun resumes).
MAX_POLL_OUTAGE_SECONDS = 3600.0
# Batches created this long before the state file are not searched when adopting one (server
# clocks differ from ours; the list is newest first, so this bounds how far it is read).
CLOCK_SLACK_SECONDS = 3600.0


class BatchFailedError(RuntimeError):
    """A batch the server refused as a whole (status `failed`)."""


def state_path_of(cache_path: str | os.PathLike) -> Path:
    """Where `collect_batch` records the batch in progress for `cache_path`."""
    path = Path(cache_path)
    return path.with_name(path.name + ".batch.json")


def collect_batch(target: OpenAIChatTarget, prompts: Sequence[Prompt],
                  settings: GenerationSettings, cache_path: str | os.PathLike, *,
                  poll_seconds: float = 30.0, max_attempts: int = 5, progress: bool = True,
                  sleep: Callable[[float], None] = time.sleep) -> CollectionResult:
    """Ask `target` for every prompt not yet settled in `cache_path` through the batch interface
    (see the module doc), polling every `poll_seconds`; `sleep` waits (tests pass a no-op)."""
    if not isinstance(target, OpenAIChatTarget):
        raise TypeError(f"collect_batch: the batch interface is OpenAI's: the target must be an "
                        f"OpenAIChatTarget (kind 'openai'), got {type(target).__name__} "
                        f"{getattr(target, 'name', '')!r}")
    if max_attempts < 1 or poll_seconds < 0:
        raise ValueError(f"collect_batch: max_attempts must be >= 1 and poll_seconds >= 0, got "
                         f"{max_attempts} and {poll_seconds}")
    path = Path(cache_path)
    unique = {cache_key(target.name, prompt, settings): prompt for prompt in prompts}
    latest, complete_size = _latest(path)
    cached = sum("response" in latest.get(key, {}) for key in unique)
    writer = _CacheWriter(path, complete_size)  # the lock also guards the state file
    rounds: dict[str, int] = {}  # batches each prompt has been in during this call
    stopped: set[str] = set()  # in a cancelled batch: left for the next run

    def pending() -> list[str]:
        return [key for key in unique
                if "response" not in latest.get(key, {})
                and latest.get(key, {}).get("transient", True)
                and rounds.get(key, 0) < max_attempts and key not in stopped]

    collected = 0
    try:
        state = _load_state(state_path_of(path), target)
        with tqdm(total=len(pending()), desc=f"batch {target.name}", unit="prompt",
                  disable=not progress) as bar:
            run = _BatchRun(BatchAPI(target, sleep=sleep), writer, latest, state_path_of(path),
                            bar, progress, poll_seconds, sleep)
            while True:
                if state is None:
                    keys = _first_batch(pending(), unique, target.model, settings)
                    if not keys:
                        break
                    state = _new_state(target, settings, {key: unique[key] for key in keys},
                                       {key: rounds.get(key, 0) + 1 for key in keys})
                    _save_state(state_path_of(path), state)
                    again = sum(key in rounds for key in keys)
                    if again:
                        run.say(f"{again} prompts that failed transiently go in a new batch")
                status, written = run.run(state)
                for key, record in written.items():
                    rounds[key] = state["requests"][key]["attempt"]
                    collected += key in unique and "response" in record
                    if status == "cancelled" and "error" in record:
                        stopped.add(key)
                state_path_of(path).unlink(missing_ok=True)
                state = None
                bar.n = bar.total - len(pending())  # settled (or left for the next run)
                bar.refresh()
    finally:
        writer.close()
    return CollectionResult.of(path, unique, latest, cached=cached, collected=collected)


class _BatchRun:
    """Carries one batch (a state) from wherever it stands to its records in the cache."""

    def __init__(self, api: BatchAPI, writer: _CacheWriter, latest: dict[str, dict],
                 state_path: Path, bar: tqdm, progress: bool, poll_seconds: float,
                 sleep: Callable[[float], None]):
        self.api, self.writer, self.latest, self.state_path = api, writer, latest, state_path
        self.bar, self.progress, self.poll_seconds, self.sleep = bar, progress, poll_seconds, sleep

    def say(self, line: str) -> None:
        if self.progress:
            tqdm.write(line)

    def run(self, state: dict) -> tuple[str, dict[str, dict]]:
        """(the batch's final status, key -> the record written now for it; none for a key
        recorded before a restart)."""
        if "input_file_id" not in state:
            data = _request_file(state)
            state["input_file_id"] = self.api.upload(f"{state['nonce']}.jsonl", data)
            _save_state(self.state_path, state)
            self.say(f"uploaded {len(state['requests'])} requests as file "
                     f"{state['input_file_id']}")
        if "batch_id" not in state:
            state["batch_id"] = self._create(state)
            _save_state(self.state_path, state)
        batch = self._poll(state["batch_id"], len(state["requests"]))
        if batch["status"] == "failed":
            self.state_path.unlink(missing_ok=True)  # nothing of it ran: a rerun starts afresh
            raise BatchFailedError(
                f"batch {batch['id']} (file {state['input_file_id']}) failed: "
                f"{_errors_text(batch)}; its state file {self.state_path} was removed, so "
                f"running again uploads a new batch")
        return batch["status"], self._record(state, batch)

    def _create(self, state: dict) -> str:
        metadata = {"arch_compare_request": state["request_sha256"],
                    "arch_compare_state": state["nonce"]}
        for attempt in range(1, self.api.max_tries + 1):
            # A create whose answer was lost (a kill, a dropped connection) may have made it.
            found = self.api.find(metadata, state["started_at"] - CLOCK_SLACK_SECONDS)
            if found is not None:
                self.say(f"adopting batch {found['id']}, created for these requests before "
                         f"(a restart or a lost answer)")
                return found["id"]
            try:
                batch = self.api.create(state["input_file_id"], metadata)
            except BatchAPIError as error:
                if not error.transient or attempt == self.api.max_tries:
                    raise
                self.sleep(max(min(60.0, 2.0 ** attempt), error.retry_after or 0.0))
                continue
            if not isinstance(batch.get("id"), str):
                raise BatchAPIError(f"creating a batch answered no id: "
                                    f"{json.dumps(batch)[:ERROR_BODY_CHARS]}")
            self.say(f"created batch {batch['id']} of {len(state['requests'])} requests")
            return batch["id"]
        raise AssertionError("unreachable")

    def _poll(self, batch_id: str, size: int) -> dict:
        status, start, failed_polls = None, self.bar.n, 0
        while True:
            try:
                batch = self.api.get(batch_id)
            except BatchAPIError as error:
                # Polling is free and a batch runs for hours: ride out an outage of the interface
                # (each failed poll already retried with backoff) up to about an hour.
                failed_polls += 1
                if not error.transient or failed_polls * max(self.poll_seconds, 60.0) > \
                        MAX_POLL_OUTAGE_SECONDS:
                    raise
                self.say(f"batch {batch_id}: polling failed ({error}); trying again")
                self.sleep(self.poll_seconds)
                continue
            failed_polls = 0
            if batch.get("status") != status:
                status = batch.get("status")
                self.say(f"batch {batch_id}: {status}")
            counts = batch.get("request_counts") or {}
            done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
            self.bar.n = start + min(done, size)
            self.bar.refresh()
            if status in TERMINAL:
                return batch
            self.sleep(self.poll_seconds)

    def _record(self, state: dict, batch: dict) -> dict[str, dict]:
        """Writes a record for every request of the batch not yet recorded from it (a kill
        between these writes and the state file's removal leaves some recorded)."""
        replies: dict[str, Reply] = {}
        for field in ("output_file_id", "error_file_id"):
            if batch.get(field):
                text = self.api.content(batch[field]).decode("utf-8")
                for number, line in enumerate(text.splitlines(), start=1):
                    if line.strip():
                        key, reply = _line_reply(line, f"batch {batch['id']} {field} "
                                                       f"{batch[field]} line {number}")
                        replies[key] = reply
        settings = GenerationSettings(**state["settings"])
        written = {}
        for key, request in state["requests"].items():
            reply = replies.get(key) or Reply(
                error=f"batch {batch['id']} ended {batch['status']} with no result for this "
                      f"request",
                transient=True)
            known = self.latest.get(key, {})
            if "response" in known or known.get("batch_id") == batch["id"]:
                continue  # recorded before a restart
            prompt = Prompt(request["prompt_id"],
                            tuple(Turn(m["role"], m["content"]) for m in request["messages"]))
            record = answer_record(key, prompt, settings, state["target"], reply,
                                   request["attempt"], mode="batch", batch_id=batch["id"])
            self.writer.write(record)
            self.latest[key] = written[key] = record
        return written


def _line_reply(line: str, where: str) -> tuple[str, Reply]:
    """(custom_id, reply) of one line of a batch's output or error file."""
    try:
        result = json.loads(line)
        key, response, error = result["custom_id"], result.get("response"), result.get("error")
        status = int(response["status_code"]) if isinstance(response, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError) as failure:
        raise BatchAPIError(f"{where}: not a batch result ({type(failure).__name__}: "
                            f"{failure}): {line[:ERROR_BODY_CHARS]}") from None
    if status is not None:
        body = response.get("body")
        if status == 200 and not error:
            return key, _completion_reply(where, json.dumps(body).encode(), None)
        detail = body.get("error") if isinstance(body, dict) else None
        message = (detail.get("message") if isinstance(detail, dict) else None) or json.dumps(
            body)[:ERROR_BODY_CHARS]
        return key, Reply(error=f"{where}: HTTP {status}: {message}",
                          transient=status in TRANSIENT_STATUSES or status >= 500)
    error = error if isinstance(error, dict) else {"message": json.dumps(error)}
    return key, Reply(error=f"{where}: {error.get('code')}: {error.get('message')}",
                      transient=error.get("code") in TRANSIENT_CODES)


def _errors_text(batch: dict) -> str:
    errors = (batch.get("errors") or {}).get("data") or []
    return "; ".join(f"{error.get('code')}: {error.get('message')}"
                     + (f" (line {error['line']})" if error.get("line") is not None else "")
                     for error in errors) or "the server gave no reason"


# --- The state file ----------------------------------------------------------------------------

def _new_state(target: OpenAIChatTarget, settings: GenerationSettings,
               prompts: dict[str, Prompt], attempts: dict[str, int]) -> dict:
    state = {"version": STATE_VERSION, "target": target.name, "model": target.model,
             "settings": settings.to_dict(), "nonce": secrets.token_hex(8),
             "started_at": time.time(),
             "requests": {key: {"prompt_id": prompt.prompt_id, "messages": prompt.messages(),
                                "attempt": attempts[key]} for key, prompt in prompts.items()}}
    state["request_sha256"] = hashlib.sha256(_request_file(state)).hexdigest()
    return state


def _first_batch(keys: list[str], prompts: dict[str, Prompt], model: str,
                 settings: GenerationSettings) -> list[str]:
    """The longest prefix of `keys` whose request file fits one batch (at least one key)."""
    size = 0
    for count, key in enumerate(keys[:MAX_BATCH_REQUESTS]):
        size += len(_request_line(key, model, prompts[key].messages(), settings.to_dict()))
        if size > MAX_BATCH_BYTES and count:
            return keys[:count]
    return keys[:MAX_BATCH_REQUESTS]


def _request_line(key: str, model: str, messages: list[dict], settings: dict) -> bytes:
    """One request of a batch: the chat-completions body `collect` sends online."""
    return (json.dumps({"custom_id": key, "method": "POST", "url": CHAT_ENDPOINT,
                        "body": {"model": model, "messages": messages, **settings}},
                       ensure_ascii=False) + "\n").encode()


def _request_file(state: dict) -> bytes:
    """The JSONL the batch runs, one line per prompt."""
    return b"".join(_request_line(key, state["model"], request["messages"], state["settings"])
                    for key, request in state["requests"].items())


def _save_state(path: Path, state: dict) -> None:
    """Replaces the state file whole (a kill leaves the old one or the new one, never half)."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        json.dump(state, handle, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def _load_state(path: Path, target: OpenAIChatTarget) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if state["version"] != STATE_VERSION or not isinstance(state["requests"], dict):
            raise ValueError(f"version {state['version']}")
    except (ValueError, KeyError, TypeError) as error:
        raise CacheError(f"{path}: not a batch state file ({error}); it records a batch that "
                         f"may be paid for: look it up before removing the file") from None
    if state["target"] != target.name:
        raise CacheError(f"{path}: records a batch for target {state['target']!r}, not "
                         f"{target.name!r}; finish it with that target first")
    return state
