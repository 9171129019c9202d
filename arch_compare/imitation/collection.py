"""Collecting a target's answers: many requests in flight, under rate limits, cached, resumable
and retried.

    result = collect(target, prompts, GenerationSettings(max_tokens=512), "answers.jsonl",
                     concurrency=32, requests_per_minute=500, tokens_per_minute=200_000)
    export_openai_chat("answers.jsonl", "imitation.jsonl")  # successes only, as training data

`concurrency` workers (threads; one at a time runs on the calling thread) each send one call of
`batch_size` prompts at a time, so at most `concurrency` calls are in flight. Every call first
waits for the workers' shared `RateLimiter` (`rate_limits.py`): at most `requests_per_minute`
requests and `tokens_per_minute` tokens (the prompt at 4 characters per token plus `max_tokens`,
as OpenAI counts them) reach the server in any window of `window_seconds`. When the server pushes
back (a transient error with `Retry-After`, or an HTTP 429 without it) every worker waits, not
only the one refused: the others would otherwise keep it refusing. A transient error is retried
with exponential backoff and jitter, up to `max_attempts` in all.

The cache (`collection_cache.py`: its format and what a rerun does) has one writer, the calling
thread, which stores settled prompts as they arrive, in the order they settle (those that arrived
together with one fsync). A worker starts no call while an answer it received is unwritten, so a
collector killed at any moment loses only the answers in flight, and a rerun asks nothing it has.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import queue
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from tqdm import tqdm

from arch_compare.imitation.collection_cache import (
    RECORD_FIELDS, CacheError, CollectedAnswer, CollectionResult, _CacheWriter, _latest,
    answer_record, export_openai_chat, load_collected)
from arch_compare.imitation.rate_limits import (LimiterStopped, RateLimiter, batch_tokens,
                                                is_rate_limited)
from arch_compare.imitation.targets import (GenerationSettings, Prompt, Reply, Target,
                                           cache_key)

if TYPE_CHECKING:
    from arch_compare.imitation.config import CollectionSettings

# The cache's names are importable from here too (the batch collector writes the same cache).
__all__ = ["RECORD_FIELDS", "CacheError", "CachedTarget", "CollectedAnswer", "CollectionResult",
           "_CacheWriter", "_latest", "answer_record", "collect", "collect_with",
           "export_openai_chat", "load_collected"]


@dataclasses.dataclass(frozen=True)
class _Retries:
    max_attempts: int
    backoff: float
    max_backoff: float

    def delay(self, attempt: int, reply: Reply) -> float:
        """Exponential (backoff * 2**(attempt-1)), capped, with up to 50% jitter so that clients
        failing together do not retry together; never sooner than the server's Retry-After
        (which `max_backoff` does not cap: the server knows how long it needs)."""
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay *= 1 + 0.5 * random.random()
        return max(delay, reply.retry_after or 0.0)


def collect(target: Target, prompts: Sequence[Prompt], settings: GenerationSettings,
            cache_path: str | os.PathLike, *, concurrency: int = 1,
            requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
            window_seconds: float = 60.0, max_attempts: int = 5, backoff: float = 1.0,
            max_backoff: float = 60.0, batch_size: int | None = None,
            retry_failed: bool = False, progress: bool = True) -> CollectionResult:
    """Ask `target` for every prompt not yet answered in `cache_path` (see the module doc).

    `batch_size` prompts go to the target per call (default: the target's own `batch_size`, else
    1), each counted as one request; a transient error is retried up to `max_attempts` times in
    all, `backoff` seconds after the first failure, doubling up to `max_backoff`. The limits count
    per `window_seconds` (60 unless a test shortens it). A call that alone is over a limit is a
    `rate_limits.RateLimitError` before anything is sent.
    """
    if max_attempts < 1 or backoff < 0 or max_backoff < 0:
        raise ValueError("collect: max_attempts must be >= 1 and backoff, max_backoff >= 0")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"collect: concurrency must be a positive integer, got {concurrency!r}")
    batch_size = batch_size or getattr(target, "batch_size", 1)
    if batch_size < 1:
        raise ValueError(f"collect: batch_size must be positive, got {batch_size}")
    limiter = RateLimiter(requests_per_minute, tokens_per_minute, window_seconds=window_seconds)
    path = Path(cache_path)
    unique = {cache_key(target.name, prompt, settings): prompt for prompt in prompts}
    latest, complete_size = _latest(path)

    def settled(key: str) -> bool:
        record = latest.get(key)
        return record is not None and ("response" in record or not (
            record.get("transient") or retry_failed))

    cached = sum("response" in latest.get(key, {}) for key in unique)
    pending = [key for key in unique if not settled(key)]
    batches = [[(key, unique[key]) for key in pending[start:start + batch_size]]
               for start in range(0, len(pending), batch_size)]
    for batch in batches:  # a call that could never start is refused before any is sent
        limiter.check(len(batch), batch_tokens([prompt for _, prompt in batch], settings),
                      f"collect: prompts {', '.join(repr(p.prompt_id) for _, p in batch)}")
    retries = _Retries(max_attempts, backoff, max_backoff)
    writer = _CacheWriter(path, complete_size)
    collected = 0
    try:
        with _Workers(target, batches, settings, limiter, retries, concurrency) as workers, \
                tqdm(total=len(pending), desc=f"collect {target.name}", unit="prompt",
                     disable=not progress) as bar:
            for settled in workers.settled(len(pending)):
                records = [answer_record(key, unique[key], settings, target.name, reply, attempts)
                           for key, reply, attempts in settled]
                writer.write_many(records)
                for record in records:
                    collected += "response" in record
                    latest[record["key"]] = record
                bar.update(len(records))
    finally:
        writer.close()
    return CollectionResult.of(path, unique, latest, cached=cached, collected=collected)


class _Workers:
    """Threads that ask the target for `batches`, at most `concurrency` calls at once, and hand
    each settled prompt to the one writer. A worker starts no call while an answer it received is
    unwritten, so a kill loses at most one call's answers per worker. Leaving the `with` block
    (done, an error, Ctrl-C) stops them: no call starts after it, and the answers of calls in
    flight are not written."""

    def __init__(self, target: Target, batches: list[list[tuple[str, Prompt]]],
                 settings: GenerationSettings, limiter: RateLimiter, retries: _Retries,
                 concurrency: int):
        self._target, self._settings, self._limiter, self._retries = (target, settings, limiter,
                                                                      retries)
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        for batch in batches:
            self._work.put(batch)
        self._settled: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        # Daemons: a worker waiting on a slow server must not keep a stopped collector alive.
        # One at a time runs on the calling thread instead, in whatever contexts it set (a
        # default device, a model called in step with other hosts).
        self._threads = [threading.Thread(target=self._run, name=f"collect-{index}", daemon=True)
                         for index in range(min(concurrency, len(batches)))
                         if concurrency > 1]

    def __enter__(self) -> "_Workers":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()
        self._limiter.stop()

    def settled(self, count: int) -> Iterator[list[tuple[str, Reply, int]]]:
        """(key, final reply, attempts) of `count` prompts, in lists of those settled since the
        last (to be stored with one fsync); their workers wait until the caller asks for the next
        list (it has stored these). A worker's exception is raised here."""
        while count > 0 and not self._threads:  # one at a time, on this thread
            for item in _ask(self._target, self._work.get_nowait(), self._settings,
                             self._limiter, self._retries, self._stopping):
                count -= 1
                yield [item]
        while count > 0:
            items = [self._settled.get()]
            while True:
                try:
                    items.append(self._settled.get_nowait())
                except queue.Empty:
                    break
            answers = [item for item in items if not isinstance(item, BaseException)]
            if answers:  # stored even when another worker failed
                yield [item[:3] for item in answers]
                for item in answers:
                    item[3].set()
            for item in items:
                if isinstance(item, BaseException):
                    raise item
            count -= len(items)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    batch = self._work.get_nowait()
                except queue.Empty:
                    return
                for item in _ask(self._target, batch, self._settings, self._limiter,
                                 self._retries, self._stopping):
                    written = threading.Event()
                    self._settled.put((*item, written))
                    while not written.wait(0.5):
                        if self._stopping.is_set():
                            return
        except LimiterStopped:
            return
        except BaseException as error:  # noqa: BLE001 (raised again by the writer's thread)
            self._settled.put(error)


