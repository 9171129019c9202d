"""The OpenAI batch interface over HTTP: upload a request file, create, find, poll a batch, and
read its output files (used by `batch_collection.collect_batch`).

    api = BatchAPI(target)                      # the same base_url, key and timeout as online
    file_id = api.upload("requests.jsonl", data)
    batch = api.create(file_id, {"arch_compare_request": "..."})
    batch = api.get(batch["id"])                # status, request_counts, output_file_id, ...
    text = api.content(batch["output_file_id"])

Every call retries what is worth retrying (HTTP 408/429/5xx, dropped connections) with a capped
exponential backoff that honours `Retry-After`, and raises `BatchAPIError` naming the URL and the
server's answer otherwise. Creating a batch is the one call that costs money, so `create` is never
retried here: its caller first looks for the batch with `find` (a create whose answer was lost may
still have created it).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable

from arch_compare.imitation.openai_chat import (ERROR_BODY_CHARS, TRANSIENT_STATUSES,
                                                OpenAIChatTarget, _masked, _retry_after)

CHAT_ENDPOINT = "/v1/chat/completions"
LIST_PAGE = 100  # batches per page when listing (the interface allows 1-100)


class BatchAPIError(RuntimeError):
    """A call to the batch interface that failed; `transient` when asking again may succeed."""

    def __init__(self, message: str, transient: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class BatchAPI:
    """The batch interface of `target`'s server (its `base_url`, API key variable and timeout)."""

    target: OpenAIChatTarget
    max_tries: int = 5
    backoff: float = 2.0
    max_backoff: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def upload(self, filename: str, data: bytes) -> str:
        """Uploads a JSONL request file (`purpose=batch`); returns its file id."""
        boundary = uuid.uuid4().hex
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"batch\r\n".encode(),
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/jsonl\r\n\r\n".encode(),
            data, f"\r\n--{boundary}--\r\n".encode()])
        answer = self._json("POST", "/files", body,
                            f"multipart/form-data; boundary={boundary}")
        return _field(answer, "id", self._url("/files"))

    def create(self, input_file_id: str, metadata: dict[str, str]) -> dict:
        """Creates a chat-completions batch over an uploaded file (one try: it is paid for)."""
        body = json.dumps({"input_file_id": input_file_id, "endpoint": CHAT_ENDPOINT,
                           "completion_window": "24h", "metadata": metadata}).encode()
        return self._json("POST", "/batches", body, "application/json", tries=1)

    def get(self, batch_id: str) -> dict:
        return self._json("GET", f"/batches/{urllib.parse.quote(batch_id)}")

    def find(self, metadata: dict[str, str], created_after: float) -> dict | None:
        """The newest batch whose metadata includes `metadata`, among those created after
        `created_after` (a Unix time; the list comes newest first, so paging stops there)."""
        after = None
        while True:
            query = {"limit": LIST_PAGE} | ({"after": after} if after else {})
            page = self._json("GET", f"/batches?{urllib.parse.urlencode(query)}")
            batches = page.get("data") or []
            for batch in batches:
                if (batch.get("metadata") or {}).items() >= metadata.items():
                    return batch
            if (not page.get("has_more") or not batches
                    or batches[-1].get("created_at", 0) < created_after):
                return None
            after = batches[-1]["id"]

    def content(self, file_id: str) -> bytes:
        return self._call("GET", f"/files/{urllib.parse.quote(file_id)}/content")

    # --- HTTP ------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.target.base_url + path

    def _json(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None, tries: int | None = None) -> dict:
        raw = self._call(method, path, body, content_type, tries)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            shown = raw[:ERROR_BODY_CHARS].decode("utf-8", "replace")
            raise BatchAPIError(f"{method} {self._url(path)}: expected a JSON object, got "
                                f"{shown!r}")
        return answer

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None, tries: int | None = None) -> bytes:
        tries = tries or self.max_tries
        for attempt in range(1, tries + 1):
            try:
                return self._once(method, path, body, content_type)
            except BatchAPIError as error:
                if not error.transient or attempt == tries:
                    raise
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                self.sleep(max(delay, error.retry_after or 0.0))
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, body: bytes | None,
              content_type: str | None) -> bytes:
        url = self._url(path)
        key = os.environ.get(self.target.api_key_env) or None
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self.target._opener().open(request, timeout=self.target.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            try:
                text = error.read().decode("utf-8", "replace")[:ERROR_BODY_CHARS]
            except (OSError, http.client.HTTPException):
                text = ""
            transient = error.code in TRANSIENT_STATUSES or error.code >= 500
            raise BatchAPIError(
                _masked(f"{method} {url}: HTTP {error.code} {error.reason}: {text}".strip(), key),
                transient, _retry_after(error.headers.get("Retry-After")) if transient else None
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise BatchAPIError(_masked(f"{method} {url}: {reason}", key), True) from None


def _field(answer: dict, name: str, url: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise BatchAPIError(f"{url}: the answer has no {name!r}: "
                            f"{json.dumps(answer)[:ERROR_BODY_CHARS]}")
    return value
