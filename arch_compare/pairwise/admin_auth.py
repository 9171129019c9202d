"""Admin sign-in for the rating app: signed, expiring session cookies and a throttle on guesses.

The session cookie never holds the admin token. It holds `EXPIRES.NONCE.SIGNATURE`, the signature
an HMAC-SHA256 of `EXPIRES.NONCE` under a key derived from two things:

- a random secret kept in the database (`admin_session_secret`, 32 bytes from `secrets`): it
  survives a restart of the server and is shared by every server process on the database, so a
  crash or a second worker does not sign the administrator out. A secret held only in the
  process's memory would do both; one derived from the admin token alone is impossible, since the
  server stores only the token's SHA-256 hash, and a key computed from that hash would be as
  public as the hash.
- the stored hash of the current admin token: `arch-compare pairwise admin-token` replaces the
  token and with it the key, so every session signed under the old token ends at once.

A cookie is valid until its expiry (`SESSION_SECONDS`), checked against the app's clock, and a
changed expiry, nonce or signature fails `hmac.compare_digest`.

`LoginThrottle` counts wrong admin tokens (from the sign-in form or an `Authorization: Bearer`
header) per client address: after `max_failures` within `window` seconds the address is refused,
whatever it sends, for `first_delay` seconds, doubling with every further lockout up to
`max_delay`; a correct token clears the address's record. The state is in memory: a restart
forgets it, which costs an attacker a restart they cannot cause. Behind a TLS proxy on the same
host, uvicorn takes the client address from X-Forwarded-For (it trusts 127.0.0.1 by default);
otherwise every rater and the administrator would share the proxy's address.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import secrets
from typing import Callable

SESSION_SECONDS = 12 * 3600
Clock = Callable[[], float]


class AdminSessions:
    """Issues and checks admin session values under `secret` and the admin token's hash."""

    def __init__(self, secret: bytes, clock: Clock, lifetime: float = SESSION_SECONDS):
        if len(secret) < 16:
            raise ValueError(f"the session secret must be at least 16 bytes, got {len(secret)}")
        self.secret, self.clock, self.lifetime = secret, clock, lifetime

    def _signature(self, token_hash: str, payload: str) -> str:
        key = hmac.new(self.secret, b"admin-session:" + token_hash.encode(), hashlib.sha256)
        return hmac.new(key.digest(), payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, token_hash: str) -> str:
        payload = f"{math.floor(self.clock() + self.lifetime)}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._signature(token_hash, payload)}"

    def valid(self, value: str | None, token_hash: str | None) -> bool:
        """True for an unexpired value signed under the current token's hash."""
        if not value or token_hash is None or len(value) > 256:
            return False
        payload, _, signature = value.rpartition(".")
        expires = payload.split(".")[0]
        if not expires.isdigit() or not hmac.compare_digest(
                signature, self._signature(token_hash, payload)):
            return False
        return self.clock() < int(expires)


@dataclasses.dataclass
class _Record:
    failures: list[float] = dataclasses.field(default_factory=list)
    lockouts: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    """Failed admin sign-ins per client address; see the module's docstring."""

    def __init__(self, clock: Clock, max_failures: int = 5, window: float = 60.0,
                 first_delay: float = 60.0, max_delay: float = 3600.0,
                 max_addresses: int = 10_000):
        if max_failures < 1 or window <= 0 or not 0 < first_delay <= max_delay:
            raise ValueError(f"throttle needs max_failures >= 1, window > 0 and "
                             f"0 < first_delay <= max_delay, got {max_failures}, {window}, "
                             f"{first_delay}, {max_delay}")
        self.clock, self.max_failures, self.window = clock, max_failures, window
        self.first_delay, self.max_delay, self.max_addresses = first_delay, max_delay, max_addresses
        self.records: dict[str, _Record] = {}

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try again, or None when it may try now."""
        record = self.records.get(address)
        now = self.clock()
        if record is None or now >= record.locked_until:
            return None
        return max(1, math.ceil(record.locked_until - now))

    def failed(self, address: str) -> None:
        now = self.clock()
        record = self.records.get(address)
        # A long quiet spell forgives earlier lockouts, so the delay does not grow for ever.
        if record is None or now - record.last_failure > self.max_delay:
            if len(self.records) >= self.max_addresses:
                self._forget_idle(now)
            record = self.records[address] = _Record()
        record.last_failure = now
        record.failures = [time for time in record.failures if time > now - self.window]
        record.failures.append(now)
        if len(record.failures) >= self.max_failures:
            record.lockouts += 1
            record.failures.clear()
            delay = min(self.max_delay, self.first_delay * 2 ** (record.lockouts - 1))
            record.locked_until = now + delay

    def succeeded(self, address: str) -> None:
        self.records.pop(address, None)

    def _forget_idle(self, now: float) -> None:
        """Bounds the memory many addresses can take: drops those neither locked nor recent."""
        for address in [address for address, record in self.records.items()
                        if record.locked_until <= now and record.last_failure < now - self.window]:
            del self.records[address]
