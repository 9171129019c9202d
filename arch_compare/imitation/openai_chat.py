"""An OpenAI-compatible chat-completions endpoint as a target: the OpenAI API, vLLM, TGI,
llama.cpp's server, `arch-compare serve`.

Errors are replies (see `targets.py`): HTTP 408/429/5xx and dropped connections are transient,
with the server's `Retry-After` kept; the API key is read from the environment at each request
and masked in every error text. A completion's `usage` (prompt and completion tokens, as the
server counted them) comes back with its text.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import http.client
import json
import math
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Sequence

from arch_compare.imitation.targets import GenerationSettings, Prompt, Reply, TokenUsage

# Status codes worth asking again besides every 5xx (the server failed): the request timed out,
# too many requests.
TRANSIENT_STATUSES = frozenset({408, 429})
# A reply body quoted in an error is cut here: enough to diagnose, not a page of HTML.
ERROR_BODY_CHARS = 300
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# One opener for every loopback request: it reads nothing from the environment, and threads share
# it as they share `urlopen`'s; building one per request cost a loopback request a third of its
# client time (many collection workers against a local server).
_LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass(frozen=True)
class OpenAIChatTarget:
    """A chat-completions endpoint: the OpenAI API, vLLM, TGI, llama.cpp's server, `arch-compare
    serve`.

    `base_url` ends before `/chat/completions` (for example `http://127.0.0.1:8000/v1`). The API key
    is read from the environment variable `api_key_env` at each request and sent only in the
    `Authorization` header; it is never stored on the target, and it is masked in error texts (a
    server may quote it back). Local servers usually need none. `timeout` (seconds) bounds the
    connection and each read. The default `name` identifies the model, not where it is served,
    so moving a server keeps its cached answers valid.
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    name: str = ""

    def __post_init__(self):
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OpenAIChatTarget.base_url must be an http(s) URL such as "
                             f"http://127.0.0.1:8000/v1, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"OpenAIChatTarget.model must be a non-empty string, got "
                             f"{self.model!r}")
        if not self.timeout > 0:
            raise ValueError(f"OpenAIChatTarget.timeout must be positive, got {self.timeout}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not self.name:
            object.__setattr__(self, "name", f"openai-chat:{self.model}")

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def complete(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Reply]:
        return [self._ask(prompt, settings) for prompt in prompts]

    def _ask(self, prompt: Prompt, settings: GenerationSettings) -> Reply:
        key = os.environ.get(self.api_key_env) or None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps({"model": self.model, "messages": prompt.messages(),
                           **settings.to_dict()}).encode()
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener().open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            return _http_error_reply(self.url, error, key)
        except (ssl.SSLCertVerificationError, urllib.error.URLError) as error:
            reason = getattr(error, "reason", error)
            # A certificate that does not verify will not verify on the next attempt either.
            return Reply(error=_masked(f"{self.url}: {reason}", key),
                         transient=not isinstance(reason, ssl.SSLCertVerificationError))
        except (OSError, http.client.HTTPException) as error:
            # Timeouts, refused / reset / dropped connections, replies cut short.
            return Reply(error=_masked(f"{self.url}: {type(error).__name__}: {error}", key),
                         transient=True)
        return _completion_reply(self.url, raw, key)

    def _opener(self) -> urllib.request.OpenerDirector:
        # A proxy from the environment must not see requests meant for this machine.
        if urllib.parse.urlsplit(self.base_url).hostname in LOOPBACK_HOSTS:
            return _LOOPBACK_OPENER
        return urllib.request.build_opener()


def _masked(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _http_error_reply(url: str, error: urllib.error.HTTPError, key: str | None) -> Reply:
    try:
        body = error.read().decode("utf-8", "replace")[:ERROR_BODY_CHARS]
    except (OSError, http.client.HTTPException):
        body = ""
    transient = error.code in TRANSIENT_STATUSES or error.code >= 500
    return Reply(error=_masked(f"{url}: HTTP {error.code} {error.reason}: {body}".strip(), key),
                 transient=transient,
                 retry_after=_retry_after(error.headers.get("Retry-After")) if transient else None)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _completion_reply(url: str, raw: bytes, key: str | None) -> Reply:
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError) as error:
        # A 200 whose body is not a completion: the same request would get the same body.
        shown = raw[:ERROR_BODY_CHARS].decode("utf-8", "replace")
        return Reply(error=_masked(f"{url}: malformed completion ({type(error).__name__}: "
                                   f"{error}): {shown!r}", key))
    if not isinstance(content, str) or not content.strip():
        return Reply(error=_masked(f"{url}: the completion has no text (content={content!r})",
                                   key))
    return Reply(text=content, usage=_usage(json.loads(raw).get("usage")))


def _usage(fields) -> TokenUsage | None:
    """The completion's `usage` as the server counted it; None where it sends none or a malformed
    one (the answer is still good; its cost is then estimated from its length)."""
    try:
        return TokenUsage(fields["prompt_tokens"], fields["completion_tokens"])
    except (TypeError, KeyError, ValueError):
        return None


