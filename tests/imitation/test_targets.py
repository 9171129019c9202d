"""Targets: an OpenAI-compatible endpoint against a fault-injecting loopback server, a model of
this framework against the inference path, and targets from specifications."""

import dataclasses
import json
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import pytest

from arch_compare.data.conversations import Turn, format_history
from arch_compare.imitation.collection import collect
from arch_compare.imitation.model_target import ModelTarget
from arch_compare.imitation.openai_chat import OpenAIChatTarget
from arch_compare.imitation.target_kinds import TargetSpecError, make_target
from arch_compare.imitation.targets import GenerationSettings, Prompt, Reply

SECRET = "sk-test-0123456789-secret"
KEY_ENV = "ARCH_COMPARE_TEST_API_KEY"


# --- A chat-completions server that fails on request ----------------------------------------------
# The last user message says how to answer, e.g. "429" or "ok: hello".

class FaultyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"headers": dict(self.headers), "body": body})
        command = body["messages"][-1]["content"]
        if command.startswith("ok"):
            self._json(200, {"choices": [{"message": {"role": "assistant",
                                                      "content": f"echo {command}"}}]})
        elif command == "429":
            self._json(429, {"error": "slow down"}, {"Retry-After": "7"})
        elif command == "503-date":
            self._json(503, {"error": "busy"},
                       {"Retry-After": formatdate(time.time() + 30, usegmt=True)})
        elif command in ("500", "400", "404"):
            self._json(int(command), {"error": {"message": f"status {command}"}})
        elif command == "401-echo-key":  # as some APIs do: quote the key back
            auth = self.headers.get("Authorization", "")
            self._json(401, {"error": f"Incorrect API key provided: {auth[7:]}"})
        elif command == "drop-before":
            self.close_connection = True  # no reply at all
        elif command == "drop-mid":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "500")
            self.end_headers()
            self.wfile.write(b'{"choices": [{"mess')
            self.wfile.flush()
            self.close_connection = True
        elif command == "slow":
            time.sleep(1.5)
            self._json(200, {"choices": [{"message": {"content": "too late"}}]})
        elif command == "bad-json":
            self._raw(200, b"<html>not json</html>")
        elif command == "no-choices":
            self._json(200, {"choices": []})
        elif command == "empty":
            self._json(200, {"choices": [{"message": {"content": "  "}}]})
        else:
            self._json(500, {"error": f"test server: unknown command {command!r}"})

    def _json(self, status, payload, headers=None):
        self._raw(status, json.dumps(payload).encode(), headers)

    def _raw(self, status, data, headers=None):
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except BrokenPipeError:  # "slow": the client timed out and left, as it should
            pass


