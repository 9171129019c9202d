"""Collection: retries, permanent failures, resume, a SIGKILLed collector, damaged caches, the rate
limit, and the export read back as training data."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from arch_compare.data.conversations import Turn, format_history
from arch_compare.imitation.collection import (CacheError, collect, export_openai_chat,
                                               load_collected)
from arch_compare.imitation.targets import FunctionTarget, GenerationSettings, Prompt, Reply

SETTINGS = GenerationSettings(max_tokens=16)
REPO = Path(__file__).resolve().parents[2]


def prompts(count, start=0):
    return [Prompt.from_text(f"p{i}", f"Question number {i}?") for i in range(start, count)]


def answer(turns):
    return f"Answer to: {turns[-1].text}"


class ScriptedTarget:
    """Answers like `answer`, except that prompts listed in `script` first get the given error
    replies, one per call; counts every prompt it is asked."""

    def __init__(self, script=None, name="scripted"):
        self.name = name
        self.script = {key: list(replies) for key, replies in (script or {}).items()}
        self.asked: list[str] = []
        self.times: list[float] = []

    def complete(self, batch, settings):
        replies = []
        for prompt in batch:
            self.asked.append(prompt.prompt_id)
            self.times.append(time.monotonic())
            queued = self.script.get(prompt.prompt_id)
            replies.append(queued.pop(0) if queued else Reply(text=answer(prompt.turns)))
        return replies


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def successes(path):
    return [record for record in records(path) if "response" in record]


def test_transient_errors_are_retried_then_succeed(tmp_path):
    flaky = [Reply(error="503", transient=True), Reply(error="timeout", transient=True)]
    target = ScriptedTarget({"p1": flaky})
    result = collect(target, prompts(3), SETTINGS, tmp_path / "c.jsonl", max_attempts=3,
                     backoff=0.01, progress=False)
    assert (result.total, result.collected, result.failed, result.retry_later) == (3, 3, 0, 0)
    assert target.asked.count("p1") == 3
    [record] = [r for r in records(tmp_path / "c.jsonl") if r["prompt_id"] == "p1"]
    assert record["attempts"] == 3 and record["response"] == "Answer to: Question number 1?"


def test_retry_after_is_respected(tmp_path):
    target = ScriptedTarget({"p0": [Reply(error="429", transient=True, retry_after=0.4)]})
    collect(target, prompts(1), SETTINGS, tmp_path / "c.jsonl", backoff=0.001, progress=False)
    assert target.times[1] - target.times[0] >= 0.4


def test_transient_errors_left_over_are_asked_again_next_run(tmp_path):
    down = [Reply(error="connection refused", transient=True)] * 2
    cache = tmp_path / "c.jsonl"
    first = collect(ScriptedTarget({"p2": down}), prompts(4), SETTINGS, cache, max_attempts=2,
                    backoff=0.01, progress=False)
    assert (first.collected, first.retry_later) == (3, 1)
    assert not any(r["prompt_id"] == "p2" for r in successes(cache))
    again = ScriptedTarget()
    second = collect(again, prompts(4), SETTINGS, cache, progress=False)
    assert again.asked == ["p2"]
    assert (second.cached, second.collected, second.retry_later) == (3, 1, 0)


def test_permanent_failure_is_recorded_not_exported_not_retried(tmp_path):
    cache = tmp_path / "c.jsonl"
    target = ScriptedTarget({"p1": [Reply(error="HTTP 400: context too long")]})
    result = collect(target, prompts(3), SETTINGS, cache, backoff=0.01, progress=False)
    assert (result.collected, result.failed) == (2, 1) and target.asked.count("p1") == 1
    [failure] = [r for r in records(cache) if "error" in r]
    assert failure["prompt_id"] == "p1" and failure["transient"] is False
    _, count = export_openai_chat(cache, tmp_path / "export.jsonl")
    exported = records(tmp_path / "export.jsonl")
    assert count == 2 and [r["id"] for r in exported] == ["p0", "p2"]
    assert "context too long" not in (tmp_path / "export.jsonl").read_text()

    again = ScriptedTarget()
    assert collect(again, prompts(3), SETTINGS, cache, progress=False).failed == 1
    assert again.asked == []
    result = collect(again, prompts(3), SETTINGS, cache, retry_failed=True, progress=False)
    assert again.asked == ["p1"] and (result.collected, result.failed) == (1, 0)


def test_empty_answers_are_failures_not_examples(tmp_path):
    target = FunctionTarget("blank", lambda turns: "   ")
    result = collect(target, prompts(2), SETTINGS, tmp_path / "c.jsonl", progress=False)
    assert (result.collected, result.failed) == (0, 2)
    assert load_collected(tmp_path / "c.jsonl") == []


def test_restart_skips_finished_keys(tmp_path):
    cache = tmp_path / "c.jsonl"
    collect(ScriptedTarget(), prompts(5), SETTINGS, cache, progress=False)
    target = ScriptedTarget()
    result = collect(target, prompts(8), SETTINGS, cache, progress=False)
    assert target.asked == ["p5", "p6", "p7"]
    assert (result.cached, result.collected) == (5, 3)
    # Other settings or another target are other answers, asked for anew.
    other = ScriptedTarget()
    collect(other, prompts(2), GenerationSettings(max_tokens=99), cache, progress=False)
    assert other.asked == ["p0", "p1"]


def test_duplicate_prompts_are_asked_once(tmp_path):
    target = ScriptedTarget()
    result = collect(target, prompts(2) + prompts(2), SETTINGS, tmp_path / "c.jsonl",
                     progress=False)
    assert target.asked == ["p0", "p1"] and result.total == 2


def test_truncated_last_line_is_dropped_and_overwritten(tmp_path):
    cache = tmp_path / "c.jsonl"
    collect(ScriptedTarget(), prompts(3), SETTINGS, cache, progress=False)
    whole = cache.read_bytes()
    cut = whole.rstrip(b"\n").rfind(b"\n") + 1 + 25  # the third record, cut after 25 bytes
    cache.write_bytes(whole[:cut])
    assert [a.prompt.prompt_id for a in load_collected(cache)] == ["p0", "p1"]
    target = ScriptedTarget()
    result = collect(target, prompts(4), SETTINGS, cache, progress=False)
    assert target.asked == ["p2", "p3"] and result.answered == 4
    assert [r["prompt_id"] for r in records(cache)] == ["p0", "p1", "p2", "p3"]


def test_a_damaged_line_elsewhere_is_an_error_naming_it(tmp_path):
    cache = tmp_path / "c.jsonl"
    collect(ScriptedTarget(), prompts(3), SETTINGS, cache, progress=False)
    lines = cache.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:30] + "\n"
    cache.write_text("".join(lines))
    with pytest.raises(CacheError, match=f"{cache}:2:"):
        collect(ScriptedTarget(), prompts(3), SETTINGS, cache, progress=False)
    with pytest.raises(CacheError, match=f"{cache}:2:"):
        load_collected(cache)


def test_one_collector_per_cache(tmp_path):
    cache = tmp_path / "c.jsonl"
    with cache.open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CacheError, match="another collector"):
            collect(ScriptedTarget(), prompts(1), SETTINGS, cache, progress=False)


def test_rate_limit(tmp_path):
    target = ScriptedTarget()
    started = time.monotonic()
    collect(target, prompts(6), SETTINGS, tmp_path / "c.jsonl", requests_per_minute=2,
            window_seconds=0.2, progress=False)
    elapsed = time.monotonic() - started
    # At most 2 requests in any 0.2 s window: each starts a window after the one two before.
    assert all(b - a >= 0.2 for a, b in zip(target.times, target.times[2:]))
    assert 0.4 <= elapsed < 5


def test_batches_go_to_the_target_together(tmp_path):
    sizes = []

    class Batched(ScriptedTarget):
        batch_size = 4

        def complete(self, batch, settings):
            sizes.append(len(batch))
            return super().complete(batch, settings)

    collect(Batched(), prompts(10), SETTINGS, tmp_path / "c.jsonl", progress=False)
    assert sizes == [4, 4, 2]


# --- A collector killed at any moment -------------------------------------------------------------

COLLECTOR = textwrap.dedent("""
    import sys, time
    from arch_compare.imitation.collection import collect
    from arch_compare.imitation.targets import FunctionTarget, GenerationSettings, Prompt

    def slow(turns):
        time.sleep(0.02)
        return "Answer to: " + turns[-1].text

    prompts = [Prompt.from_text(f"p{i}", f"Question number {i}?") for i in range(40)]
    collect(FunctionTarget("scripted", slow), prompts, GenerationSettings(max_tokens=16),
            sys.argv[1], batch_size=1, progress=False)
