"""Rate limits shared by every worker of a collector: requests and tokens per sliding window, and
one pause for all of them when the server pushes back.

    limiter = RateLimiter(requests_per_minute=500, tokens_per_minute=200_000)
    ticket = limiter.acquire(requests=1, tokens=request_tokens(prompt, settings))
    try:
        reply = ...  # the request
    finally:
        limiter.release(ticket)
    if is_rate_limited(reply):
        limiter.back_off(reply.retry_after or delay)  # no worker starts a request until then

The guarantee is measured where the provider measures it, at the server: at most
`requests_per_minute` requests and `tokens_per_minute` tokens arrive there in any window of
`window_seconds`. The server sees a request at some moment between `acquire` and `release` (the
reply cannot come before the request arrived), so a request counts against the window from
`acquire` until `window_seconds` after `release`. That costs a request's latency per window
(little against 60 s) and makes the bound hold however late a request reaches the server; a
limiter that forgot a request `window_seconds` after starting it would let two requests that
reached the server less than a window apart both count as outside it.

Tokens are counted before a request is sent, as OpenAI counts them for its tokens-per-minute
limit: the prompt's characters at `targets.CHARS_PER_TOKEN` plus `max_tokens` (the answer may use
them all).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import re
import threading
import time
from typing import Callable, Sequence

from arch_compare.imitation.targets import GenerationSettings, Prompt, Reply, estimate_tokens

# What a rate-limit refusal says when a target gives no Retry-After: the HTTP status (as
# `openai_chat` writes it) or the words providers use.
_RATE_LIMITED = re.compile(r"\bHTTP 429\b|too many requests|rate.?limit", re.IGNORECASE)


class RateLimitError(ValueError):
    """A request that could never start: it alone is over a limit."""


class LimiterStopped(Exception):
    """The limiter was stopped while a worker waited for it (the collector is ending)."""


def request_tokens(prompt: Prompt, settings: GenerationSettings) -> int:
    """The tokens a request counts against a tokens-per-minute limit before it is sent."""
    return estimate_tokens(sum(len(turn.text) for turn in prompt.turns)) + settings.max_tokens


def is_rate_limited(reply: Reply) -> bool:
    """A transient error that asks every worker to wait: the server said how long
    (`retry_after`), or it refused for too many requests (HTTP 429)."""
    return bool(reply.error and reply.transient and (
        reply.retry_after is not None or _RATE_LIMITED.search(reply.error)))


class _Ticket:
    """One started call: what it counts against the window, and when it ended (None: running)."""

    __slots__ = ("requests", "tokens", "released")

    def __init__(self, requests: int, tokens: int):
        self.requests, self.tokens, self.released = requests, tokens, False


class RateLimiter:
    """At most `requests_per_minute` requests and `tokens_per_minute` tokens per window of
    `window_seconds` (None: no such limit), and a pause that holds every caller of `acquire`
    (`back_off`). Thread-safe; callers are served in the order they called `acquire`."""

    def __init__(self, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, *, window_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        for name, value in (("requests_per_minute", requests_per_minute),
                            ("tokens_per_minute", tokens_per_minute)):
            if value is not None and not value > 0:
                raise ValueError(f"RateLimiter: {name} must be positive or None, got {value!r}")
        if not window_seconds > 0:
            raise ValueError(f"RateLimiter: window_seconds must be positive, got "
                             f"{window_seconds!r}")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.window_seconds = window_seconds
        self._clock = clock
        self._condition = threading.Condition()
        self._requests = 0  # counted in the window now: running calls and recently ended ones
        self._tokens = 0
        self._expiring: list[tuple[float, int, _Ticket]] = []  # (leaves the window at, order, _)
        self._order = itertools.count()
        self._paused_until = float("-inf")
        self._stopped = False
        self._waiting: collections.deque[_Ticket] = collections.deque()  # callers of acquire

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None

    def check(self, requests: int, tokens: int, what: str) -> None:
        """Raise `RateLimitError` if `requests` and `tokens` could never start together."""
        for amount, limit, unit in ((requests, self.requests_per_minute, "requests"),
                                    (tokens, self.tokens_per_minute, "tokens")):
            if limit is not None and amount > limit:
                raise RateLimitError(
                    f"{what}: {amount} {unit} in one call, over the limit of {limit:g} {unit} "
                    f"per {self.window_seconds:g} s; it could never be sent (raise the limit, "
                    f"lower max_tokens, or send fewer prompts per call)")

    def acquire(self, requests: int = 1, tokens: int = 0) -> _Ticket:
        """Wait until a call of `requests` requests and `tokens` tokens may start and count it;
        `release` the ticket when its reply is in."""
        self.check(requests, tokens, "a call")
        ticket = _Ticket(requests, tokens)
        with self._condition:
            # First come, first served: a large call is not starved by small ones that fit first.
            self._waiting.append(ticket)
            try:
                while True:
                    if self._stopped:
                        raise LimiterStopped()
                    now = self._clock()
                    wait = self._paused_until - now
                    if wait <= 0 and self._waiting[0] is ticket:
                        self._forget(now)
                        if self._fits(requests, tokens):
                            if self.limited:
                                self._requests += requests
                                self._tokens += tokens
                            return ticket
                        # Room comes when an ended call leaves the window, or when a running
                        # call ends (release notifies).
                        wait = self._expiring[0][0] - now if self._expiring else None
                    elif wait <= 0:
                        wait = None  # behind another caller: woken when it is served
                    self._condition.wait(wait)
            finally:
                self._waiting.remove(ticket)
                self._condition.notify_all()  # the next in line may go

    def release(self, ticket: _Ticket) -> None:
        """The call's reply is in: it leaves the window `window_seconds` from now."""
        with self._condition:
            if ticket.released:
                raise ValueError("RateLimiter.release: this ticket was already released")
            ticket.released = True
            if self.limited:
                heapq.heappush(self._expiring, (self._clock() + self.window_seconds,
                                                next(self._order), ticket))
            self._condition.notify_all()

    def back_off(self, seconds: float) -> None:
        """No call starts, from any worker, for `seconds` from now (a pause already longer
        stands)."""
        with self._condition:
            self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    @property
    def paused_until(self) -> float:
        with self._condition:
            return self._paused_until

    def stop(self) -> None:
        """Every `acquire`, waiting or later, raises `LimiterStopped`."""
        with self._condition:
            self._stopped = True
            self._condition.notify_all()

    def _forget(self, now: float) -> None:
        while self._expiring and self._expiring[0][0] <= now:
            _, _, ticket = heapq.heappop(self._expiring)
            self._requests -= ticket.requests
            self._tokens -= ticket.tokens

    def _fits(self, requests: int, tokens: int) -> bool:
        return ((self.requests_per_minute is None
                 or self._requests + requests <= self.requests_per_minute)
                and (self.tokens_per_minute is None
                     or self._tokens + tokens <= self.tokens_per_minute))


def batch_tokens(prompts: Sequence[Prompt], settings: GenerationSettings) -> int:
    """The tokens of one call that sends `prompts` (one request each)."""
    return sum(request_tokens(prompt, settings) for prompt in prompts)
