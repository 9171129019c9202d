"""`arch-compare serve` as a subprocess on loopback: the API surface, and a collection that
survives the server being SIGKILLed and restarted, answering exactly as the checkpoint does
in-process."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jax
import pytest

from arch_compare.imitation.collection import collect, load_collected
from arch_compare.imitation.model_target import ModelTarget
from arch_compare.imitation.openai_chat import OpenAIChatTarget
from arch_compare.imitation.targets import GenerationSettings, Prompt

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "tiny-llama"
SETTINGS = GenerationSettings(max_tokens=8, temperature=0.0)
STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`python -m arch_compare serve` on 127.0.0.1:port; `start()` returns once it is ready.

    It serves on two (simulated CPU) devices, the model split over an fsdp axis of 2 and each
    one-request batch padded to two rows, so the answers compared below with a one-device
    `ModelTarget` in this process also test serving on a mesh."""

    def __init__(self, checkpoint, vocabulary, port, log):
        self.command = [sys.executable, "-m", "arch_compare", "serve", "--checkpoint",
                        str(checkpoint), "--vocabulary", str(vocabulary), "--port", str(port),
                        "--model-name", MODEL_NAME, "--max-batch", "1", "--max-tokens-limit",
                        "64", "--mesh", "fsdp=2"]
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log = log
        self.process = None

    def start(self):
        environment = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
                       "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        with self.log.open("a") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, env=environment,
                                            stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline and self.process.poll() is None:
            ready, _, _ = select.select([self.process.stdout], [], [], 1.0)
            if ready and self.process.stdout.readline().startswith("serving"):
                return self
        self.process.kill()
        raise AssertionError(f"the server did not start; its log:\n{self.log.read_text()}")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from arch_compare.models import build_model, get_preset
    from arch_compare.models.native import save_model
    model = build_model(get_preset("llama-tiny"))
    return save_model(tmp_path_factory.mktemp("serve") / "llama-tiny", model,
                      model.init(jax.random.key(2)))


