"""Any checkpoint as an OpenAI-compatible chat-completions endpoint (`arch-compare serve`).

    POST /v1/chat/completions   {"messages": [...], "max_tokens", "temperature", "top_p", "seed"}
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok"}

Answers are non-streaming and come from `ModelTarget.generate`, the same code that collects from
a checkpoint directly, so a model answers the same text whether asked in-process or over HTTP.
One worker thread owns the model: requests wait in a queue, and those with equal settings that
arrive while the model is busy are generated together, up to `max_batch` at a time (the batch
shape stays fixed, so nothing recompiles for it). Sampled answers (temperature > 0) therefore
depend on which requests share a batch; greedy ones do not.

A bad request gets HTTP 400 with an OpenAI-style error naming the field (`error.param`). There
is no authentication: the server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import functools
import json
import queue
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from arch_compare.data.conversations import Turn
from arch_compare.imitation.model_target import ModelReply, ModelTarget
from arch_compare.imitation.targets import GenerationSettings, Prompt

MAX_BODY_BYTES = 4 * 2**20
# OpenAI's names for roles; "developer" is the newer name of "system".
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Request fields that would change the answer but are not implemented: refused, not ignored.
UNSUPPORTED = ("stop", "tools", "functions", "tool_choice", "logit_bias", "logprobs",
               "top_logprobs", "response_format", "presence_penalty", "frequency_penalty")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RequestError(ValueError):
    """A request the server refuses: HTTP `status`, and the request field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param,
                          "code": self.code}}


# --- Reading a request ----------------------------------------------------------------------------

def parse_chat_request(body: Any, model_name: str, max_tokens_limit: int
                       ) -> tuple[Prompt, GenerationSettings]:
    """A chat-completions request -> (prompt, settings); RequestError names what is wrong."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise RequestError(f"model {model!r} is not served here; this server serves "
                           f"{model_name!r}", "model", status=404, code="model_not_found")
    if body.get("stream"):
        raise RequestError("streaming is not supported; send stream=false", "stream")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", "n")
    for field in UNSUPPORTED:
        if body.get(field) not in (None, False, 0, [], {}):
            raise RequestError(f"{field!r} is not supported by this server", field)
    prompt = Prompt(f"request-{uuid.uuid4().hex[:12]}", _turns(body.get("messages")))
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _number(body, field, min(256, max_tokens_limit), integer=True, low=1,
                         high=max_tokens_limit)
    settings = GenerationSettings(
        max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, low=0, high=2),
        top_p=_number(body, "top_p", 1.0, low=0, high=1, low_open=True),
        seed=_number(body, "seed", 0, integer=True, low=0, high=2**31 - 1))
    return prompt, settings


def _turns(messages: Any) -> tuple[Turn, ...]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content}", "messages")
    turns = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with role and content", where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}",
                               f"{where}.role")
        try:
            turns.append(Turn(ROLES[role], _text(message.get("content"))))
        except (TypeError, ValueError) as error:
            raise RequestError(f"{where}.content: {error}", f"{where}.content") from None
    if turns[-1].role != "user":
        raise RequestError("the last message must be a user message", "messages")
    return tuple(turns)


def _text(content: Any) -> str:
    """A message's text: a string, or a list of {"type": "text", "text"} parts (joined)."""
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text"
                   and isinstance(part.get("text"), str) for part in content):
            raise ValueError("only text parts ({'type': 'text', 'text': ...}) are supported")
        return "".join(part["text"] for part in content)
    return content


def _number(body: dict, field: str, default, *, integer: bool = False, low: float,
            high: float, low_open: bool = False):
    value = body.get(field)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RequestError(f"{field!r} must be {'an integer' if integer else 'a number'}, "
                           f"got {value!r}", field)
    if not ((low < value) if low_open else (low <= value)) or value > high:
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise RequestError(f"{field!r} must be in {bounds}, got {value!r}", field)
    return value


# --- Generating: one worker owns the model --------------------------------------------------------

class _Job:
    def __init__(self, prompt: Prompt, settings: GenerationSettings):
        self.prompt, self.settings = prompt, settings
        self.result: ModelReply | None = None
        self.error: Exception | None = None
        self.done = threading.Event()


