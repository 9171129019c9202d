"""What is being imitated: a target answers chat prompts.

A target is anything with a `name` and `complete(prompts, settings) -> list[Reply]`: a model this
framework loads, an OpenAI-compatible chat-completions endpoint, or a plain Python function (the
offline demo's synthetic target). Collection (`collection.py`) caches replies by a hash of the
prompt, the settings and the target's name, so a target must be deterministic for given settings
when `temperature == 0`.

Errors are replies, not exceptions: a reply carries either `text` or an `error` with `transient`
set when asking again may succeed (timeouts, HTTP 429/5xx, dropped connections). Collection retries
transient errors and records permanent ones; neither ever becomes a training example.

A reply may carry `usage`: the tokens the target counted for the request and its answer (what an
API bills), which collection stores with the answer so the report can show what was spent.

This module is the contract; the targets themselves are `openai_chat.OpenAIChatTarget` (an HTTP
endpoint), `model_target.ModelTarget` (a model of this framework) and `FunctionTarget` (below).
Build one from a specification with `target_kinds.make_target({"kind": ..., ...})`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from typing import Callable, Protocol, Sequence

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
class TokenUsage:
    """Tokens billed for one answer: the request (`prompt_tokens`) and the answer
    (`completion_tokens`), as the target counted them (`estimated`: False), or estimated here at
    `CHARS_PER_TOKEN` characters per token for a target that counts none (`estimated`: True)."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    def __post_init__(self):
        for name in ("prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TokenUsage.{name} must be an integer >= 0, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "TokenUsage":
        return cls(int(fields["prompt_tokens"]), int(fields["completion_tokens"]),
                   bool(fields.get("estimated", False)))

    @classmethod
    def estimate(cls, prompt: "Prompt", answer: str) -> "TokenUsage":
        """The rule of thumb OpenAI documents for English (about four characters per token),
        over every message's text; `estimated` says so wherever it is shown."""
        prompt_chars = sum(len(turn.text) for turn in prompt.turns)
        return cls(estimate_tokens(prompt_chars), estimate_tokens(len(answer)), estimated=True)


# What one token is worth in characters of English text when no tokenizer is at hand (OpenAI's
# published rule of thumb); used to price prompts before they are sent and to count the answers
# of targets that report no usage.
CHARS_PER_TOKEN = 4.0


def estimate_tokens(characters: int) -> int:
    return int(-(-characters // CHARS_PER_TOKEN)) if characters > 0 else 0


@dataclasses.dataclass(frozen=True)
class Reply:
    text: str | None = None
    error: str | None = None
    transient: bool = False  # only meaningful with `error`
    retry_after: float | None = None  # seconds the server asked to wait (HTTP Retry-After)
    usage: TokenUsage | None = None  # what the target billed for this request, where it says

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
        replies = []
        for prompt in prompts:
            text = self.respond(prompt.turns)
            replies.append(Reply(text=text, usage=TokenUsage.estimate(prompt, text)))
        return replies

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
