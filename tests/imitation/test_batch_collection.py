"""Batch collection against a loopback fake of the OpenAI batch interface: a clean run equals the
online collector's export; a collector killed after the upload, while polling, or between creating
the batch and recording it pays for each prompt once; partial failures are retried as smaller
batches; expired and failed batches."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from arch_compare.imitation import batch_collection
from arch_compare.imitation.batch_collection import (BatchFailedError, collect_batch,
                                                     state_path_of)
from arch_compare.imitation.collection import collect, export_openai_chat
from arch_compare.imitation.openai_chat import OpenAIChatTarget
from arch_compare.imitation.targets import GenerationSettings, Prompt, cache_key
from tests.imitation.fake_openai_batch import FakeBatchServer, answer_of

SETTINGS = GenerationSettings(max_tokens=16)
REPO = Path(__file__).resolve().parents[2]


class Killed(BaseException):
    """Stands for a SIGKILL at a chosen step (nothing after it runs, no handler catches it)."""


def prompts(count):
    return [Prompt.from_text(f"p{i}", f"Question number {i}?") for i in range(count)]


def keys_of(target, items):
    return [cache_key(target.name, prompt, SETTINGS) for prompt in items]


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def no_sleep(seconds):
    del seconds


@pytest.fixture
def server():
    with FakeBatchServer(polls_to_complete=3) as fake:
        yield fake


@pytest.fixture
def target(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return OpenAIChatTarget(server.url, "fake-model", timeout=10)


def test_clean_run_equals_the_online_export(server, target, tmp_path, capsys):
    items = prompts(12)
    cache = tmp_path / "batch.jsonl"
    result = collect_batch(target, items, SETTINGS, cache, sleep=no_sleep)
    assert (result.total, result.collected, result.failed, result.retry_later) == (12, 12, 0, 0)
    keys = keys_of(target, items)
    assert server.paid() == {key: 1 for key in keys}
    assert server.answered == {key: 1 for key in keys}
    assert len(server.uploads) == 1 and server.polls["batch_1"] == 3
    assert not state_path_of(cache).exists()
    for record, prompt in zip(records(cache), items):
        assert record["mode"] == "batch" and record["batch_id"] == "batch_1"
        assert record["response"] == answer_of(prompt.messages())
        assert record["usage"] == {"prompt_tokens": 3, "completion_tokens": 5,
                                   "estimated": False}
    shown = "".join(capsys.readouterr())
    assert "uploaded 12 requests as file file-1" in shown and "created batch batch_1" in shown
    assert "uploaded 12 requests as file file-1" in shown and "batch batch_1: completed" in shown
    assert "{" not in shown and "Reply(" not in shown

    # The same answers bought online give the same training data.
    online = tmp_path / "online.jsonl"
    collect(target, items, SETTINGS, online, progress=False)
    assert sum(server.online.values()) == 12
    out_batch, _ = export_openai_chat(cache, tmp_path / "a.jsonl")
    out_online, _ = export_openai_chat(online, tmp_path / "b.jsonl")
    assert out_batch.read_bytes() == out_online.read_bytes()

    # Settled prompts are never sent again.
    again = collect_batch(target, items + prompts(13)[12:], SETTINGS, cache, sleep=no_sleep,
                          progress=False)
    assert (again.cached, again.collected) == (12, 1)
    assert [batch["custom_ids"] for batch in server.created[1:]] == [keys_of(target,
                                                                             prompts(13))[12:]]


def test_sigkill_after_upload_creates_the_batch_from_the_recorded_file(server, target,
                                                                       tmp_path):
    cache = tmp_path / "cache.jsonl"
    server.hold_list = threading.Event()  # the collector stops at its look-up before creating
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from arch_compare.imitation.batch_collection import collect_batch
        from arch_compare.imitation.openai_chat import OpenAIChatTarget
        from arch_compare.imitation.targets import GenerationSettings, Prompt
        prompts = [Prompt.from_text(f"p{{i}}", f"Question number {{i}}?") for i in range(8)]
        collect_batch(OpenAIChatTarget({server.url!r}, "fake-model", timeout=10), prompts,
                      GenerationSettings(max_tokens=16), {str(cache)!r}, sleep=lambda s: None,
                      progress=False)
        """)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while "input_file_id" not in _state(cache):
            assert child.poll() is None and time.monotonic() < deadline, "no upload recorded"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    server.hold_list.set()
    server.hold_list = None
    assert len(server.uploads) == 1 and server.created == []

    result = collect_batch(target, prompts(8), SETTINGS, cache, sleep=no_sleep, progress=False)
    assert result.collected == 8
    assert len(server.uploads) == 1, "uploaded again"
    assert [batch["input_file_id"] for batch in server.created] == ["file-1"]
    keys = keys_of(target, prompts(8))
    assert server.paid() == {key: 1 for key in keys}
    assert server.answered == {key: 1 for key in keys}
    assert len(records(cache)) == 8 and not state_path_of(cache).exists()