def _ask(target: Target, batch: list[tuple[str, Prompt]], settings: GenerationSettings,
         limiter: RateLimiter, retries: _Retries, stopping: threading.Event
         ) -> Iterator[tuple[str, Reply, int]]:
    """(key, final reply, attempts) for each prompt of `batch`, as each is settled: retries go
    to the target together, after the longest delay any of them needs."""
    for attempt in range(1, retries.max_attempts + 1):
        ticket = limiter.acquire(len(batch),
                                 batch_tokens([prompt for _, prompt in batch], settings))
        try:
            replies = target.complete([prompt for _, prompt in batch], settings)
        finally:
            limiter.release(ticket)
        if len(replies) != len(batch):
            raise RuntimeError(f"target {target.name!r} returned {len(replies)} replies for "
                               f"{len(batch)} prompts")
        transient = [index for index, reply in enumerate(replies)
                     if reply.error and reply.transient]
        delays = {index: retries.delay(attempt, replies[index]) for index in transient}
        pushed_back = [replies[index].retry_after if replies[index].retry_after is not None
                       else delays[index] for index in transient
                       if is_rate_limited(replies[index])]
        if pushed_back:  # every worker waits, or the others would keep the server refusing
            limiter.back_off(max(pushed_back))
        retry = transient if attempt < retries.max_attempts else []
        for index, ((key, _), reply) in enumerate(zip(batch, replies)):
            if index not in retry:
                yield key, reply, attempt
        if not retry or stopping.wait(max(delays[index] for index in retry)):
            return
        batch = [batch[index] for index in retry]


