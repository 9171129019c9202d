"""Fixtures for the pairwise rating app: items, stores, in-process clients and a real server.

Model names are distinctive strings so the identity-leak tests can search for them anywhere; item
ids and campaign names contain them too, since real exports often do.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from arch_compare.pairwise.campaign import CampaignPlan, CampaignSettings
from arch_compare.pairwise.items import Item
from arch_compare.pairwise.store import PairwiseStore

TARGET = "gpt-target-zeta"
IMITATION = "llama-imitator-omega"
MODEL_NAMES = (TARGET, IMITATION)
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
FORM_PATTERN = re.compile(r'name="position" value="(\d+)".*?name="csrf_token" value="([^"]+)"',
                          re.S)


def make_items(count: int, prefix: str = "q") -> list[Item]:
    return [Item(f"{TARGET}-vs-{IMITATION}-{prefix}{n}", f"Instruction {prefix}{n}: explain.",
                 TARGET, f"Answer from the first model to {prefix}{n}.",
                 IMITATION, f"Answer from the second model to {prefix}{n}.")
            for n in range(count)]


def make_gold(count: int) -> list[Item]:
    # The known answer: the stored output A is clearly right.
    return [Item(f"gold-{TARGET}-{n}", f"Gold check {n}: what is {n} + {n}?", TARGET,
                 f"It is {2 * n}.", IMITATION, "Bananas.", gold="A") for n in range(count)]


def new_campaign(store: PairwiseStore, name: str = f"{TARGET} vs {IMITATION}", *,
                 items: int = 12, gold: int = 3, overlap: int = 2, per_rater: int = 4,
                 gold_per_rater: int = 1, seed: int = 0, **settings):
    settings.setdefault("workforce", "private")
    if settings["workforce"] != "private":
        settings.setdefault("completion_code", "C0DE-1234")
    return store.create_campaign(
        name, make_items(items), make_gold(gold),
        CampaignPlan(overlap=overlap, items_per_rater=per_rater, gold_per_rater=gold_per_rater,
                     seed=seed), CampaignSettings(**settings))


def form_fields(html: str) -> tuple[str, str]:
    """(position, csrf_token) of a rating page."""
    match = FORM_PATTERN.search(html)
    assert match, f"no rating form in page: {html[:300]}"
    return match[1], match[2]


@pytest.fixture
def store(tmp_path) -> PairwiseStore:
    store = PairwiseStore(str(tmp_path / "pairwise.sqlite"))
    store.set_admin_token(ADMIN_TOKEN)
    yield store
    store.close()


@pytest.fixture
def client(store):
    from starlette.testclient import TestClient

    from arch_compare.pairwise.app import create_app

    # raise_server_exceptions=False: a server error must show as a 500 the tests can assert on.
    with TestClient(create_app(store), raise_server_exceptions=False) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`arch_compare.pairwise.app.serve` in a subprocess on 127.0.0.1, killable and restartable."""

    def __init__(self, db: str, port: int | None = None):
        self.db, self.port = db, port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Server":
        code = ("import sys; from arch_compare.pairwise.app import serve; "
                "from arch_compare.pairwise.store import PairwiseStore; "
                "serve(PairwiseStore(sys.argv[1]), '127.0.0.1', int(sys.argv[2]))")
        self.process = subprocess.Popen([sys.executable, "-c", code, self.db, str(self.port)],
                                        env={**os.environ, "JAX_PLATFORMS": "cpu"},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()}")
            try:
                with urllib.request.urlopen(self.base + "/", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("server did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def server_factory(tmp_path):
    servers: list[Server] = []

    def make(db: Path | str, port: int | None = None) -> Server:
        server = Server(str(db), port)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class FakeClock:
    """Seconds since the epoch that move only when a test says so."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def live_app(store):
    """`create_app(store)` under uvicorn on a loopback port, in a thread of this process so that
    the test holds its clock: real HTTP, real cookies and headers, no waiting for time to pass.
    uvicorn trusts X-Forwarded-For/-Proto from 127.0.0.1, as behind a local TLS proxy."""
    import uvicorn

    from arch_compare.pairwise.app import create_app

    clock, port = FakeClock(), free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, clock=clock), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-thread server did not start")
        time.sleep(0.02)
    yield SimpleNamespace(base=f"http://127.0.0.1:{port}", clock=clock, store=store)
    server.should_exit = True
    thread.join(10)
