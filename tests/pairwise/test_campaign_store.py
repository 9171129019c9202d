"""Items, campaign planning and the store: overlap, gold, per-rater order, idempotency, expiry."""

import collections
import json
import time

import pytest
from sqlalchemy import text

from arch_compare.pairwise.campaign import (CampaignPlan, CampaignSettings, plan_slots,
                                            rater_sequence)
from arch_compare.pairwise.items import Item, read_items, write_items
from arch_compare.pairwise.store import ArrivalRefused, PairwiseStore
from arch_compare.pairwise.workforces import WORKFORCES, Arrival, ArrivalError
from tests.pairwise.conftest import IMITATION, TARGET, make_items, new_campaign

# -- items -----------------------------------------------------------------------------------------


def test_items_round_trip_and_errors_name_file_line_field(tmp_path):
    path = tmp_path / "items.jsonl"
    items = make_items(3)
    write_items(path, items)
    assert read_items(path) == items

    good = json.dumps(items[0].to_json())
    cases = {
        "missing": ('{"id": "x", "prompt": "p", "model_a": "m", "output_a": "o"}', "missing"),
        "gold": (json.dumps({**items[1].to_json(), "gold": "left"}), "'gold'"),
        "same": (json.dumps({**items[1].to_json(), "model_b": items[1].model_a}), "model_a"),
        "empty": (json.dumps({**items[1].to_json(), "prompt": "  "}), "'prompt'"),
        "unknown": (json.dumps({**items[1].to_json(), "modle_a": "x"}), "unknown field"),
        "repeat": (good, "repeats line 1"),
        "json": ("{not json", "not a JSON object (Expecting property name enclosed in double "
                              "quotes, column 2;"),
        "truncated": (good[:40], "not a JSON object (Invalid control character, column 41;"),
    }
    for name, (line, expected) in cases.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(good + "\n\n" + line + "\n")
        with pytest.raises(ValueError) as error:
            read_items(bad)
        assert f"{bad}:3:" in str(error.value) and expected in str(error.value), name

    write_items(path, items)
    with pytest.raises(ValueError, match=r"items.jsonl:1: field 'gold' is required"):
        read_items(path, gold=True)


# -- planning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_items, overlap, per_rater", [(12, 3, 4), (10, 3, 4), (7, 5, 7),
                                                         (50, 2, 9), (5, 1, 20)])
def test_every_item_lands_in_exactly_overlap_distinct_slots(n_items, overlap, per_rater):
    ids = list(range(100, 100 + n_items))
    slots = plan_slots(ids, overlap, per_rater, seed=3)
    counts = collections.Counter(item for slot in slots for item in slot)
    assert counts == {item: overlap for item in ids}
    assert all(len(set(slot)) == len(slot) for slot in slots)  # never twice in one session
    size = min(per_rater, n_items)
    assert all(len(slot) == size for slot in slots[:-1]) and 0 < len(slots[-1]) <= size
    assert plan_slots(ids, overlap, per_rater, seed=3) == slots
    assert plan_slots(ids, overlap, per_rater, seed=4) != slots or n_items * overlap <= size


def test_rater_sequence_is_seeded_per_rater_balanced_and_holds_gold():
    slot, gold = list(range(10)), [100, 101, 102, 103]
    first = rater_sequence(slot, gold, 2, seed=7, rater_id=1)
    assert first == rater_sequence(slot, gold, 2, seed=7, rater_id=1)  # reproducible
    assert first != rater_sequence(slot, gold, 2, seed=7, rater_id=2)  # differs per rater
    assert first != rater_sequence(slot, gold, 2, seed=8, rater_id=1)  # and per campaign
    items = [item for item, _ in first]
    assert sorted(items)[:10] == slot and len(set(items)) == 12
    assert len([item for item in items if item in gold]) == 2
    assert sum(a_on_left for _, a_on_left in first) == 6  # exactly half show A on the left
    orders = {tuple(item for item, _ in rater_sequence(slot, gold, 2, 7, rater))
              for rater in range(20)}
    assert len(orders) == 20