class Generator:
    """Serialises generation on one thread and batches requests with equal settings."""

    def __init__(self, target: ModelTarget):
        self._target = target
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="generate", daemon=True)
        self._thread.start()

    def generate(self, prompt: Prompt, settings: GenerationSettings) -> ModelReply:
        job = _Job(prompt, settings)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        waiting: list[_Job] = []
        stopping = False
        while waiting or not stopping:
            if not waiting:
                waiting.append(self._jobs.get())
            while True:  # whatever arrived while the model was busy joins this round
                try:
                    waiting.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stopping = stopping or None in waiting
            waiting = [job for job in waiting if job is not None]
            if not waiting:
                continue
            settings = waiting[0].settings
            batch = [job for job in waiting if job.settings == settings]
            batch = batch[:self._target.batch_size]
            waiting = [job for job in waiting if job not in batch]
            try:
                for job, result in zip(batch, self._target.generate(
                        [job.prompt for job in batch], settings)):
                    job.result = result
            except Exception as error:  # reported to each request as a 500, the server stays up
                for job in batch:
                    job.error = error
            for job in batch:
                job.done.set()


# --- HTTP -----------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server_version = "arch-compare"
    server: "_Server"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{
                "id": self.server.model_name, "object": "model",
                "created": self.server.started, "owned_by": "arch-compare"}]})
        else:
            self._send(404, RequestError(f"no such path: {self.path}", status=404).body())

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._send(404, RequestError(f"no such path: {self.path}", status=404).body())
            return
        try:
            prompt, settings = parse_chat_request(self._json_body(), self.server.model_name,
                                                  self.server.max_tokens_limit)
            generated = self.server.generator.generate(prompt, settings)
        except RequestError as error:
            self._send(error.status, error.body())
            return
        except Exception as error:  # the model failed; say so rather than drop the connection
            self._send(500, RequestError(f"generation failed: {type(error).__name__}: {error}",
                                         status=500).body())
            return
        if generated.reply.error is not None:  # the prompt itself is refused (too long)
            self._send(400, RequestError(generated.reply.error, "messages").body())
            return
        self._send(200, _completion(self.server.model_name, generated))

    def _json_body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError("a Content-Length header is required", status=411)
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(f"the request body exceeds {MAX_BODY_BYTES} bytes", status=413)
        try:
            return json.loads(self.rfile.read(int(length)))
        except ValueError as error:
            raise RequestError(f"the request body is not valid JSON: {error}") from None

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"[serve] {self.address_string()} {format % args}\n")


def _completion(model_name: str, generated: ModelReply) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": model_name,
        "choices": [{"index": 0, "finish_reason": generated.finish_reason,
                     "message": {"role": "assistant", "content": generated.reply.text}}],
        "usage": {"prompt_tokens": generated.prompt_tokens,
                  "completion_tokens": generated.completion_tokens,
                  "total_tokens": generated.prompt_tokens + generated.completion_tokens}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a request stuck in flight must not hold up shutdown

    def __init__(self, address: tuple[str, int], target: ModelTarget, model_name: str,
                 max_tokens_limit: int):
        super().__init__(address, _Handler)
        self.model_name, self.max_tokens_limit = model_name, max_tokens_limit
        self.started = int(time.time())
        self.generator = Generator(target)


def serve(target: ModelTarget, *, model_name: str, host: str = "127.0.0.1", port: int = 8000,
          max_tokens_limit: int = 2048,
          announce: Callable[[str], None] = functools.partial(print, flush=True)) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish in-flight work and return.

    `announce` gets one line with the base URL once the server accepts requests (port 0 picks
    a free port; the line says which).
    """
    if max_tokens_limit < 1:
        raise ValueError(f"max_tokens_limit must be positive, got {max_tokens_limit}")
    try:
        server = _Server((host, port), target, model_name, max_tokens_limit)
    except OSError as error:  # port in use, address not on this machine, ...
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set())
                for number in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        if host not in LOOPBACK:
            announce(f"warning: {host} may be reachable from other machines, and this server "
                     f"has no authentication")
        announce(f"serving {model_name} at http://{host}:{server.server_address[1]}/v1")
        while not stop.wait(0.5):  # a timed wait lets the signal handlers run promptly
            pass
    finally:
        server.shutdown()
        server.server_close()
        server.generator.close()
        thread.join()
        for number, handler in previous.items():
            signal.signal(number, handler)
