"""No rater-facing response names a model: pages, redirects, cookies, JSON, errors, static files.

The crawl walks raters of all three workforces from arrival to completion, collects every
response they (or a curious rater poking at URLs) can get, and searches status lines, headers and
bodies for the model names, the item ids and the campaign's name (all of which contain the model
names here). The admin export is checked to hold the names, so the search is known to be able to
find them.
"""

import re
from pathlib import Path

from arch_compare.pairwise import app as app_module
from tests.pairwise.conftest import ADMIN_TOKEN, MODEL_NAMES, new_campaign

SECRETS = MODEL_NAMES + ("-vs-",)  # item ids contain "<target>-vs-<imitation>"


def leaks(response) -> list[str]:
    text = "\n".join([response.text, *(f"{k}: {v}" for k, v in response.headers.items())])
    return [secret for secret in SECRETS if secret.lower() in text.lower()]


def test_no_rater_facing_response_names_a_model(store, client):
    crawled = []

    def get(url, **kwargs):
        response = client.get(url, follow_redirects=False, **kwargs)
        crawled.append((f"GET {url}", response))
        return response

    def post(url, data):
        response = client.post(url, data=data, follow_redirects=False)
        crawled.append((f"POST {url}", response))
        return response

    def complete_session(token_url):
        for _ in range(50):
            page = get(token_url)
            form = re.search(r'name="position" value="(\d+)".*?name="csrf_token" value="([^"]+)"',
                             page.text, re.S)
            if form is None:
                return page
            fields = {"position": form[1], "csrf_token": form[2], "choice": "right",
                      "reason": "fine"}
            assert post(token_url, fields).status_code == 303
            post(token_url, fields)  # a double submit
            post(token_url, {**fields, "choice": "left"})  # a changed replay: 409 page
        raise AssertionError("session did not finish")

    campaign = new_campaign(store, items=6, gold=2, overlap=3, per_rater=3, gold_per_rater=1,
                            workforce="private")
    (_, private_token), = store.invite(campaign, 1)
    done = complete_session(f"/rate/{private_token}")
    assert "all done" in done.text

    campaign = store.configure(campaign.name, workforce="prolific", completion_code="PCODE1")
    arrival = get(f"/p/{campaign.public_id}?PROLIFIC_PID=p1&STUDY_ID=s1&SESSION_ID=x1")
    assert arrival.status_code == 303
    assert "PCODE1" in complete_session(arrival.headers["location"]).text

    campaign = store.configure(campaign.name, workforce="crowd", completion_code="CCODE1",
                               completion_url="https://crowd.test/done?code={code}")
    arrival = get(f"/c/{campaign.public_id}?worker_id=w1")
    assert "CCODE1" in complete_session(arrival.headers["location"]).text

    # Error pages and odd URLs a rater might try.
    client.cookies.clear()
    for url in ["/", "/rate/not-a-token", f"/c/{campaign.public_id}", "/c/unknown?worker_id=x",
                f"/c/{campaign.public_id}?worker_id=w1",  # taken id, other browser: 409
                f"/p/{campaign.public_id}?PROLIFIC_PID=p2&STUDY_ID=s&SESSION_ID=x",
                "/no/such/page", "/admin/login", "/admin", f"/admin/campaigns/{campaign.id}",
                f"/admin/campaigns/{campaign.id}/export.jsonl",
                f"/admin/api/campaigns/{campaign.id}", "/static/nothing.css"]:
        get(url)
    post(f"/rate/{private_token}", {"position": "1"})  # forged: 403
    client.post(f"/rate/{private_token}", content=b"{}",
                headers={"content-type": "application/json"})
    # Static files: every one the package ships.
    static = Path(app_module.__file__).parent / "static"
    for path in sorted(static.rglob("*")):
        if path.is_file():
            assert get(f"/static/{path.relative_to(static).as_posix()}").status_code == 200

    statuses = {response.status_code for _, response in crawled}
    assert {200, 303, 400, 401, 403, 404, 409} <= statuses
    assert len(crawled) > 60
    found = {name: leaks(response) for name, response in crawled if leaks(response)}
    assert found == {}
    # No page runs scripts: nothing could fetch a model name after the fact.
    assert not any("<script" in response.text.lower() for _, response in crawled)

    # The search can find the names where they belong: in the admin's export.
    export = client.get(f"/admin/campaigns/{campaign.id}/export.jsonl",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert export.status_code == 200 and leaks(export) == list(SECRETS)
