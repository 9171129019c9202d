"""Admin sign-in over real HTTP on loopback: the session cookie is signed, expires and never holds
the admin token; wrong tokens are throttled per client address and the throttle lets go."""

import re

import httpx
import pytest

from arch_compare.pairwise.admin_auth import SESSION_SECONDS, AdminSessions, LoginThrottle
from arch_compare.pairwise.store import hash_token
from tests.pairwise.conftest import ADMIN_TOKEN, FakeClock

OTHER_ADDRESS = "203.0.113.7"  # sent as X-Forwarded-For, which uvicorn trusts from 127.0.0.1


def login_csrf(client: httpx.Client) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text)[1]


def login(client: httpx.Client, token: str, csrf: str, **headers) -> httpx.Response:
    return client.post("/admin/login", data={"csrf_token": csrf, "token": token},
                       headers=headers)


def cookie_of(response: httpx.Response) -> tuple[str, list[str]]:
    """The admin cookie's value and its attributes (lower case) from Set-Cookie."""
    (header,) = [value for value in response.headers.get_list("set-cookie")
                 if value.startswith("pw_admin=")]
    value, *attributes = [part.strip() for part in header.split(";")]
    return value.removeprefix("pw_admin="), [attribute.lower() for attribute in attributes]


def as_admin(live_app, cookie: str) -> int:
    with httpx.Client(base_url=live_app.base, cookies={"pw_admin": cookie}) as client:
        return client.get("/admin").status_code


def test_the_session_cookie_is_signed_expires_and_never_holds_the_token(live_app):
    with httpx.Client(base_url=live_app.base, follow_redirects=False, timeout=10) as client:
        signed_in = login(client, ADMIN_TOKEN, login_csrf(client))
        assert signed_in.status_code == 303
        cookie, attributes = cookie_of(signed_in)
        assert ADMIN_TOKEN not in cookie and hash_token(ADMIN_TOKEN) not in cookie
        assert {"httponly", "samesite=strict", "path=/admin",
                f"max-age={SESSION_SECONDS}"} <= set(attributes)
        assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
        assert client.get("/admin").status_code == 200
        # Behind a TLS proxy (X-Forwarded-Proto from 127.0.0.1) the cookie is Secure.
        behind_tls = login(client, ADMIN_TOKEN, login_csrf(client), **{
            "x-forwarded-proto": "https"})
        assert "secure" in cookie_of(behind_tls)[1]
        form_over_tls = client.get("/admin/login", headers={"x-forwarded-proto": "https"})
        assert "secure" in form_over_tls.headers["set-cookie"].lower()

    expires, nonce, signature = cookie.split(".")
    forged = [f"{int(expires) + 3600}.{nonce}.{signature}",  # a later expiry, same signature
              f"{expires}.{nonce}.{signature[:-1]}{'0' if signature[-1] != '0' else '1'}",
              f"{expires}.{nonce}", ADMIN_TOKEN, "",
              # Right format and expiry, signed under another database's secret.
              AdminSessions(b"another-database-secret-32-bytes", live_app.clock).issue(
                  hash_token(ADMIN_TOKEN))]
    for value in forged:
        assert as_admin(live_app, value) == 401, value
    assert as_admin(live_app, cookie) == 200

    # The signing key lives in the database: a restarted app (a new one on the same store)
    # accepts the cookie.
    from starlette.testclient import TestClient

    from arch_compare.pairwise.app import create_app

    with TestClient(create_app(live_app.store, clock=live_app.clock)) as restarted:
        restarted.cookies.set("pw_admin", cookie)
        assert restarted.get("/admin").status_code == 200

    live_app.clock.advance(SESSION_SECONDS - 1)
    assert as_admin(live_app, cookie) == 200
    live_app.clock.advance(2)
    assert as_admin(live_app, cookie) == 401  # expired

    with httpx.Client(base_url=live_app.base, follow_redirects=False, timeout=10) as client:
        fresh, _ = cookie_of(login(client, ADMIN_TOKEN, login_csrf(client)))
    assert as_admin(live_app, fresh) == 200
    live_app.store.set_admin_token("a-replacement-admin-token-42")
    assert as_admin(live_app, fresh) == 401  # a new token ends every session


def test_wrong_admin_tokens_are_throttled_per_address_and_released(live_app):
    clock = live_app.clock
    with httpx.Client(base_url=live_app.base, follow_redirects=False, timeout=10) as client:
        csrf = login_csrf(client)

        def wrong_five_times() -> None:
            for guess in range(5):
                assert login(client, f"guess-{guess}", csrf).status_code == 403

        def refused(response: httpx.Response, seconds: int) -> None:
            assert response.status_code == 429, response.text[:200]
            assert response.headers["retry-after"] == str(seconds)
            assert f"{seconds} seconds" in response.text

        wrong_five_times()
        # Locked: even the right token is refused, by form and by header alike.
        refused(login(client, ADMIN_TOKEN, csrf), 60)
        refused(client.get("/admin", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}), 60)
        api = client.get("/admin/api/campaigns/1",
                         headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert api.status_code == 429 and api.headers["retry-after"] == "60"
        assert "Too many" in api.json()["error"]
        # Another address is not affected.
        assert client.get("/admin", headers={"authorization": f"Bearer {ADMIN_TOKEN}",
                                             "x-forwarded-for": OTHER_ADDRESS}).status_code == 200
        clock.advance(59)
        refused(login(client, ADMIN_TOKEN, csrf), 1)
        clock.advance(1)
        assert login(client, ADMIN_TOKEN, csrf).status_code == 303  # released; resets the count

        csrf = login_csrf(client)
        wrong_five_times()
        refused(login(client, ADMIN_TOKEN, csrf), 60)  # a fresh start after the success
        clock.advance(60)
        wrong_five_times()
        refused(login(client, ADMIN_TOKEN, csrf), 120)  # the delay grows with each lockout
        clock.advance(120)
        # Failures spread wider than the window (at most 4 in any 60 s) never lock the address.
        for _ in range(8):
            assert login(client, "slow-guess", csrf).status_code == 403
            clock.advance(15)
        assert login(client, ADMIN_TOKEN, csrf).status_code == 303


def test_throttle_delays_are_capped_and_forgiven_after_a_quiet_spell():
    clock = FakeClock()
    throttle = LoginThrottle(clock, max_failures=2, window=10, first_delay=10, max_delay=40)
    waits = []
    for _ in range(5):
        throttle.failed("a")
        throttle.failed("a")
        waits.append(throttle.retry_after("a"))
        clock.advance(waits[-1])
        assert throttle.retry_after("a") is None
    assert waits == [10, 20, 40, 40, 40]
    clock.advance(41)  # quiet for longer than the longest delay: earlier lockouts forgiven
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 10
    with pytest.raises(ValueError, match="max_failures"):
        LoginThrottle(clock, max_failures=0)
