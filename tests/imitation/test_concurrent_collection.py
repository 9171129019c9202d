"""Concurrent collection against a loopback fake of OpenAI's chat endpoint: the speed-up, a
SIGKILLed collector, the rate limits and backing off together, all measured from the SERVER's
log (what a provider would count), not from the client's own account."""

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from arch_compare.imitation.collection import collect, collect_with, export_openai_chat
from arch_compare.imitation.config import CollectionSettings
from arch_compare.imitation.openai_chat import OpenAIChatTarget
from arch_compare.imitation.rate_limits import RateLimiter, RateLimitError
from arch_compare.imitation.targets import GenerationSettings, Prompt, Reply
from tests.imitation.fake_openai_chat import (FakeOpenAIChat, FakeOpenAIChatProcess,
                                              fake_answer, prompt_hash, request_tokens)
from tests.imitation.test_collection import records

SETTINGS = GenerationSettings(max_tokens=16)
REPO = Path(__file__).resolve().parents[2]


def questions(count, tag="q", filler=0):
    """Prompts of varied lengths (`filler` adds up to that many characters)."""
    return [Prompt.from_text(f"{tag}{i:04d}",
                             f"Question {i} of {tag}?" + " x" * (i * 7 % (filler + 1)))
            for i in range(count)]


def endpoint(server):
    return OpenAIChatTarget(server.base_url, model="fake", timeout=30)


def most_in_any_window(log, window, weight=lambda entry: 1):
    """The largest total `weight` of requests that reached the server within any `window` seconds
    (a window holding the most starts begins at one of them)."""
    starts = sorted((entry.started, weight(entry)) for entry in log)
    best, total, first = 0, 0, 0
    for started, value in starts:
        total += value
        while starts[first][0] <= started - window:
            total -= starts[first][1]
            first += 1
        best = max(best, total)
    return best


def most_in_flight(log):
    events = sorted([(entry.started, 1) for entry in log] + [(entry.finished, -1) for entry in log])
    running = best = 0
    for _, change in events:
        running += change
        best = max(best, running)
    return best


def test_32_in_flight_overlap_and_each_prompt_is_answered_once(tmp_path):
    """32 requests really are in flight together, under the server's pushback. How much faster
    that is (the issue's 20x at 50 ms latency) is a speed target measured by
    benchmarks/collection_throughput.py, not here: a timed test on a shared 2-core machine would
    flake. The loose bound below only catches collection gone serial."""
    # The server runs in its own process, as it would on another machine: on 2 cores, a server in
    # the client's interpreter would compete for the client's lock. Its 429s ask for 10 ms: every
    # worker waits that long after each.
    with FakeOpenAIChatProcess(latency=0.05, rate_limit_every=20, retry_after="0.01") as server:
        target = endpoint(server)
        asked = questions(40, tag="one-")
        started = time.monotonic()
        result = collect(target, asked, SETTINGS, tmp_path / "one.jsonl", backoff=0.01,
                         progress=False)
        one_at_a_time = (time.monotonic() - started) / len(asked)
        assert (result.collected, result.failed, result.retry_later) == (40, 0, 0)
        asked = questions(320, tag="many-")
        began = time.monotonic()
        result = collect(target, asked, SETTINGS, tmp_path / "many.jsonl", concurrency=32,
                         backoff=0.01, progress=False)
        concurrent = (time.monotonic() - began) / len(asked)
        assert (result.collected, result.failed, result.retry_later) == (320, 0, 0)
        log = server.log
    refused = [entry for entry in log if entry.status == 429]
    assert len(refused) == len(log) // 20  # the server did push back, every 20th request
    assert set(server_counts(log).values()) == {1}  # and each prompt was answered once
    assert 24 <= most_in_flight([entry for entry in log if entry.started > began]) <= 32
    assert one_at_a_time / concurrent >= 5


def server_counts(log):
    counts = {}
    for entry in log:
        if entry.status == 200:
            counts[entry.prompt] = counts.get(entry.prompt, 0) + 1
    return counts


# --- A collector killed mid-way -------------------------------------------------------------------

COLLECTOR = textwrap.dedent("""
    import sys
    from arch_compare.imitation.collection import collect
    from arch_compare.imitation.openai_chat import OpenAIChatTarget
    from tests.imitation.test_concurrent_collection import SETTINGS, questions

    target = OpenAIChatTarget(sys.argv[1], model="fake", timeout=30)
    collect(target, questions(300), SETTINGS, sys.argv[2], concurrency=16, backoff=0.01,
            progress=False)
""")