@pytest.fixture(scope="module")
def server(checkpoint, sentencepiece_model_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    server = Server(checkpoint, sentencepiece_model_path, free_port(), log).start()
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(timeout=30)


def call(url, body=None):
    """(status, JSON) of a GET (no body) or POST to the test server."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_models_and_bad_requests(server):
    assert call(server.url.removesuffix("/v1") + "/health") == (200, {"status": "ok"})
    status, models = call(server.url + "/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [MODEL_NAME]

    chat = server.url + "/chat/completions"
    user = [{"role": "user", "content": "Hello"}]
    for body, status, param in [
            ({"messages": []}, 400, "messages"),
            ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
            ({"messages": [{"role": "user", "content": " "}]}, 400, "messages[0].content"),
            ({"messages": [*user, {"role": "assistant", "content": "Hi"}]}, 400, "messages"),
            ({"messages": user, "max_tokens": 65}, 400, "max_tokens"),
            ({"messages": user, "temperature": "hot"}, 400, "temperature"),
            ({"messages": user, "top_p": 0}, 400, "top_p"),
            ({"messages": user, "stream": True}, 400, "stream"),
            ({"messages": user, "stop": ["\n"]}, 400, "stop"),
            ({"messages": user, "model": "gpt-4"}, 404, "model")]:
        got, answer = call(chat, body)
        assert (got, answer["error"]["param"]) == (status, param), body


def test_completion_response(server):
    status, answer = call(server.url + "/chat/completions", {
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 8, "temperature": 0})
    assert status == 200 and answer["object"] == "chat.completion"
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"],
                                                                   str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert 1 <= usage["completion_tokens"] <= 8 and usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


class KillAfter:
    """Passes prompts to `target`; before the `after`+1-th, SIGKILLs the server (so that
    collection meets a dead server mid-way, deterministically)."""

    def __init__(self, target, server, after):
        self.name, self._target, self._server, self._after = target.name, target, server, after
        self.calls = 0

    def complete(self, prompts, settings):
        self.calls += 1
        if self.calls == self._after + 1:
            self._server.kill()
        return self._target.complete(prompts, settings)


def test_collection_survives_a_killed_server(server, checkpoint, sentencepiece_model_path,
                                             tmp_path):
    prompts = [Prompt.from_text(f"q{i}", f"Tell me about item {i}.") for i in range(12)]
    endpoint = OpenAIChatTarget(server.url, model=MODEL_NAME, timeout=120)
    cache = tmp_path / "answers.jsonl"

    first = collect(KillAfter(endpoint, server, after=4), prompts, SETTINGS, cache,
                    max_attempts=2, backoff=0.05, batch_size=1, progress=False)
    assert (first.collected, first.retry_later, first.failed) == (4, 8, 0)

    server.start()  # the same port again
    second = collect(endpoint, prompts, SETTINGS, cache, max_attempts=3, backoff=0.5,
                     batch_size=1, progress=False)
    assert (second.cached, second.collected, second.retry_later, second.failed) == (4, 8, 0, 0)

    records = [json.loads(line) for line in cache.read_text().splitlines()]
    answered = [r["prompt_id"] for r in records if "response" in r]
    assert sorted(answered) == sorted(p.prompt_id for p in prompts)  # each exactly once

    local = ModelTarget.load(checkpoint, sentencepiece_model_path, batch_size=1)
    expected = {p.prompt_id: r.text for p, r in zip(prompts, local.complete(prompts, SETTINGS))}
    assert {a.prompt.prompt_id: a.response for a in load_collected(cache)} == expected

    # SIGTERM stops it cleanly.
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0


# --- In-process pieces: request parsing and batching -----------------------------------------------

def test_serve_mesh_flag_reads_axis_sizes():
    import argparse

    from arch_compare.cli import serve as serve_cli
    assert serve_cli.parse_mesh("fsdp=4,tensor=2") == {"fsdp": 4, "tensor": 2}
    assert serve_cli.parse_mesh("auto") == "auto"
    for bad in ("fsdp4", "model=2", "fsdp=2,fsdp=2", "fsdp=0", "fsdp=-1"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            serve_cli._mesh_argument(bad)


def test_parse_chat_request_reads_openai_fields():
    from arch_compare.serving import RequestError, parse_chat_request
    prompt, settings = parse_chat_request({
        "model": MODEL_NAME, "max_completion_tokens": 9, "temperature": 0.7, "top_p": 0.5,
        "seed": 4, "user": "someone",  # fields that do not change the answer are accepted
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                  {"type": "text", "text": "there"}]}]},
        MODEL_NAME, 64)
    assert [(t.role, t.text) for t in prompt.turns] == [("system", "Be brief."),
                                                        ("user", "Hi there")]
    assert settings == GenerationSettings(max_tokens=9, temperature=0.7, top_p=0.5, seed=4)
    with pytest.raises(RequestError) as error:
        parse_chat_request({"messages": [{"role": "user", "content": "x"}], "seed": True},
                           MODEL_NAME, 64)
    assert error.value.param == "seed" and error.value.status == 400


def test_requests_waiting_together_share_a_batch():
    import threading

    from arch_compare.imitation.model_target import ModelReply
    from arch_compare.imitation.targets import Reply
    from arch_compare.serving import Generator

    class SlowTarget:
        batch_size = 3

        def __init__(self):
            self.batches, self.release = [], threading.Event()

        def generate(self, prompts, settings):
            self.batches.append([p.turns[-1].text for p in prompts])
            self.release.wait(10)
            return [ModelReply(Reply(text=p.turns[-1].text.upper()), prompt_tokens=1)
                    for p in prompts]

    target = SlowTarget()
    generator = Generator(target)
    answers = {}

    def ask(text, settings=SETTINGS):
        answers[text] = generator.generate(Prompt.from_text(text, text), settings).reply.text

    threads = [threading.Thread(target=ask, args=("first",))]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not target.batches and time.monotonic() < deadline:  # the model is now busy
        time.sleep(0.01)
    other = GenerationSettings(max_tokens=3)
    for queued, (text, settings) in enumerate([("a", SETTINGS), ("b", SETTINGS), ("c", other),
                                               ("d", SETTINGS), ("e", SETTINGS)], start=1):
        threads.append(threading.Thread(target=ask, args=(text, settings)))
        threads[-1].start()
        while generator._jobs.qsize() < queued and time.monotonic() < deadline:  # in order
            time.sleep(0.005)
    target.release.set()
    for thread in threads:
        thread.join(10)
    generator.close()
    assert answers == {text: text.upper() for text in "first a b c d e".split()}
    # Equal settings together, at most batch_size at a time; the odd one out alone.
    assert target.batches == [["first"], ["a", "b", "d"], ["c"], ["e"]]
