"""The same store and app on a real PostgreSQL server, started by the test in a temporary folder.

Skipped, with the reason, when PostgreSQL's server programs (`initdb`, `pg_ctl`; Debian package
`postgresql`) are not installed. As root the server runs as the `postgres` user, as PostgreSQL
refuses to run as root.
"""

import collections
import glob
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from arch_compare.pairwise.store import PairwiseStore
from arch_compare.pairwise.workforces import Arrival
from tests.pairwise.conftest import ADMIN_TOKEN, form_fields, free_port, new_campaign


def _postgres_bin() -> Path | None:
    for found in (shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))):
        if found and Path(found).with_name("pg_ctl").exists():
            return Path(found).parent
    return None


BIN = _postgres_bin()
pytestmark = pytest.mark.skipif(BIN is None, reason="PostgreSQL server programs (initdb, pg_ctl) "
                                                    "not installed: apt-get install postgresql")


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres_url():
    # Not under pytest's tmp_path: its parent is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="pairwise-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(_as_postgres([str(BIN / "initdb"), "-D", str(data), "-U", "postgres",
                                 "--auth=trust", "-E", "UTF8", "--no-sync"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                                 "-w", "-t", "60", "-o",
                                 f"-k {root} -p {port} -c listen_addresses='' -c fsync=off",
                                 "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_store(postgres_url):
    store = PairwiseStore(postgres_url)
    assert store.engine.dialect.name == "postgresql"
    store.set_admin_token(ADMIN_TOKEN)
    yield store
    store.close()


def test_campaign_on_postgres_has_exact_overlap_and_idempotent_submits(pg_store):
    campaign = new_campaign(pg_store, name="pg-overlap", workforce="crowd", items=10, overlap=2,
                            per_rater=4, gold=2, gold_per_rater=1)
    for number in range(5):  # 10 items x 2 raters / 4 per session
        rater = pg_store.rater(pg_store.arrive(campaign, Arrival(f"w{number}"), None))
        assert pg_store.start(rater)
        while (shown := pg_store.next_item(rater)) is not None:
            assert pg_store.submit(rater, shown.position, "tie", "") == "stored"
            assert pg_store.submit(rater, shown.position, "tie", "") == "duplicate"
            assert pg_store.submit(rater, shown.position, "left", "") == "conflict"
    late = pg_store.rater(pg_store.arrive(campaign, Arrival("late"), None))
    assert not pg_store.start(late)
    rows = list(pg_store.rating_rows(campaign))
    per_item = collections.Counter(row["item_id"] for row in rows if not row["is_gold"])
    assert len(per_item) == 10 and set(per_item.values()) == {2}
    assert pg_store.campaign_status(campaign)["ratings"] == 20


def test_concurrent_double_submits_store_one_row_on_postgres(pg_store):
    from starlette.testclient import TestClient

    from arch_compare.pairwise.app import create_app

    campaign = new_campaign(pg_store, name="pg-race", items=4, overlap=1, per_rater=4, gold=1,
                            gold_per_rater=0)
    (_, token), = pg_store.invite(campaign, 1)
    with TestClient(create_app(pg_store), raise_server_exceptions=False) as client:
        position, csrf = form_fields(client.get(f"/rate/{token}").text)
        fields = {"position": position, "csrf_token": csrf, "choice": "right", "reason": "x"}
        statuses = []
        barrier = threading.Barrier(12)

        def send():
            barrier.wait()
            statuses.append(client.post(f"/rate/{token}", data=fields,
                                        follow_redirects=False).status_code)

        threads = [threading.Thread(target=send) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert statuses == [303] * 12
        assert len(list(pg_store.rating_rows(campaign))) == 1
        # SQL injection strings are data on PostgreSQL too.
        position, csrf = form_fields(client.get(f"/rate/{token}").text)
        attack = "'); DROP TABLE pairwise_ratings; --"
        assert client.post(f"/rate/{token}", data={"position": position, "csrf_token": csrf,
                                                   "choice": "tie", "reason": attack},
                           follow_redirects=False).status_code == 303
        assert [row["reason"] for row in pg_store.rating_rows(campaign)] == ["x", attack]