def test_settings_validation():
    with pytest.raises(ValueError, match="workforce must be one of"):
        CampaignSettings(workforce="mturk")
    with pytest.raises(ValueError, match="needs a completion code"):
        CampaignSettings(workforce="prolific")
    with pytest.raises(ValueError, match="http"):
        CampaignSettings(workforce="crowd", completion_code="X", completion_url="javascript:x")
    with pytest.raises(ValueError, match="overlap"):
        CampaignPlan(overlap=0)


def test_workforce_arrivals():
    prolific = WORKFORCES["prolific"].arrival(
        {"PROLIFIC_PID": "5f1a", "STUDY_ID": "st", "SESSION_ID": "se"})
    assert prolific == Arrival("5f1a", "st", "se")
    assert WORKFORCES["crowd"].arrival({"workerId": "W1"}) == Arrival("W1")
    with pytest.raises(ArrivalError, match="SESSION_ID"):
        WORKFORCES["prolific"].arrival({"PROLIFIC_PID": "5f1a", "STUDY_ID": "st"})
    with pytest.raises(ArrivalError, match="letters"):
        WORKFORCES["crowd"].arrival({"worker_id": "x' OR 1=1 --"})
    with pytest.raises(ArrivalError, match="invite links only"):
        WORKFORCES["private"].arrival({"worker_id": "w"})
    done = WORKFORCES["crowd"].completion("A B", "https://x.test/done?c={code}&w={worker_id}", "W1")
    assert done.redirect_url == "https://x.test/done?c=A%20B&w=W1"


# -- store -----------------------------------------------------------------------------------------


def rate_everything(store, rater, choice="left"):
    while (shown := store.next_item(rater)) is not None:
        assert store.submit(rater, shown.position, choice, "") == "stored"


def test_campaign_run_gives_exact_overlap_and_gold_to_everyone(store):
    campaign = new_campaign(store, workforce="crowd", items=12, overlap=3, per_rater=5,
                            gold=3, gold_per_rater=2)
    raters = []
    for number in range(20):
        token = store.arrive(campaign, Arrival(f"w{number}"), None)
        rater = store.rater(token)
        if not store.start(rater):
            break
        raters.append(rater)
        rate_everything(store, rater)
    assert len(raters) == 8  # 12 items x 3 raters / 5 per session = 7.2 slots
    rows = list(store.rating_rows(campaign))
    per_item = collections.Counter(row["item_id"] for row in rows if not row["is_gold"])
    assert set(per_item.values()) == {3} and len(per_item) == 12
    gold_per_rater = collections.Counter(row["rater_id"] for row in rows if row["is_gold"])
    assert set(gold_per_rater.values()) == {2} and len(gold_per_rater) == 8
    assert len({(row["item_id"], row["rater_id"]) for row in rows}) == len(rows)
    status = store.campaign_status(campaign)
    assert status["ratings"] == status["ratings_needed"] == 36
    assert status["raters"] == {"crowd:completed": 8, "crowd:active": 1}  # the one turned away
    # The stored verdict follows the placement: "left" means A exactly when A was on the left.
    for row in rows:
        assert row["stored_verdict"] == ("A" if row["left_model"] == row["model_a"] else "B")
        assert row["winner"] == row["left_model"]


def test_double_submit_is_idempotent_and_a_changed_answer_is_refused(store):
    campaign = new_campaign(store)
    rater = store.rater(store.invite(campaign, 1)[0][1])
    assert store.start(rater)
    shown = store.next_item(rater)
    assert store.submit(rater, shown.position, "tie", "same") == "stored"
    assert store.submit(rater, shown.position, "tie", "same") == "duplicate"
    assert store.submit(rater, shown.position, "right", "changed") == "conflict"
    assert store.submit(rater, 999, "tie", "") == "unknown"
    rows = list(store.rating_rows(campaign))
    assert [(row["choice"], row["reason"]) for row in rows] == [("tie", "same")]
    assert store.next_item(rater).position != shown.position


def test_unique_constraint_holds_in_the_database_itself(store):
    campaign = new_campaign(store)
    rater = store.rater(store.invite(campaign, 1)[0][1])
    store.start(rater)
    shown = store.next_item(rater)
    store.submit(rater, shown.position, "left", "")
    with store.engine.begin() as connection:
        row = connection.execute(text("SELECT item_id, rater_id FROM pairwise_ratings")).one()
        with pytest.raises(Exception, match="UNIQUE|unique"):
            connection.execute(text(
                "INSERT INTO pairwise_ratings (item_id, rater_id, choice, verdict, reason, "
                "created_at) VALUES (:i, :r, 'tie', 'tie', '', 0)"), {"i": row[0], "r": row[1]})


