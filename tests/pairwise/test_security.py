"""Security of the rating app: isolation between raters, admin access, CSRF, forged, replayed,
oversized and SQL-injection submissions. None of them may cause a server error."""

import re

import pytest

from arch_compare.pairwise.rating import MAX_REASON_CHARS
from tests.pairwise.conftest import ADMIN_TOKEN, form_fields, new_campaign

SQL_INJECTIONS = ("'; DROP TABLE pairwise_ratings; --", "1 OR 1=1", "\" OR \"\"=\"",
                  "1; DELETE FROM pairwise_raters",
                  "%' UNION SELECT token_hash FROM pairwise_raters --")


@pytest.fixture
def two_raters(store, client):
    campaign = new_campaign(store, overlap=2, per_rater=4)
    (_, first), (_, second) = store.invite(campaign, 2)
    return campaign, first, second


def post(client, token, **fields):
    return client.post(f"/rate/{token}", data=fields, follow_redirects=False)


def ratings_by(store, campaign):
    return [(row["rater_id"], row["item_id"], row["choice"], row["reason"])
            for row in store.rating_rows(campaign)]


def test_a_rater_cannot_read_or_rate_another_raters_items(store, client, two_raters):
    campaign, first, second = two_raters
    first_page, second_page = client.get(f"/rate/{first}"), client.get(f"/rate/{second}")
    position, first_csrf = form_fields(first_page.text)
    _, second_csrf = form_fields(second_page.text)
    # The second rater's form (its CSRF token) sent to the first rater's URL, and vice versa.
    assert post(client, first, position=position, csrf_token=second_csrf,
                choice="left").status_code == 403
    assert post(client, second, position=position, csrf_token=first_csrf,
                choice="left").status_code == 403
    assert ratings_by(store, campaign) == []
    # Nothing addresses items directly: query strings do not change what a rater is shown.
    again = client.get(f"/rate/{first}?position=2&item=1&rater=2")
    assert form_fields(again.text) == (position, first_csrf)
    assert client.get(f"/rate/{first[:-1]}x").status_code == 404
    assert client.get("/rate/").status_code == 404


def test_admin_endpoints_refuse_rater_tokens(store, client, two_raters):
    campaign, first, _ = two_raters
    urls = ["/admin", f"/admin/campaigns/{campaign.id}", f"/admin/api/campaigns/{campaign.id}",
            f"/admin/campaigns/{campaign.id}/export.jsonl",
            f"/admin/campaigns/{campaign.id}/export.csv"]
    for url in urls:
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": f"Bearer {first}"}).status_code == 403
        # A cookie is a signed session, never a token: neither a rater's nor the admin's works.
        for token in (first, ADMIN_TOKEN):
            client.cookies.set("pw_admin", token)
            assert client.get(url).status_code == 401, url
        client.cookies.clear()
        assert client.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                          ).status_code == 200, url


