"""A loopback fake of the OpenAI batch interface (and of online chat completions, answering the
same way), logging what a client uploads, creates and gets answered, so tests can count how many
times each prompt was paid for.

    with FakeBatchServer(polls_to_complete=2, transient={"key": 1}) as server:
        target = OpenAIChatTarget(server.url, "fake-model")
        ...
        server.created   # every batch created: id, custom_ids, metadata, input_file_id
        server.answered  # custom_id -> how many successful answers the server produced

Behaviour, set by the constructor's arguments (changeable between calls, under `lock`):
- a batch is `validating` when created, `in_progress` on the following polls, and ends on its
  `polls_to_complete`-th poll (`never_finish=True`: it stays `in_progress`);
- `transient`: custom_id -> how many times it fails with an HTTP 500 line in the error file;
- `permanent`: custom_ids answered with an HTTP 400 line in the output file;
- `expire_after`: the next batch to end runs only that many requests and ends `expired`, the
  rest `batch_expired` lines in the error file (then the setting clears itself); with
  `expire_status="cancelled"` it ends `cancelled` instead, the rest `batch_cancelled`;
- `fail_validation`: batches end `failed` with a validation error;
- `lose_create_answers`: how many batch creations succeed but answer HTTP 502 (the answer lost);
- `unavailable_polls`: how many batch GETs answer HTTP 503 (with `Retry-After: 3`);
- `hold_list`: an Event that the batch list waits for before answering (to kill a client at a
  chosen step).
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer_of(messages: list[dict]) -> str:
    return f"Answer to: {messages[-1]['content']}"


def completion(model: str, messages: list[dict]) -> dict:
    """The chat-completions body the fake answers with (online and in batches alike)."""
    text = answer_of(messages)
    prompt_tokens = sum(len(message["content"].split()) for message in messages)
    return {"id": "chatcmpl-fake", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())}}


class FakeBatchServer:
    def __init__(self, *, polls_to_complete: int = 1, transient: dict[str, int] | None = None,
                 permanent: set[str] | None = None, expire_after: int | None = None,
                 expire_status: str = "expired", fail_validation: bool = False,
                 never_finish: bool = False):
        self.polls_to_complete = polls_to_complete
        self.transient = dict(transient or {})
        self.permanent = set(permanent or ())
        self.expire_after = expire_after
        self.expire_status = expire_status
        self.fail_validation = fail_validation
        self.never_finish = never_finish
        self.hold_list: threading.Event | None = None
        self.lose_create_answers = 0  # creates that make the batch, then answer HTTP 502
        self.unavailable_polls = 0  # batch GETs answered HTTP 503 with Retry-After: 3
        self.lock = threading.RLock()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}  # in creation order
        self.uploads: list[dict] = []  # {"id", "custom_ids"}
        self.created: list[dict] = []  # {"id", "custom_ids", "metadata", "input_file_id"}
        self.answered: collections.Counter = collections.Counter()  # custom_id -> 200 answers
        self.online: collections.Counter = collections.Counter()  # prompt text -> online asks
        self.polls: collections.Counter = collections.Counter()  # batch id -> GETs
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "FakeBatchServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.hold_list is not None:
            self.hold_list.set()
        self._server.shutdown()
        self._server.server_close()

    def paid(self) -> collections.Counter:
        """custom_id -> how many created batches include it."""
        return collections.Counter(key for batch in self.created for key in batch["custom_ids"])

    # --- the interface ------------------------------------------------------------------------

    def upload(self, purpose: str, data: bytes) -> tuple[int, dict]:
        if purpose != "batch":
            return 400, _error(f"purpose must be 'batch', got {purpose!r}")
        with self.lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
            self.uploads.append({"id": file_id, "custom_ids": [
                json.loads(line)["custom_id"] for line in data.decode().splitlines()]})
        return 200, {"id": file_id, "object": "file", "bytes": len(data), "purpose": "batch",
                     "filename": "input.jsonl", "created_at": int(time.time())}

    def create(self, request: dict) -> tuple[int, dict]:
        with self.lock:
            data = self.files.get(request.get("input_file_id"))
            if data is None or request.get("endpoint") != "/v1/chat/completions" or \
                    request.get("completion_window") != "24h":
                return 400, _error(f"bad batch request {request}")
            batch_id = f"batch_{len(self.batches) + 1}"
            lines = [json.loads(line) for line in data.decode().splitlines()]
            batch = {"id": batch_id, "object": "batch", "endpoint": request["endpoint"],
                     "input_file_id": request["input_file_id"], "completion_window": "24h",
                     "status": "validating", "created_at": int(time.time()),
                     "metadata": request.get("metadata"), "output_file_id": None,
                     "error_file_id": None, "errors": None,
                     "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
            self.batches[batch_id] = batch
            self.created.append({"id": batch_id, "custom_ids": [l["custom_id"] for l in lines],
                                 "metadata": request.get("metadata"),
                                 "input_file_id": request["input_file_id"]})
            if self.lose_create_answers > 0:
                self.lose_create_answers -= 1
                return 502, _error("bad gateway", "server_error")
            return 200, dict(batch)

    def get(self, batch_id: str) -> tuple[int, dict]:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, _error(f"no batch {batch_id}")
            self.polls[batch_id] += 1
            if batch["status"] not in ("validating", "in_progress"):
                return 200, dict(batch)
            if self.polls[batch_id] >= self.polls_to_complete and not self.never_finish:
                self._finish(batch)
            else:
                batch["status"] = "in_progress"
            return 200, dict(batch)

    def list(self, query: dict) -> tuple[int, dict]:
        if self.hold_list is not None:
            self.hold_list.wait(30)
        with self.lock:
            newest_first = list(reversed(self.batches.values()))
            after = query.get("after", [None])[0]
            if after is not None:
                ids = [batch["id"] for batch in newest_first]
                newest_first = newest_first[ids.index(after) + 1:]
            limit = int(query.get("limit", ["20"])[0])
            page = [dict(batch) for batch in newest_first[:limit]]
            return 200, {"object": "list", "data": page, "has_more": len(newest_first) > limit,
                         "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None}

    def _finish(self, batch: dict) -> None:
        if self.fail_validation:
            batch.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "the model does not exist", "line": 1}]})
            return
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines()]
        runs = len(lines) if self.expire_after is None else self.expire_after
        expired, self.expire_after = self.expire_after is not None, None
        output, errors = [], []
        for number, line in enumerate(lines):
            key, result = line["custom_id"], {"id": f"batch_req_{number}",
                                              "custom_id": line["custom_id"], "error": None}
            if number >= runs:
                errors.append(result | {"response": None, "error": {
                    "code": self.expire_status.replace("expired", "batch_expired").replace(
                        "cancelled", "batch_cancelled"), "message": "not run"}})
            elif self.transient.get(key, 0) > 0:
                self.transient[key] -= 1
                errors.append(result | {"response": {"status_code": 500, "body": _error(
                    "the server had an error", "server_error")}})
            elif key in self.permanent:
                output.append(result | {"response": {"status_code": 400, "body": _error(
                    "invalid request: this prompt is refused")}})
            else:
                self.answered[key] += 1
                output.append(result | {"response": {"status_code": 200, "request_id": "r",
                                                     "body": completion(line["body"]["model"],
                                                                        line["body"]["messages"])
                                                     }})
        for field, results in (("output_file_id", output), ("error_file_id", errors)):
            if results:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in results).encode()
                batch[field] = file_id
        batch["status"] = self.expire_status if expired else "completed"
        batch["request_counts"] = {"total": len(lines), "completed": sum(
            r["response"]["status_code"] == 200 for r in output),
            "failed": len(lines) - sum(r["response"]["status_code"] == 200 for r in output)}


def _error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind}}


def _handler(fake: FakeBatchServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            parts = urllib.parse.urlsplit(self.path)
            path = parts.path
            if path == "/v1/batches":
                return self._json(*fake.list(urllib.parse.parse_qs(parts.query)))
            if path.startswith("/v1/batches/"):
                with fake.lock:
                    unavailable, fake.unavailable_polls = (fake.unavailable_polls > 0,
                                                           max(0, fake.unavailable_polls - 1))
                if unavailable:
                    return self._json(503, _error("overloaded", "server_error"),
                                      {"Retry-After": "3"})
                return self._json(*fake.get(path.rsplit("/", 1)[1]))
            if path.startswith("/v1/files/") and path.endswith("/content"):
                data = fake.files.get(path.split("/")[3])
                if data is None:
                    return self._json(404, _error(f"no file {path}"))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                return self.wfile.write(data)
            self._json(404, _error(f"no route {path}"))

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v1/files":
                return self._json(*fake.upload(*_multipart(self.headers["Content-Type"], body)))
            if self.path == "/v1/batches":
                return self._json(*fake.create(json.loads(body)))
            if self.path == "/v1/chat/completions":
                request = json.loads(body)
                with fake.lock:
                    fake.online[request["messages"][-1]["content"]] += 1
                return self._json(200, completion(request["model"], request["messages"]))
            self._json(404, _error(f"no route {self.path}"))

        def _json(self, status, payload, headers=None):
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _multipart(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(purpose, file bytes) of a multipart/form-data upload."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    fields = {}
    for part in body.split(b"--" + boundary)[1:-1]:
        head, _, value = part.partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value[:-2] if value.endswith(b"\r\n") else value
    return fields.get("purpose", b"").decode(), fields.get("file", b"")
