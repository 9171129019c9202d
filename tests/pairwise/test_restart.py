"""Killing the server (SIGKILL, as in a crash) and starting it again loses nothing a rater sent:
acknowledged ratings are in the database, a form loaded before the crash still submits, and the
completion code still appears only after the last rating."""

import httpx

from arch_compare.pairwise.store import PairwiseStore
from tests.pairwise.conftest import form_fields, new_campaign

CODE = "RESTART-OK"


def test_kill_and_restart_loses_nothing(tmp_path, server_factory):
    db = tmp_path / "pairwise.sqlite"
    store = PairwiseStore(str(db))
    campaign = new_campaign(store, workforce="crowd", completion_code=CODE, items=6, overlap=1,
                            per_rater=6, gold=2, gold_per_rater=2)
    server = server_factory(db).start()
    with httpx.Client(base_url=server.base, follow_redirects=False, timeout=10) as client:
        page_url = client.get(f"/c/{campaign.public_id}?worker_id=W9").headers["location"]

        def answer(choice: str) -> None:
            position, csrf = form_fields(client.get(page_url).text)
            response = client.post(page_url, data={"position": position, "csrf_token": csrf,
                                                   "choice": choice, "reason": "r"})
            assert response.status_code == 303

        answer("left")
        answer("right")
        answer("tie")
        pending = client.get(page_url)  # loaded, not yet submitted, when the server dies
        server.kill()
        stored = [row["choice"] for row in store.rating_rows(campaign)]
        assert stored == ["left", "right", "tie"]  # acknowledged means committed

        server.start()
        position, csrf = form_fields(pending.text)
        resumed = client.post(page_url, data={"position": position, "csrf_token": csrf,
                                              "choice": "both_bad", "reason": ""})
        assert resumed.status_code == 303  # the CSRF key lives in the database
        for _ in range(4):  # 6 items + 2 gold items in all
            assert CODE not in client.get(page_url).text
            answer("left")
        assert CODE in client.get(page_url).text

        server.kill()
        server.start()
        assert len(list(store.rating_rows(campaign))) == 8
        assert CODE in client.get(page_url).text  # still complete after another crash
    assert store.campaign_status(campaign)["raters"] == {"crowd:completed": 1}
    store.close()