def test_killed_while_polling_resumes_the_same_batch(server, target, tmp_path):
    cache = tmp_path / "cache.jsonl"
    server.never_finish = True
    polls = []

    def sleep_then_die(seconds):
        polls.append(seconds)
        if len(polls) == 2:
            raise Killed

    with pytest.raises(Killed):
        collect_batch(target, prompts(6), SETTINGS, cache, poll_seconds=7.0,
                      sleep=sleep_then_die, progress=False)
    assert polls == [7.0, 7.0]
    assert _state(cache)["batch_id"] == "batch_1" and not cache.read_text()

    server.never_finish = False
    result = collect_batch(target, prompts(6), SETTINGS, cache, sleep=no_sleep, progress=False)
    assert result.collected == 6
    assert list(server.polls) == ["batch_1"] and len(server.created) == 1
    keys = keys_of(target, prompts(6))
    assert server.paid() == {key: 1 for key in keys}
    assert server.answered == {key: 1 for key in keys}


def test_killed_after_recording_before_the_state_is_removed(server, target, tmp_path,
                                                           monkeypatch):
    cache = tmp_path / "cache.jsonl"
    record = batch_collection._BatchRun._record

    def record_then_die(self, state, batch):
        record(self, state, batch)
        raise Killed

    monkeypatch.setattr(batch_collection._BatchRun, "_record", record_then_die)
    with pytest.raises(Killed):
        collect_batch(target, prompts(5), SETTINGS, cache, sleep=no_sleep, progress=False)
    assert len(records(cache)) == 5 and state_path_of(cache).exists()
    monkeypatch.setattr(batch_collection._BatchRun, "_record", record)

    result = collect_batch(target, prompts(5), SETTINGS, cache, sleep=no_sleep, progress=False)
    assert (result.cached, result.collected) == (5, 0)
    assert len(records(cache)) == 5 and not state_path_of(cache).exists()
    assert len(server.created) == 1 and len(server.uploads) == 1


def test_killed_between_create_and_record_adopts_the_batch(server, target, tmp_path,
                                                           monkeypatch, capsys):
    cache = tmp_path / "cache.jsonl"
    save = batch_collection._save_state

    def save_unless_created(path, state):
        if "batch_id" in state:
            raise Killed  # the batch exists on the server; its id never reached the disk
        save(path, state)

    monkeypatch.setattr(batch_collection, "_save_state", save_unless_created)
    with pytest.raises(Killed):
        collect_batch(target, prompts(5), SETTINGS, cache, sleep=no_sleep, progress=False)
    assert len(server.created) == 1 and "batch_id" not in _state(cache)
    monkeypatch.setattr(batch_collection, "_save_state", save)

    result = collect_batch(target, prompts(5), SETTINGS, cache, sleep=no_sleep)
    assert result.collected == 5
    assert "adopting batch batch_1" in "".join(capsys.readouterr())
    keys = keys_of(target, prompts(5))
    assert len(server.created) == 1 and server.paid() == {key: 1 for key in keys}
    assert server.answered == {key: 1 for key in keys}


def test_a_create_whose_answer_was_lost_is_not_sent_twice(server, target, tmp_path):
    server.lose_create_answers = 1
    keys = keys_of(target, prompts(4))
    result = collect_batch(target, prompts(4), SETTINGS, tmp_path / "cache.jsonl",
                           sleep=no_sleep, progress=False)
    assert result.collected == 4
    assert len(server.created) == 1 and server.paid() == {key: 1 for key in keys}


def test_an_unavailable_server_is_polled_again_after_its_retry_after(server, target, tmp_path):
    server.unavailable_polls = 2
    waits = []
    result = collect_batch(target, prompts(3), SETTINGS, tmp_path / "cache.jsonl",
                           poll_seconds=0.5, sleep=waits.append, progress=False)
    assert result.collected == 3 and len(server.created) == 1
    # Backoff 2 s then 4 s, never sooner than Retry-After (3 s); then the polls, 0.5 s apart.
    assert waits == [3.0, 4.0, 0.5, 0.5]

    # An outage longer than one call's retries: polling goes on, then gives up after an hour.
    server.unavailable_polls = 7  # five tries of one poll, then two of the next
    waits.clear()
    result = collect_batch(target, prompts(4), SETTINGS, tmp_path / "cache.jsonl",
                           poll_seconds=600.0, sleep=waits.append, progress=False)
    assert result.collected == 1 and waits[:5] == [3.0, 4.0, 8.0, 16.0, 600.0]
    server.unavailable_polls = 10 ** 6
    with pytest.raises(batch_collection.BatchAPIError, match="HTTP 503"):
        collect_batch(target, prompts(5), SETTINGS, tmp_path / "cache.jsonl",
                      poll_seconds=600.0, sleep=no_sleep, progress=False)
    assert state_path_of(tmp_path / "cache.jsonl").exists()  # a rerun polls the same batch