# --- How a study buys its answers -----------------------------------------------------------------

def _collect_online(settings: CollectionSettings, target: Target, prompts: Sequence[Prompt],
                    generation: GenerationSettings, cache_path: str | os.PathLike,
                    progress: bool) -> CollectionResult:
    return collect(target, prompts, generation, cache_path, concurrency=settings.concurrency,
                   requests_per_minute=settings.requests_per_minute,
                   tokens_per_minute=settings.tokens_per_minute,
                   max_attempts=settings.max_attempts, progress=progress)


def _collect_batch(settings: CollectionSettings, target: Target, prompts: Sequence[Prompt],
                   generation: GenerationSettings, cache_path: str | os.PathLike,
                   progress: bool) -> CollectionResult:
    # Imported here: the batch interface is only needed by studies that use it.
    batch_collection = importlib.import_module("arch_compare.imitation.batch_collection")
    return batch_collection.collect_batch(target, prompts, generation, cache_path,
                                          poll_seconds=settings.batch_poll_seconds,
                                          max_attempts=settings.max_attempts, progress=progress)


COLLECTION_MODES: dict[str, Callable[..., CollectionResult]] = {
    "online": _collect_online, "batch": _collect_batch}


def collect_with(settings: CollectionSettings, target: Target, prompts: Sequence[Prompt],
                 generation: GenerationSettings, cache_path: str | os.PathLike, *,
                 progress: bool = True) -> CollectionResult:
    """Collect as a study's `collection` settings say: online (`collect`, with their
    concurrency, limits and attempts) or through the batch interface."""
    return COLLECTION_MODES[settings.mode](settings, target, prompts, generation, cache_path,
                                           progress)


@dataclasses.dataclass(frozen=True)
class CachedTarget:
    """A target whose answers go through a collection cache: each prompt is asked once (with
    retries), a restarted caller reuses what was already paid for, and a prompt that still has
    no answer comes back as an error reply, never as empty text."""

    target: Target
    cache_path: Path
    progress: bool = True

    @property
    def name(self) -> str:
        return self.target.name

    def complete(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Reply]:
        collect(self.target, prompts, settings, self.cache_path, progress=self.progress)
        answers = {answer.key: answer.response for answer in load_collected(self.cache_path)}
        keys = [cache_key(self.target.name, prompt, settings) for prompt in prompts]
        return [Reply(text=answers[key]) if key in answers else
                Reply(error=f"no answer in {self.cache_path} (its last error is recorded there; "
                            f"run again to retry)")
                for key in keys]