def test_sigkilled_concurrent_collector_loses_only_answers_in_flight(tmp_path):
    cache = tmp_path / "killed.jsonl"
    asked = questions(300)  # as the collector asks
    with FakeOpenAIChat(latency=0.05, rate_limit_every=20, retry_after="0.05") as server:
        command = [sys.executable, "-c", COLLECTOR, server.base_url, str(cache)]
        environment = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(command, env=environment, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if cache.exists() and cache.read_bytes().count(b"\n") >= 80:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        killed_at = cache.read_bytes().count(b"\n")
        assert 80 <= killed_at < 300, "the collector was not killed mid-way"

        resumed = collect(endpoint(server), asked, SETTINGS, cache, concurrency=16,
                          backoff=0.01, progress=False)
        answered_by_server = server.answers()
        reference = tmp_path / "uninterrupted.jsonl"
        collect(endpoint(server), asked, SETTINGS, reference, concurrency=16, backoff=0.01,
                progress=False)

    # Every prompt has exactly one answer in the cache, and the cache holds nothing else.
    assert resumed.cached + resumed.collected == 300 and resumed.cached >= 80
    cached = records(cache)
    assert sorted(record["prompt_id"] for record in cached) == [p.prompt_id for p in asked]
    assert all(record["response"] == fake_answer(record["messages"]) for record in cached)
    # The server answered each prompt once, except those in flight at the kill (16 at most).
    hashes = [prompt_hash(prompt.messages()) for prompt in asked]
    assert all(answered_by_server[h] >= 1 for h in hashes)
    assert sum(answered_by_server[h] - 1 for h in hashes) <= 16
    # The training data does not depend on the kill, nor on the order answers came in.
    export_openai_chat(cache, tmp_path / "a.jsonl")
    export_openai_chat(reference, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


# --- Rate limits, measured at the server ----------------------------------------------------------

def test_requests_and_tokens_per_window_are_never_exceeded(tmp_path):
    # Short prompts first (about 21 tokens each: the request limit binds), then long ones (about
    # 70: the token limit binds).
    asked = questions(35, tag="short") + [
        Prompt.from_text(f"long{i:02d}", f"Question {i}: " + "word " * (40 + i)) for i in range(20)]
    window, rpm, tpm = 1.0, 30, 800
    with FakeOpenAIChat(latency=0.02) as server:
        result = collect(endpoint(server), asked, SETTINGS, tmp_path / "c.jsonl", concurrency=16,
                         requests_per_minute=rpm, tokens_per_minute=tpm, window_seconds=window,
                         progress=False)
        log = list(server.log)
    assert result.collected == len(asked) == len(log)
    # The client counts a request's tokens as the server does (prompt chars / 4 + max_tokens).
    expected = {prompt_hash(p.messages()): request_tokens(p.messages(), 16) for p in asked}
    assert {entry.prompt: entry.tokens for entry in log} == expected
    requests = most_in_any_window(log, window)
    tokens = most_in_any_window(log, window, lambda entry: entry.tokens)
    assert requests <= rpm and tokens <= tpm
    # Both limits bound the run (or the test would show nothing): each came close.
    assert requests >= 0.9 * rpm and tokens >= 0.8 * tpm


def test_a_request_over_the_token_limit_alone_is_refused_before_any_is_sent(tmp_path):
    asked = questions(3) + [Prompt.from_text("long", "word " * 400)]  # 500 + 16 tokens
    with FakeOpenAIChat(latency=0.0) as server:
        with pytest.raises(RateLimitError, match=r"'long'.*516 tokens.*over the limit of 500"):
            collect(endpoint(server), asked, SETTINGS, tmp_path / "c.jsonl", concurrency=4,
                    tokens_per_minute=500, progress=False)
        assert server.log == []


def test_a_429_with_retry_after_pauses_every_worker(tmp_path):
    with FakeOpenAIChat(latency=0.02, rate_limit_requests={25}, retry_after="1") as server:
        result = collect(endpoint(server), questions(120), SETTINGS, tmp_path / "c.jsonl",
                         concurrency=16, backoff=0.01, progress=False)
        log = sorted(server.log, key=lambda entry: entry.started)
    assert result.collected == 120
    [refused] = [entry for entry in log if entry.status == 429]
    after = [entry.started - refused.finished for entry in log
             if entry.started > refused.finished]
    # Requests already sent when the 429 went out may still arrive (16 in flight at most, within
    # the moment the client takes to read the reply); after that, nothing until the second is up.
    racing = [delay for delay in after if delay < 0.1]
    assert len(racing) <= 16
    assert not [delay for delay in after if 0.1 <= delay < 1.0]
    assert len(after) - len(racing) >= 50  # and then it went on
    retried = [entry for entry in log if entry.prompt == refused.prompt and entry.status == 200]
    assert retried and retried[0].started >= refused.finished + 1.0


# --- Workers and the study's settings -------------------------------------------------------------

class CountingTarget:
    """Answers after `delay`, counting how many calls run at once; raises on `fail_on`."""

    def __init__(self, delay=0.02, fail_on=None):
        self.name, self.delay, self.fail_on = "counting", delay, fail_on
        self.running = self.most = 0
        self._lock = threading.Lock()

    def complete(self, batch, settings):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        if any(prompt.prompt_id == self.fail_on for prompt in batch):
            raise RuntimeError(f"the target broke on {self.fail_on}")
        return [Reply(text=f"answer {prompt.prompt_id}") for prompt in batch]


def test_a_worker_exception_stops_collection_and_keeps_what_was_written(tmp_path):
    target = CountingTarget(fail_on="q0010")
    with pytest.raises(RuntimeError, match="broke on q0010"):
        collect(target, questions(200), SETTINGS, tmp_path / "c.jsonl", concurrency=4,
                progress=False)
    written = records(tmp_path / "c.jsonl")
    assert 0 < len(written) < 200 and all("response" in record for record in written)
    time.sleep(0.1)
    assert target.running == 0  # no worker went on asking


def test_collect_with_online_uses_the_settings(tmp_path):
    target = CountingTarget()
    settings = CollectionSettings(concurrency=6, requests_per_minute=1000, max_attempts=2)
    result = collect_with(settings, target, questions(60), SETTINGS, tmp_path / "c.jsonl",
                          progress=False)
    assert result.collected == 60 and target.most == 6


def test_collect_with_batch_hands_over_to_the_batch_collector(tmp_path, monkeypatch):
    from arch_compare.imitation.batch_collection import collect_batch

    calls = []
    fake = types.ModuleType("arch_compare.imitation.batch_collection")
    fake.collect_batch = lambda *args, **kwargs: calls.append((args, kwargs)) or "result"
    monkeypatch.setitem(sys.modules, "arch_compare.imitation.batch_collection", fake)
    settings = CollectionSettings(mode="batch", batch_poll_seconds=7.0, max_attempts=3)
    target, asked = CountingTarget(), questions(2)
    assert collect_with(settings, target, asked, SETTINGS, tmp_path / "c.jsonl",
                        progress=False) == "result"
    assert calls == [((target, asked, SETTINGS, tmp_path / "c.jsonl"),
                      {"poll_seconds": 7.0, "max_attempts": 3, "progress": False})]
    inspect.signature(collect_batch).bind(*calls[0][0], **calls[0][1])  # the real one takes it


def test_the_limiter_serves_callers_in_order_and_counts_a_call_until_a_window_after_it_ends():
    limiter = RateLimiter(tokens_per_minute=10, window_seconds=0.3)
    first = limiter.acquire(tokens=8)
    served = []

    def ask(name, tokens):
        limiter.release(limiter.acquire(tokens=tokens))
        served.append((name, time.monotonic()))

    large = threading.Thread(target=ask, args=("large", 5))
    large.start()
    time.sleep(0.05)
    small = threading.Thread(target=ask, args=("small", 1))  # would fit now, but comes second
    small.start()
    time.sleep(0.1)
    assert served == []
    ended = time.monotonic()
    limiter.release(first)
    large.join(5)
    small.join(5)
    assert [name for name, _ in served] == ["large", "small"]
    assert served[0][1] - ended >= 0.3  # the first call still counted for a window after it ended


def test_one_at_a_time_runs_on_the_calling_thread(tmp_path):
    threads = set()

    class Recording(CountingTarget):
        def complete(self, batch, settings):
            threads.add(threading.get_ident())
            return super().complete(batch, settings)

    collect(Recording(delay=0), questions(5), SETTINGS, tmp_path / "one.jsonl", progress=False)
    assert threads == {threading.get_ident()}  # its contexts (a default device, ...) hold
    collect(Recording(delay=0.01), questions(20), SETTINGS, tmp_path / "many.jsonl",
            concurrency=4, progress=False)
    assert len(threads - {threading.get_ident()}) == 4