def test_tokens_are_stored_hashed(store, tmp_path):
    campaign = new_campaign(store)
    (label, token), = store.invite(campaign, 1)
    assert store.rater(token).external_id == label
    assert store.rater(token + "x") is None
    store.close()
    assert token.encode() not in (tmp_path / "pairwise.sqlite").read_bytes()


def test_arrival_resumes_only_with_cookie_or_matching_prolific_session(store):
    campaign = new_campaign(store, workforce="prolific")
    first = store.arrive(campaign, Arrival("pid1", "study", "sess1"), None)
    assert store.arrive(campaign, Arrival("pid1", "study", "sess1"), first) == first
    # The same Prolific session from a fresh browser gets a new token; the old one stops working.
    second = store.arrive(campaign, Arrival("pid1", "study", "sess1"), None)
    assert second != first and store.rater(first) is None and store.rater(second)
    with pytest.raises(ArrivalRefused):  # someone who only knows the participant id
        store.arrive(campaign, Arrival("pid1", "study", "other"), None)


def test_abandoned_slot_goes_to_the_next_rater_and_the_first_is_expired(store):
    campaign = new_campaign(store, workforce="crowd", items=4, overlap=1, per_rater=4,
                            gold_per_rater=0, hold_minutes=1)
    quitter = store.rater(store.arrive(campaign, Arrival("quitter"), None))
    assert store.start(quitter)
    shown = store.next_item(quitter)
    assert store.submit(quitter, shown.position, "left", "") == "stored"
    late = store.rater(store.arrive(campaign, Arrival("late"), None))
    assert not store.start(late)  # the only slot is held
    with store.engine.begin() as connection:  # the quitter went quiet two minutes ago
        connection.execute(text("UPDATE pairwise_raters SET last_seen = :t WHERE id = :i"),
                           {"t": time.time() - 120, "i": quitter.id})
    assert store.start(late)
    assert store.rater_states(campaign)["crowd:quitter"] == "expired"
    assert store.submit(quitter, shown.position + 1, "left", "") == "expired"
    rate_everything(store, late)
    rows = list(store.rating_rows(campaign))
    assert len(rows) == 5  # the quitter's rating is kept, flagged by rater_status
    assert sum(row["rater_status"] == "expired" for row in rows) == 1


def test_switching_workforce_keeps_items_and_ratings(store):
    campaign = new_campaign(store, workforce="private")
    invited = store.rater(store.invite(campaign, 1)[0][1])
    store.start(invited)
    rate_everything(store, invited)
    before = list(store.rating_rows(campaign))
    switched = store.configure(campaign.name, workforce="prolific", completion_code="XYZ")
    assert switched.settings.workforce == "prolific" and switched.plan == campaign.plan
    crowd = store.rater(store.arrive(switched, Arrival("p1", "s", "x"), None))
    assert crowd.workforce == "prolific" and store.start(crowd)
    assert list(store.rating_rows(campaign)) == before
    with pytest.raises(ValueError, match="completion code"):
        store.configure(campaign.name, workforce="crowd", completion_code=None)


def test_campaign_errors(store):
    new_campaign(store, name="one")
    with pytest.raises(ValueError, match="already exists"):
        new_campaign(store, name="one")
    with pytest.raises(KeyError, match="no campaign 'two'"):
        store.campaign("two")
    with pytest.raises(ValueError, match="only 3 gold items"):
        new_campaign(store, name="three", gold=3, gold_per_rater=4)
    with pytest.raises(ValueError, match="both as items and as gold"):
        store.create_campaign("four", make_items(2), [Item(make_items(1)[0].id, "p", TARGET, "a",
                                                           IMITATION, "b", gold="A")],
                              CampaignPlan(), CampaignSettings())


def test_sqlite_path_and_url_are_the_same_database(tmp_path):
    path = tmp_path / "same.sqlite"
    first = PairwiseStore(str(path))
    new_campaign(first, name="shared")
    first.close()
    second = PairwiseStore(f"sqlite:///{path}")
    assert second.campaign("shared").name == "shared"
    second.close()
