"""A loopback fake of OpenAI's chat-completions endpoint for collection tests and benchmarks.

    with FakeOpenAIChat(latency=0.05, rate_limit_every=20, retry_after="1") as server:
        target = OpenAIChatTarget(server.base_url, model="fake")
        ...
        server.log  # every request: when it started and ended here, its prompt, tokens, status

It answers each prompt with a text derived from its messages alone (so two runs agree), after
`latency` seconds, with a `usage` block; every `rate_limit_every`-th request (and those numbered
in `rate_limit_requests`, counting from 1) is refused with HTTP 429 and, unless `retry_after` is
None, a `Retry-After` header. The log is what a provider would measure: tests check rate limits
and repeats from it, not from the client's own account.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb, as the client estimates a request's tokens


@dataclasses.dataclass(frozen=True)
class LoggedRequest:
    number: int  # 1 for the first request the server received
    started: float  # time.monotonic() when the request reached the handler
    finished: float  # time.monotonic() just before the reply was sent
    prompt: str  # a hash of the messages: the same prompt, the same value
    tokens: int  # what it counts against a TPM limit: ceil(prompt chars / 4) + max_tokens
    status: int


def prompt_hash(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def fake_answer(messages: list[dict]) -> str:
    """The answer the server gives to `messages`, whenever it is asked."""
    return f"Answer {prompt_hash(messages)[:8]} to: {messages[-1]['content']}"


def request_tokens(messages: list[dict], max_tokens: int) -> int:
    characters = sum(len(message["content"]) for message in messages)
    return math.ceil(characters / CHARS_PER_TOKEN) + max_tokens


def answer_counts(log: list[LoggedRequest]) -> collections.Counter:
    return collections.Counter(entry.prompt for entry in log if entry.status == 200)


class _Server(ThreadingHTTPServer):
    # Enough queued connections for many clients at once: the default of 5 makes the kernel drop
    # connections, which then wait a second for a retransmit.
    request_queue_size = 256
    daemon_threads = True


class FakeOpenAIChat:
    def __init__(self, latency: float = 0.05, rate_limit_every: int | None = None,
                 rate_limit_requests: frozenset[int] = frozenset(),
                 retry_after: str | None = "1"):
        self.latency = latency
        self.rate_limit_every = rate_limit_every
        self.rate_limit_requests = frozenset(rate_limit_requests)
        self.retry_after = retry_after
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._count = 0
        self._server: _Server | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeOpenAIChat":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        # A short poll: `stop` waits for the serving loop to notice (0.5 s by default).
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def answers(self) -> collections.Counter:
        """How often each prompt (by `prompt_hash`) was answered (HTTP 200)."""
        with self._lock:
            return answer_counts(self.log)

    def _number(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def _refuses(self, number: int) -> bool:
        return number in self.rate_limit_requests or bool(
            self.rate_limit_every and number % self.rate_limit_every == 0)

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.log.append(entry)


def _handler(server: FakeOpenAIChat) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass  # the test's output is not the place for an access log

        def do_GET(self):  # the log, for a test in another process
            with server._lock:
                data = json.dumps([dataclasses.asdict(entry) for entry in server.log]).encode()
            self.send_response(200 if self.path == "/log" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            started = time.monotonic()
            number = server._number()
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            messages, max_tokens = request["messages"], request["max_tokens"]
            time.sleep(server.latency)
            if server._refuses(number):
                status, headers = 429, {}
                if server.retry_after is not None:
                    headers["Retry-After"] = server.retry_after
                payload = {"error": {"message": "Rate limit reached (fake)",
                                     "type": "requests", "code": "rate_limit_exceeded"}}
            else:
                status, headers = 200, {}
                answer = fake_answer(messages)
                prompt_tokens = request_tokens(messages, 0)
                completion_tokens = math.ceil(len(answer) / CHARS_PER_TOKEN)
                payload = {"id": f"chatcmpl-{number}", "object": "chat.completion",
                           "model": request["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": answer}}],
                           "usage": {"prompt_tokens": prompt_tokens,
                                     "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}}
            server._record(LoggedRequest(number, started, time.monotonic(),
                                         prompt_hash(messages),
                                         request_tokens(messages, max_tokens), status))
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json",
                                "Content-Length": str(len(data)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


class FakeOpenAIChatProcess:
    """The same server in a process of its own, as a real server would be: on a small machine
    the client's threads and the server's then do not share one interpreter lock. Its log comes
    over HTTP (times are `time.monotonic()`, which every process of the machine shares)."""

    def __init__(self, **options):
        self.options = options
        self.base_url = ""
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "FakeOpenAIChatProcess":
        self._process = subprocess.Popen([sys.executable, __file__, json.dumps(self.options)],
                                         stdout=subprocess.PIPE, text=True)
        self.base_url = self._process.stdout.readline().strip()
        if not self.base_url:
            raise RuntimeError(f"the fake server did not start (exit {self._process.wait()})")
        return self

    def __exit__(self, *exc_info) -> None:
        self._process.kill()
        self._process.wait()

    @property
    def log(self) -> list[LoggedRequest]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        root = self.base_url.removesuffix("/v1")
        with opener.open(f"{root}/log", timeout=30) as response:
            return [LoggedRequest(**entry) for entry in json.loads(response.read())]

    def answers(self) -> collections.Counter:
        return answer_counts(self.log)


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    options["rate_limit_requests"] = frozenset(options.get("rate_limit_requests", ()))
    fake = FakeOpenAIChat(**options)
    fake.start()
    print(fake.base_url, flush=True)
    threading.Event().wait()  # until killed