""")


def test_sigkilled_collector_resumes_without_loss_or_duplicates(tmp_path):
    cache = tmp_path / "killed.jsonl"
    command = [sys.executable, "-c", COLLECTOR, str(cache)]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=environment, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if cache.exists() and cache.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = cache.read_bytes().count(b"\n")
    assert 8 <= killed_at < 40, "the collector was not killed mid-way"

    subprocess.run(command, env=environment, cwd=REPO, check=True, timeout=120)
    keys = [record["key"] for record in successes(cache)]
    assert len(keys) == len(set(keys)) == 40
    assert len(records(cache)) == 40  # and nothing else: no failure, no duplicate

    reference = tmp_path / "uninterrupted.jsonl"
    collect(FunctionTarget("scripted", answer), prompts(40), SETTINGS, reference, progress=False)
    assert sorted(keys) == sorted(record["key"] for record in successes(reference))
    export_openai_chat(cache, tmp_path / "a.jsonl")
    export_openai_chat(reference, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


# --- The export is training data ------------------------------------------------------------------

def test_export_round_trips_through_the_openai_chat_reader(tmp_path):
    from arch_compare_tasks.catalogue import register_imitation_task
    from arch_compare_tasks.registry import records as task_records

    cache = tmp_path / "c.jsonl"
    asked = prompts(3) + [Prompt("sys", (Turn("system", "Be brief."),
                                         Turn("user", "Name a colour.")))]
    target = ScriptedTarget({"p1": [Reply(error="HTTP 400")]})
    collect(target, asked, SETTINGS, cache, progress=False)
    path, count = export_openai_chat(cache, tmp_path / "out" / "imitation.jsonl")
    assert count == 3

    register_imitation_task("collection_round_trip", path, "openai_chat", replace=True)
    rows = task_records("collection_round_trip", "train")
    expected = [p for p in asked if p.prompt_id != "p1"]
    assert [row["inputs"] for row in rows] == [format_history(p.turns) for p in expected]
    assert [row["targets"] for row in rows] == [answer(p.turns) for p in expected]
    assert [row["id"] for row in rows] == [f"openai_chat:{p.prompt_id}:{len(p.turns)}"
                                           for p in expected]


def test_export_refuses_ambiguous_ids(tmp_path):
    cache = tmp_path / "c.jsonl"
    collect(ScriptedTarget(name="a"), prompts(1), SETTINGS, cache, progress=False)
    collect(ScriptedTarget(name="b"), prompts(1), SETTINGS, cache, progress=False)
    with pytest.raises(ValueError, match="'p0' is answered twice"):
        export_openai_chat(cache, tmp_path / "x.jsonl")
    assert export_openai_chat(cache, tmp_path / "x.jsonl", target="b")[1] == 1