def test_admin_login_form_has_csrf_and_sets_a_strict_cookie(client):
    page = client.get("/admin/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]
    assert "httponly" in page.headers["set-cookie"].lower()
    bad = client.post("/admin/login", data={"csrf_token": "forged", "token": ADMIN_TOKEN},
                      follow_redirects=False)
    assert bad.status_code == 403
    wrong = client.post("/admin/login", data={"csrf_token": csrf, "token": "guess"},
                        follow_redirects=False)
    assert wrong.status_code == 403
    good = client.post("/admin/login", data={"csrf_token": csrf, "token": ADMIN_TOKEN},
                       follow_redirects=False)
    assert good.status_code == 303
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/admin").status_code == 200


def test_forged_and_replayed_submissions_are_refused(store, client, two_raters):
    campaign, first, _ = two_raters
    position, csrf = form_fields(client.get(f"/rate/{first}").text)
    assert post(client, first, position=position, csrf_token="0" * 64,
                choice="left").status_code == 403
    assert post(client, first, position=position, choice="left").status_code == 403
    # A valid token for one item does not carry over to another item.
    assert post(client, first, position=str(int(position) + 1), csrf_token=csrf,
                choice="left").status_code == 403
    assert ratings_by(store, campaign) == []

    first_answer = post(client, first, position=position, csrf_token=csrf, choice="left",
                        reason="clear")
    assert first_answer.status_code == 303
    # The same form again (double click, back button, replay): nothing new is stored.
    assert post(client, first, position=position, csrf_token=csrf, choice="left",
                reason="clear").status_code == 303
    # A replay that changes the answer is refused and the first answer stands.
    changed = post(client, first, position=position, csrf_token=csrf, choice="right")
    assert changed.status_code == 409
    assert ratings_by(store, campaign) == [("private:invite-1", ratings_by(store, campaign)[0][1],
                                            "left", "clear")]


def test_bad_fields_are_refused_without_server_errors(store, client, two_raters):
    campaign, first, _ = two_raters
    position, csrf = form_fields(client.get(f"/rate/{first}").text)
    url = f"/rate/{first}"
    base = {"position": position, "csrf_token": csrf}
    cases = [
        (dict(base, choice="left", reason="x" * (MAX_REASON_CHARS + 1)), 413),
        (dict(base, choice="left", reason="y" * 40_000), 413),
        (dict(base, choice="left", reason="nul\x00byte"), 400),
        (dict(base, choice="A is better"), 400),
        (dict(base, choice="left'; DROP TABLE pairwise_ratings; --"), 400),
        (dict(base), 400),
        (dict(base, position="1 OR 1=1", choice="left"), 400),
        (dict(base, position="9" * 50, choice="left"), 400),
    ]
    for fields, expected in cases:
        response = client.post(url, data=fields, follow_redirects=False)
        assert response.status_code == expected, (fields.get("choice"), response.text[:200])
    raw = [
        ({"content-type": "application/json"}, b'{"choice": "left"}', 415),
        ({"content-type": "multipart/form-data; boundary=x"}, b"--x--", 415),
        ({"content-type": "application/x-www-form-urlencoded"},
         f"position={position}&position=1&csrf_token={csrf}&choice=left".encode(), 400),
        ({"content-type": "application/x-www-form-urlencoded"},
         "&".join(f"f{n}=1" for n in range(50)).encode(), 400),
        ({"content-type": "application/x-www-form-urlencoded"}, b"reason=\xff\xfe", 400),
        ({"content-type": "application/x-www-form-urlencoded", "content-length": "99999999"},
         b"x=1", 413),
    ]
    for headers, body, expected in raw:
        response = client.post(url, content=body, headers=headers, follow_redirects=False)
        assert response.status_code == expected, (headers, body[:40])
    assert ratings_by(store, campaign) == []


def test_sql_injection_strings_are_data(store, client, two_raters):
    campaign, first, second = two_raters
    for attack in SQL_INJECTIONS:
        assert client.get(f"/rate/{attack}").status_code == 404
        assert client.get(f"/c/{campaign.public_id}", params={"worker_id": attack}
                          ).status_code in (400, 404)
        assert client.get(f"/p/{attack}").status_code == 404
        response = client.get("/admin", headers={"Authorization": f"Bearer {attack}"})
        assert response.status_code == 403
    stored = []
    for attack in SQL_INJECTIONS[:3]:
        position, csrf = form_fields(client.get(f"/rate/{first}").text)
        assert post(client, first, position=position, csrf_token=csrf, choice="tie",
                    reason=attack).status_code == 303
        stored.append(attack)
    assert [row[3] for row in ratings_by(store, campaign)] == stored
    assert store.rater(second) is not None  # the raters table is intact


def test_crowd_worker_ids_are_validated_and_bound_to_the_browser(store, client):
    campaign = new_campaign(store, name="crowd", workforce="crowd")
    arrived = client.get(f"/c/{campaign.public_id}?worker_id=W1", follow_redirects=False)
    assert arrived.status_code == 303
    assert "httponly" in arrived.headers["set-cookie"].lower()
    # The same browser (it holds the cookie) resumes; another browser with the id does not.
    again = client.get(f"/c/{campaign.public_id}?worker_id=W1", follow_redirects=False)
    assert again.headers["location"] == arrived.headers["location"]
    client.cookies.clear()
    assert client.get(f"/c/{campaign.public_id}?worker_id=W1").status_code == 409
    assert client.get(f"/c/{campaign.public_id}").status_code == 400
    assert client.get(f"/c/{campaign.public_id}?worker_id=" + "w" * 65).status_code == 400
    # The link of another workforce is closed for this campaign.
    assert client.get(f"/p/{campaign.public_id}?PROLIFIC_PID=a&STUDY_ID=b&SESSION_ID=c"
                      ).status_code == 404


def test_every_response_carries_the_security_headers(client, two_raters):
    _, first, _ = two_raters
    for url in ("/", f"/rate/{first}", "/rate/nope", "/static/pairwise.css", "/admin/login"):
        headers = client.get(url).headers
        assert headers["referrer-policy"] == "no-referrer", url
        assert "frame-ancestors 'none'" in headers["content-security-policy"], url
        assert headers["cache-control"] == "no-store", url
        assert headers["x-content-type-options"] == "nosniff", url