def test_partial_failures_retry_in_smaller_batches(server, target, tmp_path):
    cache = tmp_path / "cache.jsonl"
    items = prompts(10)
    keys = keys_of(target, items)
    server.polls_to_complete = 1
    server.transient = {keys[2]: 1, keys[5]: 2, keys[3]: 3}
    server.permanent = {keys[7]}
    result = collect_batch(target, items, SETTINGS, cache, max_attempts=3, sleep=no_sleep,
                           progress=False)
    assert (result.collected, result.failed, result.retry_later) == (8, 1, 1)
    assert [batch["custom_ids"] for batch in server.created] == [
        keys, [keys[2], keys[3], keys[5]], [keys[3], keys[5]]]
    assert server.answered == {key: 1 for key in keys if key not in (keys[3], keys[7])}
    decided = {record["key"]: record for record in records(cache)}
    assert decided[keys[7]]["transient"] is False and "HTTP 400" in decided[keys[7]]["error"]
    assert decided[keys[5]]["attempts"] == 3 and decided[keys[2]]["attempts"] == 2
    assert decided[keys[3]]["transient"] is True and "HTTP 500" in decided[keys[3]]["error"]

    # A rerun asks only the prompt whose retries ran out, never the permanent failure.
    again = collect_batch(target, items, SETTINGS, cache, sleep=no_sleep, progress=False)
    assert (again.cached, again.collected, again.failed) == (8, 1, 1)
    assert server.created[-1]["custom_ids"] == [keys[3]]
    assert server.answered == {key: 1 for key in keys if key != keys[7]}


def test_expired_batch_keeps_its_answers_and_retries_the_rest(server, target, tmp_path):
    cache = tmp_path / "cache.jsonl"
    keys = keys_of(target, prompts(10))
    server.expire_after = 4
    result = collect_batch(target, prompts(10), SETTINGS, cache, sleep=no_sleep,
                           progress=False)
    assert result.collected == 10
    assert [batch["custom_ids"] for batch in server.created] == [keys, keys[4:]]
    assert server.answered == {key: 1 for key in keys}
    assert server.batches["batch_1"]["status"] == "expired"


def test_more_prompts_than_one_batch_holds_go_in_successive_batches(server, target, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(batch_collection, "MAX_BATCH_REQUESTS", 4)
    keys = keys_of(target, prompts(10))
    result = collect_batch(target, prompts(10), SETTINGS, tmp_path / "cache.jsonl",
                           sleep=no_sleep, progress=False)
    assert result.collected == 10
    assert [batch["custom_ids"] for batch in server.created] == [keys[:4], keys[4:8], keys[8:]]
    assert server.answered == {key: 1 for key in keys}


def test_cancelled_batch_keeps_its_answers_and_leaves_the_rest_for_the_next_run(
        server, target, tmp_path):
    cache = tmp_path / "cache.jsonl"
    keys = keys_of(target, prompts(6))
    server.expire_after, server.expire_status = 2, "cancelled"
    result = collect_batch(target, prompts(6), SETTINGS, cache, sleep=no_sleep,
                           progress=False)
    assert (result.collected, result.retry_later) == (2, 4) and len(server.created) == 1
    again = collect_batch(target, prompts(6), SETTINGS, cache, sleep=no_sleep, progress=False)
    assert (again.cached, again.collected) == (2, 4)
    assert server.created[-1]["custom_ids"] == keys[2:]
    assert server.answered == {key: 1 for key in keys}


def test_failed_batch_names_itself_and_its_errors(server, target, tmp_path):
    cache = tmp_path / "cache.jsonl"
    server.fail_validation = True
    with pytest.raises(BatchFailedError, match=r"batch batch_1 .*failed: invalid_request: the "
                                               r"model does not exist \(line 1\)"):
        collect_batch(target, prompts(3), SETTINGS, cache, sleep=no_sleep, progress=False)
    assert not state_path_of(cache).exists() and not cache.read_text()


def _state(cache):
    try:
        return json.loads(state_path_of(cache).read_text())
    except (FileNotFoundError, ValueError):
        return {}


@pytest.mark.parametrize("line, transient, words", [
    ({"response": {"status_code": 429, "body": {"error": {"message": "slow down"}}}}, True,
     "HTTP 429: slow down"),
    ({"response": {"status_code": 503, "body": "unavailable"}}, True, "HTTP 503"),
    ({"response": {"status_code": 400, "body": {"error": {"message": "bad"}}}}, False,
     "HTTP 400: bad"),
    ({"response": None, "error": {"code": "request_timeout", "message": "slow"}}, True,
     "request_timeout: slow"),
    ({"response": None, "error": {"code": "invalid_prompt", "message": "no"}}, False,
     "invalid_prompt: no"),
    ({"response": {"status_code": 200, "body": {"choices": []}}}, False, "malformed completion"),
])
def test_result_lines_are_classified(line, transient, words):
    key, reply = batch_collection._line_reply(json.dumps({"custom_id": "k", **line}), "out 3")
    assert key == "k" and reply.error.startswith("out 3") and words in reply.error
    assert reply.transient is transient


def test_a_damaged_result_line_is_named():
    with pytest.raises(batch_collection.BatchAPIError, match="out 3: not a batch result"):
        batch_collection._line_reply('{"response": {}}', "out 3")