@pytest.fixture(scope="module")
def faulty_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FaultyHandler)
    server.daemon_threads = True
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint(faulty_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    faulty_server.requests.clear()
    return OpenAIChatTarget(f"http://127.0.0.1:{faulty_server.server_address[1]}/v1",
                            model="faulty", api_key_env=KEY_ENV, timeout=0.5)


def ask(target, text, settings=GenerationSettings(max_tokens=5)):
    return target.complete([Prompt.from_text("p", text)], settings)[0]


def test_success_sends_the_request_openai_expects(endpoint, faulty_server):
    prompt = Prompt("p", (Turn("system", "Be brief."), Turn("user", "ok: hi")))
    settings = GenerationSettings(max_tokens=7, temperature=0.5, top_p=0.9, seed=3)
    reply = endpoint.complete([prompt], settings)[0]
    assert reply.ok and reply.text == "echo ok: hi"
    request = faulty_server.requests[-1]
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert request["body"] == {"model": "faulty", "messages": prompt.messages(), "max_tokens": 7,
                               "temperature": 0.5, "top_p": 0.9, "seed": 3}


@pytest.mark.parametrize("command, retry_after", [("429", 7.0), ("500", None),
                                                  ("drop-before", None), ("drop-mid", None),
                                                  ("slow", None)])
def test_transient_failures(endpoint, command, retry_after):
    started = time.monotonic()
    reply = ask(endpoint, command)
    assert reply.error and reply.transient and not reply.ok
    assert reply.retry_after == retry_after
    assert time.monotonic() - started < 5  # the timeout cut "slow" short


def test_retry_after_as_a_date(endpoint):
    reply = ask(endpoint, "503-date")
    assert reply.transient and 20 < reply.retry_after <= 31


def test_connection_refused_is_transient():
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reply = ask(OpenAIChatTarget(f"http://127.0.0.1:{port}/v1", model="x", timeout=2), "ok")
    assert reply.transient and "Connection refused" in reply.error


@pytest.mark.parametrize("command, words", [("400", "HTTP 400"), ("404", "HTTP 404"),
                                            ("bad-json", "malformed"),
                                            ("no-choices", "malformed"), ("empty", "no text")])
def test_permanent_failures(endpoint, command, words):
    reply = ask(endpoint, command)
    assert reply.error and not reply.transient and words in reply.error


def test_api_key_is_masked_and_never_cached(endpoint, faulty_server, tmp_path):
    reply = ask(endpoint, "401-echo-key")
    assert not reply.transient and "HTTP 401" in reply.error
    assert SECRET not in reply.error and "***" in reply.error
    prompts = [Prompt.from_text("a", "ok: one"), Prompt.from_text("b", "401-echo-key"),
               Prompt.from_text("c", "500")]
    cache = tmp_path / "cache.jsonl"
    result = collect(endpoint, prompts, GenerationSettings(max_tokens=5), cache,
                     max_attempts=2, backoff=0.01, progress=False)
    assert (result.collected, result.failed, result.retry_later) == (1, 1, 1)
    assert SECRET not in cache.read_text()
    assert all(r["headers"]["Authorization"] == f"Bearer {SECRET}"
               for r in faulty_server.requests)


def test_no_key_no_authorization_header(faulty_server, monkeypatch):
    monkeypatch.delenv("ARCH_COMPARE_UNSET_KEY", raising=False)
    target = OpenAIChatTarget(f"http://127.0.0.1:{faulty_server.server_address[1]}/v1/",
                              model="faulty", api_key_env="ARCH_COMPARE_UNSET_KEY")
    assert ask(target, "ok: no key").ok
    assert "Authorization" not in faulty_server.requests[-1]["headers"]
    assert target.url.endswith("/v1/chat/completions")  # the trailing slash is not doubled


def test_openai_target_validates_its_fields():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIChatTarget("127.0.0.1:8000/v1", model="m")
    with pytest.raises(ValueError, match="timeout"):
        OpenAIChatTarget("http://127.0.0.1:8000/v1", model="m", timeout=0)


# --- Targets from specifications ------------------------------------------------------------------

def test_make_target_builds_and_explains():
    target = make_target({"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"})
    assert isinstance(target, OpenAIChatTarget) and target.name == "openai-chat:m"
    with pytest.raises(TargetSpecError, match="'kind'"):
        make_target({"model": "m"})
    with pytest.raises(TargetSpecError, match="unknown kind 'opneai'"):
        make_target({"kind": "opneai"})
    with pytest.raises(TargetSpecError, match="missing key.*'model'"):
        make_target({"kind": "openai", "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(TargetSpecError, match="unknown key.*'checkpiont'"):
        make_target({"kind": "model", "checkpiont": "/x", "vocabulary": "/y"})
    with pytest.raises(TargetSpecError, match="missing key.*'vocabulary'"):
        make_target({"kind": "model", "checkpoint": "/x"})


# --- A model of this framework --------------------------------------------------------------------

PROMPTS = (
    Prompt.from_text("q1", "What is the capital of France?"),
    Prompt("q2", (Turn("system", "You answer in one sentence."), Turn("user", "Name a colour."),
                  Turn("assistant", "Blue."), Turn("user", "And another one?"))),
)
LENGTHS = {"inputs": 96, "targets": 16}


def _example_id(prompt):
    """The id the openai_chat reader gives the example answering `prompt`'s last turn."""
    return f"openai_chat:{prompt.prompt_id}:{len(prompt.turns)}"


def _imitation_task(tmp_path, name, prompts, answers=None):
    """A registered openai_chat task holding `prompts` (answered with placeholders)."""
    from arch_compare_tasks.catalogue import register_imitation_task
    path = tmp_path / f"{name}.jsonl"
    with path.open("w") as handle:
        for i, prompt in enumerate(prompts):
            answer = answers[i] if answers else "placeholder answer"
            handle.write(json.dumps({"id": prompt.prompt_id, "messages": prompt.messages() + [
                {"role": "assistant", "content": answer}]}) + "\n")
    register_imitation_task(name, path, "openai_chat", replace=True)
    return name


@pytest.fixture(scope="module")
def vocabulary_path(sentencepiece_model_path, bpe_tokenizer_path):
    return lambda config: bpe_tokenizer_path if config.family == "gpt2" else (
        sentencepiece_model_path)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "t5-tiny", "ul2-tiny"])
def test_prompt_tokens_equal_the_feature_converter(preset, vocabulary_path, tmp_path):
    from arch_compare.data.converters import feature_converter_for, prompt_tokens
    from arch_compare.data.vocabularies import vocabulary_for_model
    from arch_compare.models import build_model, get_preset
    from arch_compare_tasks.registry import seqio_task

    config = get_preset(preset)
    vocabulary = vocabulary_for_model(config, vocabulary_path(config))
    task = seqio_task(_imitation_task(tmp_path, f"targets_test_{preset.replace('-', '_')}",
                                      PROMPTS), vocabulary)
    examples = task.get_dataset(LENGTHS, split="train", shuffle=False, use_cached=False)
    converted = feature_converter_for(config, vocabulary)(examples, LENGTHS)
    model = build_model(config)
    ids = {_example_id(prompt): prompt for prompt in PROMPTS}
    checked = 0
    for example, batch in zip(examples.as_numpy_iterator(), converted.as_numpy_iterator()):
        prompt = ids.get(example["id"].decode())
        if prompt is None:  # the reader's example of an earlier assistant turn
            continue
        tokens, lengths = model.prompts_of({k: v[None] for k, v in batch.items()})
        expected = tokens[0, :lengths[0]].tolist()
        assert prompt_tokens(config, vocabulary, format_history(prompt.turns)) == expected
        checked += 1
    assert checked == len(PROMPTS)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    from arch_compare.models import build_model, get_preset
    from arch_compare.models.native import save_model
    folder = tmp_path_factory.mktemp("target_models")
    paths = {}
    for preset in ("gpt2-tiny", "ul2-tiny"):
        model = build_model(get_preset(preset))
        paths[preset] = save_model(folder / preset, model, model.init(jax.random.key(1)))
    return paths


@pytest.fixture(scope="module")
def model_targets(saved_models, vocabulary_path):
    """One loaded target per model, shared so that each compiled program is built once."""
    from arch_compare.models import get_preset
    return {preset: ModelTarget.load(path, vocabulary_path(get_preset(preset)), batch_size=2)
            for preset, path in saved_models.items()}


@pytest.mark.parametrize("preset", ["gpt2-tiny", "ul2-tiny"])
def test_model_target_greedy_equals_inference(preset, saved_models, model_targets, tmp_path):
    from arch_compare.decoding.search import DecodeConfig
    from arch_compare.trainer.inference import InferenceConfig, infer

    target = model_targets[preset]
    assert target.name == f"model:{saved_models[preset]}"
    settings = GenerationSettings(max_tokens=8, temperature=0.0)
    generated = target.generate(PROMPTS, settings)

    name = _imitation_task(tmp_path, f"targets_infer_{preset.replace('-', '_')}", PROMPTS)
    config = InferenceConfig(checkpoint_path=str(saved_models[preset]),
                             output_path=str(tmp_path / "infer"), feature_lengths=LENGTHS,
                             batch_size=2, decode=DecodeConfig(max_new_tokens=8), split="train")
    path = infer(target.model, target.params, target.vocabulary, name, config, progress=False)
    wanted = [_example_id(prompt) for prompt in PROMPTS]
    by_id = {p["id"]: p for p in map(json.loads, path.read_text().splitlines())}
    predictions = [by_id[example_id] for example_id in wanted]

    assert [p["inputs"] for p in predictions] == [format_history(p.turns) for p in PROMPTS]
    assert [g.reply.text for g in generated] == [p["prediction"] for p in predictions]
    assert any(g.reply.text for g in generated)  # a comparison of two empty strings proves little
    for g in generated:
        assert g.finish_reason in ("stop", "length") and 1 <= g.completion_tokens <= 8
        assert (g.finish_reason == "length") == (g.completion_tokens == 8)


def test_model_target_refuses_long_prompts_alone(model_targets):
    target = dataclasses.replace(model_targets["ul2-tiny"], max_prompt_tokens=40)
    long = Prompt.from_text("long", " ".join(["word"] * 30))
    short = Prompt.from_text("short", "Hi")
    replies = target.complete([long, short], GenerationSettings(max_tokens=8))
    assert replies[0].error and not replies[0].transient and "'long'" in replies[0].error
    assert replies[1].error is None
    # The same short prompt answers the same way alone and beside a refused one.
    assert replies[1] == target.complete([short], GenerationSettings(max_tokens=8))[0]


def test_model_target_sampling_is_seeded(model_targets):
    target = model_targets["gpt2-tiny"]
    sample = lambda seed: [r.text for r in target.complete(PROMPTS, GenerationSettings(
        max_tokens=8, temperature=1.0, seed=seed))]
    assert sample(1) == sample(1)
    assert any(sample(seed) != sample(1) for seed in (2, 3, 4))
    greedy = [r.text for r in target.complete(PROMPTS, GenerationSettings(max_tokens=8))]
    assert greedy == [r.text for r in target.complete(PROMPTS, GenerationSettings(
        max_tokens=8, seed=7))]  # the seed is for sampling only


def test_model_target_reads_a_hugging_face_directory(saved_models, model_targets,
                                                      vocabulary_path, tmp_path):
    from arch_compare.models import get_preset
    from arch_compare.models.hf import save_hf_checkpoint
    from arch_compare.models.native import load_model
    hf_dir = tmp_path / "hf"
    save_hf_checkpoint(*load_model(saved_models["gpt2-tiny"]), hf_dir)
    native = model_targets["gpt2-tiny"]
    hf = ModelTarget.load(hf_dir, vocabulary_path(get_preset("gpt2-tiny")), batch_size=2)
    assert hf.name == f"model:{hf_dir}" != native.name  # cached answers never mix the two
    settings = GenerationSettings(max_tokens=8)
    assert hf.complete(PROMPTS, settings) == native.complete(PROMPTS, settings)


def test_model_target_names_what_it_cannot_read(tmp_path, sentencepiece_model_path):
    with pytest.raises(ValueError, match="neither a training directory.*config.json"):
        ModelTarget.load(tmp_path, sentencepiece_model_path)


def test_settings_and_replies_validate():
    with pytest.raises(ValueError, match="seed"):
        GenerationSettings(seed=-1)
    with pytest.raises(ValueError, match="retry_after"):
        Reply(error="HTTP 400", retry_after=3)  # only a transient error says when to retry
    assert Reply(error="HTTP 429", transient=True, retry_after=3).retry_after == 3
