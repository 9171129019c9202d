"""Load on loopback: 50 concurrent raters submit 2,000 ratings in total to a real server process.

Every rater is a thread with its own keep-alive connection that arrives through the crowd link,
rates its 40 items (38 regular + 2 gold) and re-sends every tenth form, as a double click would.
Afterwards each rating is in the database exactly once and none is missing. The request rate and
latency percentiles are printed (run pytest with -s to see them). The whole run is bounded:
threads stop at a hard deadline and the test fails if it is reached.
"""

import collections
import http.client
import threading
import time
from urllib.parse import urlencode

import pytest

from arch_compare.pairwise.campaign import CampaignPlan, CampaignSettings
from arch_compare.pairwise.store import PairwiseStore
from tests.pairwise.conftest import FORM_PATTERN, make_gold, make_items

RATERS, ITEMS, OVERLAP, PER_RATER, GOLD_PER_RATER = 50, 380, 5, 38, 2
TOTAL = RATERS * (PER_RATER + GOLD_PER_RATER)  # 2,000
HARD_LIMIT_S = 120.0
CODE = "LOAD-DONE"


class Rater(threading.Thread):
    def __init__(self, port: int, public_id: str, worker: str, deadline: float):
        super().__init__(daemon=True)
        self.port, self.public_id, self.worker, self.deadline = port, public_id, worker, deadline
        self.latencies: list[float] = []
        self.submitted = 0
        self.finished = False
        self.error: str | None = None

    def request(self, connection, method: str, path: str, body: str | None = None):
        if time.monotonic() > self.deadline:
            raise TimeoutError("hard deadline reached")
        headers = {"content-type": "application/x-www-form-urlencoded"} if body else {}
        start = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        self.latencies.append(time.perf_counter() - start)
        if response.status >= 500:
            raise RuntimeError(f"{method} {path}: {response.status}")
        return response, text

    def run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            response, _ = self.request(connection, "GET",
                                       f"/c/{self.public_id}?worker_id={self.worker}")
            assert response.status == 303, response.status
            page = response.getheader("location")
            for _ in range(PER_RATER + GOLD_PER_RATER + 1):
                _, html = self.request(connection, "GET", page)
                form = FORM_PATTERN.search(html)
                if form is None:
                    self.finished = CODE in html
                    return
                choice = ("left", "right", "tie", "both_bad")[self.submitted % 4]
                body = urlencode({"position": form[1], "csrf_token": form[2], "choice": choice,
                                  "reason": f"{self.worker} {form[1]}"})
                for _ in range(2 if self.submitted % 10 == 0 else 1):  # some double submits
                    response, _ = self.request(connection, "POST", page, body)
                    assert response.status == 303, response.status
                self.submitted += 1
        except Exception as error:  # reported by the test, with the worker's name
            self.error = f"{self.worker}: {error!r}"
        finally:
            connection.close()


@pytest.mark.scale  # about a minute of wall clock: run by `make test-scale`
def test_fifty_concurrent_raters_store_two_thousand_ratings_exactly_once(tmp_path,
                                                                         server_factory):
    db = tmp_path / "pairwise.sqlite"
    store = PairwiseStore(str(db))
    campaign = store.create_campaign(
        "load", make_items(ITEMS), make_gold(4),
        CampaignPlan(overlap=OVERLAP, items_per_rater=PER_RATER, gold_per_rater=GOLD_PER_RATER),
        CampaignSettings(workforce="crowd", completion_code=CODE))
    server = server_factory(db).start()

    start = time.monotonic()
    raters = [Rater(server.port, campaign.public_id, f"worker{n}", start + HARD_LIMIT_S)
              for n in range(RATERS)]
    for rater in raters:
        rater.start()
    for rater in raters:
        rater.join(max(0.0, start + HARD_LIMIT_S + 5 - time.monotonic()))
    elapsed = time.monotonic() - start
    assert not any(rater.is_alive() for rater in raters), "raters still running at the limit"
    assert [rater.error for rater in raters if rater.error] == []

    latencies = sorted(latency for rater in raters for latency in rater.latencies)
    def percentile(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(f"\nload: {RATERS} raters, {sum(r.submitted for r in raters)} ratings, "
          f"{len(latencies)} requests in {elapsed:.1f} s = {len(latencies) / elapsed:.0f} req/s, "
          f"{sum(r.submitted for r in raters) / elapsed:.0f} ratings/s; latency p50 "
          f"{percentile(0.50):.1f} ms, p95 {percentile(0.95):.1f} ms, "
          f"p99 {percentile(0.99):.1f} ms, max {1000 * latencies[-1]:.1f} ms")

    assert all(rater.finished for rater in raters)  # every rater saw the completion code
    rows = list(store.rating_rows(campaign))
    assert len(rows) == TOTAL == sum(rater.submitted for rater in raters)
    pairs = collections.Counter((row["item_id"], row["rater_id"]) for row in rows)
    assert max(pairs.values()) == 1  # stored exactly once, double submits included
    per_item = collections.Counter(row["item_id"] for row in rows if not row["is_gold"])
    assert len(per_item) == ITEMS and set(per_item.values()) == {OVERLAP}
    per_rater = collections.Counter(row["rater_id"] for row in rows)
    assert len(per_rater) == RATERS and set(per_rater.values()) == {PER_RATER + GOLD_PER_RATER}
    # Each stored reason is the one its rater sent for that position: nothing got mixed up.
    assert all(row["reason"] == f"{row['worker_id']} {row['position']}" for row in rows)
    assert elapsed < HARD_LIMIT_S
    store.close()
