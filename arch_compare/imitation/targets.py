"""What is being imitated: a target answers chat prompts.

A target is anything with a `name` and `complete(prompts, settings) -> list[Reply]`: a model this
framework loads, an OpenAI-compatible chat-completions endpoint, or a plain Python function (the
offline demo's synthetic target). Collection (`collection.py`) caches replies by a hash of the
prompt, the settings and the target's name, so a target must be deterministic for given settings
when `temperature == 0`.

Errors are replies, not exceptions: a reply carries either `text` or an `error` with `transient`
set when asking again may succeed (timeouts, HTTP 429/5xx, dropped connections). Collection retries
transient errors and records permanent ones; neither ever becomes a training example.

Build targets from a specification with `make_target({"kind": ..., ...})`; `TARGET_KINDS` lists
the kinds.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import hashlib
import importlib
import http.client
import inspect
import json
import math
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping, Protocol, Sequence

from arch_compare.data.conversations import Turn


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A chat history ending with a user turn, with a stable id from its source."""

    prompt_id: str
    turns: tuple[Turn, ...]

    def __post_init__(self):
        turns = tuple(self.turns)
        if not turns or turns[-1].role != "user":
            raise ValueError(f"prompt {self.prompt_id!r}: must end with a user turn")
        object.__setattr__(self, "turns", turns)

    @classmethod
    def from_text(cls, prompt_id: str, text: str) -> "Prompt":
        return cls(prompt_id, (Turn("user", text),))

    def messages(self) -> list[dict[str, str]]:
        """The OpenAI chat-completions form: [{"role", "content"}, ...]."""
        return [{"role": turn.role, "content": turn.text} for turn in self.turns]


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.max_tokens <= 0:
            raise ValueError(f"GenerationSettings.max_tokens must be positive, "
                             f"got {self.max_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("GenerationSettings: temperature must be >= 0 and top_p in (0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            # Decoding seeds a PRNG key, which takes a non-negative integer.
            raise ValueError(f"GenerationSettings.seed must be an integer >= 0, got {self.seed!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Reply:
    text: str | None = None
    error: str | None = None
    transient: bool = False  # only meaningful with `error`
    retry_after: float | None = None  # seconds the server asked to wait (HTTP Retry-After)

    def __post_init__(self):
        if (self.text is None) == (self.error is None):
            raise ValueError("a Reply has exactly one of text and error")
        if self.retry_after is not None and not (self.transient and self.retry_after >= 0):
            raise ValueError("Reply.retry_after is for transient errors and must be >= 0")

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.text and self.text.strip())


class Target(Protocol):
    name: str

    def complete(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Reply]:
        """One reply per prompt, in order."""


def cache_key(target_name: str, prompt: Prompt, settings: GenerationSettings) -> str:
    """What identifies one answer: the target, the whole history and the generation settings."""
    payload = json.dumps({"target": target_name, "messages": prompt.messages(),
                          "settings": settings.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class FunctionTarget:
    """A Python function of the chat history as a target (deterministic, offline)."""

    name: str
    respond: Callable[[tuple[Turn, ...]], str]

    def complete(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Reply]:
        del settings  # a function answers the same way whatever the sampling settings
        return [Reply(text=self.respond(prompt.turns)) for prompt in prompts]

    @classmethod
    def from_path(cls, name: str, function: str) -> "FunctionTarget":
        """`function` as "package.module:attribute" (how gin files and study configs name it)."""
        module_name, _, attribute = function.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"function target {name!r}: expected 'package.module:function', "
                             f"got {function!r}")
        module = importlib.import_module(module_name)
        if not callable(getattr(module, attribute, None)):
            raise ValueError(f"function target {name!r}: {module_name} has no function "
                             f"{attribute!r}")
        return cls(name, getattr(module, attribute))


# --- An OpenAI-compatible chat-completions endpoint -----------------------------------------------

# Status codes worth asking again besides every 5xx (the server failed): the request timed out,
# too many requests.
TRANSIENT_STATUSES = frozenset({408, 429})
# A reply body quoted in an error is cut here: enough to diagnose, not a page of HTML.
ERROR_BODY_CHARS = 300
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


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
            return urllib.request.build_opener(urllib.request.ProxyHandler({}))
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
    return Reply(text=content)


# --- A model this framework loads -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelReply:
    """One generation with what an API reports beside the text (`arch-compare serve` uses it)."""

    reply: Reply
    prompt_tokens: int
    completion_tokens: int = 0  # generated tokens, EOS included
    finish_reason: str | None = None  # "stop": EOS reached; "length": max_tokens reached

    def __post_init__(self):
        if self.finish_reason not in (None, "stop", "length"):
            raise ValueError(f"ModelReply.finish_reason must be 'stop' or 'length', got "
                             f"{self.finish_reason!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class ModelTarget:
    """A model of this framework answering as it was trained to: the history rendered by
    `format_history` (the `inputs` of every training example) and tokenized as the feature
    converter does (`prompt_tokens`), then decoded greedily (temperature 0) or by sampling, and cut
    at the vocabulary's EOS.

    Prompts go through `generate` `batch_size` rows at a time; a short batch is filled with copies
    of its first row, so the compiled program depends only on the prompts' width. A prompt longer
    than `max_prompt_tokens` (or than a learned-position table leaves room for) gets a permanent
    error rather than a silently truncated question. Build one with `ModelTarget.load`.

    `mesh` (a `jax.sharding.Mesh`; None: the mesh `params` are placed on, else one device) is
    where it decodes: parameters split as in training, each batch's rows over data x fsdp.
    """

    name: str
    model: Any  # arch_compare.models.model.BaseModel
    params: Any  # its parameter tree
    vocabulary: Any  # seqio.Vocabulary
    batch_size: int = 8
    max_prompt_tokens: int | None = None
    mesh: Any = None  # jax.sharding.Mesh | None

    def __post_init__(self):
        if not self.name:
            raise ValueError("ModelTarget.name must be a non-empty string")
        if self.batch_size <= 0:
            raise ValueError(f"ModelTarget.batch_size must be positive, got {self.batch_size}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens <= 0:
            raise ValueError(f"ModelTarget.max_prompt_tokens must be positive, got "
                             f"{self.max_prompt_tokens}")

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, vocabulary: str | os.PathLike, *,
             name: str | None = None, batch_size: int = 8, max_prompt_tokens: int | None = None,
             dtype: str | None = None, execution: Any = None) -> "ModelTarget":
        """A training MODEL_DIR (its newest checkpoint), a native checkpoint or a local Hugging
        Face directory, with the vocabulary file of its family.

        `execution` (an `arch_compare.execution.ExecutionConfig` or a dict of its fields; None:
        one device, the checkpoint's dtypes or `dtype`) says where it runs: the parameters are
        read straight onto its mesh, split as in training, in its `param_dtype`, and it computes
        in its `dtype`. Its mesh 'auto' is sized for `batch_size` rows of `max_prompt_tokens`
        (default 1024) prompt tokens and 256 new tokens.

        The default name is the checkpoint's absolute path (and step, for a training directory),
        so answers cached from one checkpoint are never served for another.
        """
        # Imported here: TensorFlow (under seqio) takes seconds to import, and collecting from an
        # HTTP endpoint needs none of it.
        from arch_compare.data.vocabularies import vocabulary_for_model
        from arch_compare.models.loading import load_checkpoint

        if execution is None:
            loaded = load_checkpoint(checkpoint, dtype=dtype)
            model, params, mesh = loaded.model, loaded.params, None
        else:
            model, params, mesh, loaded = _load_on_mesh(checkpoint, execution, dtype, batch_size,
                                                        max_prompt_tokens)
        return cls(name=name or f"model:{loaded.description}", model=model,
                   params=params, vocabulary=vocabulary_for_model(model.config, vocabulary),
                   batch_size=batch_size, max_prompt_tokens=max_prompt_tokens, mesh=mesh)

    def complete(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Reply]:
        return [generated.reply for generated in self.generate(prompts, settings)]

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings
                 ) -> list[ModelReply]:
        from arch_compare.data.conversations import format_history
        from arch_compare.data.converters import prompt_tokens

        tokens = [prompt_tokens(self.model.config, self.vocabulary, format_history(prompt.turns))
                  for prompt in prompts]
        limit = self._prompt_limit(settings)
        results: list[ModelReply | None] = [
            None if len(row) <= limit else ModelReply(Reply(error=(
                f"prompt {prompt.prompt_id!r} has {len(row)} tokens; {self.name} takes at most "
                f"{limit} with max_tokens={settings.max_tokens}")), prompt_tokens=len(row))
            for prompt, row in zip(prompts, tokens)]
        todo = [index for index, result in enumerate(results) if result is None]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for index, generated in zip(chunk, self._generate_batch([tokens[i] for i in chunk],
                                                                    settings)):
                results[index] = generated
        return results

    def _prompt_limit(self, settings: GenerationSettings) -> int:
        limit = self.max_prompt_tokens or sys.maxsize
        model_limit = self.model.max_prompt_tokens(settings.max_tokens)
        return limit if model_limit is None else min(limit, model_limit)

    def _generate_batch(self, rows: list[list[int]], settings: GenerationSettings
                        ) -> list[ModelReply]:
        from arch_compare.decoding.search import DecodeConfig, generate

        eos = self.vocabulary.eos_id
        if settings.temperature == 0:
            decode = DecodeConfig(settings.max_tokens, method="greedy", eos_id=eos)
        else:
            decode = DecodeConfig(settings.max_tokens, method="sample", eos_id=eos,
                                  temperature=settings.temperature, top_p=settings.top_p,
                                  seed=settings.seed)
        padded = rows + [rows[0]] * (self.batch_size - len(rows))
        output = generate(self.model, self.params, padded, decode, mesh=self.mesh)
        tokens, lengths = output.tokens, output.lengths
        results = []
        for row, prompt in enumerate(rows):
            ids = tokens[row, :lengths[row]].tolist()
            stopped = bool(ids) and ids[-1] == eos
            text = self.vocabulary.decode(ids[:-1] if stopped else ids)
            results.append(ModelReply(Reply(text=text), prompt_tokens=len(prompt),
                                      completion_tokens=len(ids),
                                      finish_reason="stop" if stopped else "length"))
        return results


def _load_on_mesh(checkpoint, execution: Any, dtype: str | None, batch_size: int,
                  max_prompt_tokens: int | None):
    """(model, params, mesh, loaded checkpoint) for `ModelTarget.load` with an `execution`."""
    from arch_compare.decoding import placement
    from arch_compare.execution import ExecutionConfig
    from arch_compare.models.loading import load_checkpoint
    from arch_compare.models.model import build_model

    if dtype is not None:
        raise ValueError("ModelTarget.load: give the dtypes in execution (dtype, param_dtype), "
                         "not also dtype=")
    execution = ExecutionConfig.coerce(execution, "ModelTarget.load execution")
    meshes = []

    def shardings(model):  # the mesh needs the model ('auto' sizes it by its memory)
        meshes.append(placement.inference_mesh(
            execution, model, batch_size=batch_size,
            lengths=(max_prompt_tokens or 1024, GenerationSettings().max_tokens)))
        return placement.param_shardings(model, meshes[-1])

    # Read in the parameter dtype; shapes, hence shardings, do not depend on the dtypes.
    loaded = load_checkpoint(checkpoint, dtype=execution.param_dtype, shardings=shardings)
    model = build_model(execution.apply(loaded.model.config))
    return model, loaded.params, meshes[-1], loaded


# --- Targets from a specification (gin files, study configs) --------------------------------------

class TargetSpecError(ValueError):
    """A target specification names an unknown kind or misses / misspells an option."""


# kind -> constructor; `make_target` passes a spec's other keys as keyword arguments.
TARGET_KINDS: dict[str, Callable[..., Target]] = {
    "openai": OpenAIChatTarget,
    "model": ModelTarget.load,
    "function": FunctionTarget.from_path,
}


def make_target(spec: Mapping[str, Any]) -> Target:
    """A target from `{"kind": ..., **options}`, for example `{"kind": "openai", "base_url":
    "http://127.0.0.1:8000/v1", "model": "tiny"}` or `{"kind": "model", "checkpoint": ...,
    "vocabulary": ...}`."""
    if "kind" not in spec:
        raise TargetSpecError(f"target spec is missing 'kind' (one of {', '.join(TARGET_KINDS)})")
    kind = spec["kind"]
    if kind not in TARGET_KINDS:
        raise TargetSpecError(f"target spec: unknown kind {kind!r}; known kinds: "
                              f"{', '.join(TARGET_KINDS)}")
    constructor = TARGET_KINDS[kind]
    options = {key: value for key, value in spec.items() if key != "kind"}
    parameters = inspect.signature(constructor).parameters
    accepted = [name for name, parameter in parameters.items()
                if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TargetSpecError(f"target spec (kind {kind!r}): unknown key(s) "
                              f"{', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")
    missing = [name for name in accepted
               if parameters[name].default is parameters[name].empty and name not in options]
    if missing:
        raise TargetSpecError(f"target spec (kind {kind!r}): missing key(s) "
                              f"{', '.join(map(repr, missing))}")
    return constructor(**options)
