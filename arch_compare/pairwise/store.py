"""Storage of campaigns, raters and ratings: SQLAlchemy 2, SQLite by default, PostgreSQL by URL.

Every write is one short transaction that is committed before the server answers, so a rating
acknowledged to a rater survives a crash or restart of the server. `UNIQUE (item_id, rater_id)` on
ratings makes a double submit store one row whatever the timing; the loser of a race reads the
winner's row back and is told whether it was the same answer.

Rater and admin tokens are stored as SHA-256 hashes only: a copy of the database does not let
anyone act as a rater or as the administrator.

The tables and engines are in `schema`, a rater's session (slots, items, ratings) in `rating`,
the administrator's reads (status, exports) in `reports`; this module opens the database, holds
its secrets and tokens, and creates campaigns and raters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import secrets
import threading
import time
from typing import Iterator, Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from arch_compare.pairwise.campaign import CampaignPlan, CampaignSettings, plan_slots
from arch_compare.pairwise.items import Item
from arch_compare.pairwise.rating import RatingFlow
from arch_compare.pairwise.reports import CampaignReports
from arch_compare.pairwise.schema import (Base, CampaignRow, ItemRow, RaterRow, SettingRow,
                                          SlotItemRow, SlotRow, _engine, check_sqlite_file,
                                          normalise_url)
from arch_compare.pairwise.workforces import Arrival


@dataclasses.dataclass(frozen=True)
class Campaign:
    id: int
    name: str
    public_id: str
    plan: CampaignPlan
    settings: CampaignSettings


@dataclasses.dataclass(frozen=True)
class Rater:
    id: int
    campaign_id: int
    workforce: str
    external_id: str
    status: str
    last_seen: float


class ArrivalRefused(ValueError):
    """A platform id that already has a session, arriving from another browser."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_admin_token(token: str) -> None:
    if len(token) < 16:
        raise ValueError(f"the admin token must be at least 16 characters, got {len(token)}")


def check_campaign(name: str, items: Sequence[Item], gold: Sequence[Item],
                   plan: CampaignPlan) -> None:
    """What a campaign's inputs must satisfy, checked before any database is touched."""
    if not name or len(name) > 200:
        raise ValueError("a campaign name must be 1 to 200 characters")
    if not items:
        raise ValueError("a campaign needs at least one item")
    overlap_ids = {item.id for item in items} & {item.id for item in gold}
    if overlap_ids:
        raise ValueError(f"ids used both as items and as gold items: {sorted(overlap_ids)[:5]}")
    if any(item.gold is None for item in gold):
        raise ValueError("every gold item needs a 'gold' answer")
    if plan.gold_per_rater > len(gold):
        raise ValueError(f"gold_per_rater is {plan.gold_per_rater} but there are only "
                         f"{len(gold)} gold items")


def _campaign(row: CampaignRow) -> Campaign:
    return Campaign(row.id, row.name, row.public_id, CampaignPlan(**json.loads(row.plan_json)),
                    CampaignSettings(**json.loads(row.settings_json)))


def _rater(row: RaterRow) -> Rater:
    return Rater(row.id, row.campaign_id, row.workforce, row.external_id, row.status,
                 row.last_seen)


class PairwiseStore(RatingFlow, CampaignReports):
    def __init__(self, url: str, *, create: bool = True):
        """Opens the database at `url`; with `create=False` a missing SQLite file is an error
        rather than a new database. A file that is not a pairwise database is refused."""
        self.url = normalise_url(url)
        check_sqlite_file(self.url, create)
        self.engine = _engine(url)
        Base.metadata.create_all(self.engine)
        # Reads get their own engine on SQLite: in WAL mode they need no lock, so they must not
        # queue behind writers as BEGIN IMMEDIATE would make them. (In memory, one engine.)
        in_memory = isinstance(self.engine.pool, StaticPool)
        self._write_lock = (threading.Lock() if self.engine.dialect.name == "sqlite"
                            else contextlib.nullcontext())
        self.read_engine = (_engine(url, immediate=False)
                            if self.engine.dialect.name == "sqlite" and not in_memory
                            else self.engine)

    def close(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()

    @contextlib.contextmanager
    def _writer(self) -> Iterator[Session]:
        """A write transaction, committed on leaving the block.

        On SQLite writers also queue on a lock in this process first: SQLite makes a blocked
        writer poll with growing sleeps, which under many concurrent raters left some waiting for
        seconds while others went first; a lock hands the database over in turn.
        """
        with self._write_lock, Session(self.engine, expire_on_commit=False) as session, \
                session.begin():
            yield session

    def _reader(self) -> Session:
        return Session(self.read_engine, expire_on_commit=False)

    # -- server secrets -------------------------------------------------------------------------

    def secret(self, name: str = "csrf_secret") -> bytes:
        """A random server key, made on first use and kept in the database so that what it signs
        survives a restart: `csrf_secret` (forms), `admin_session_secret` (admin cookies)."""
        with self._writer() as session:
            row = session.get(SettingRow, name)
            if row is None:
                row = SettingRow(key=name, value=secrets.token_hex(32))
                session.add(row)
            return bytes.fromhex(row.value)

    def set_admin_token(self, token: str) -> None:
        check_admin_token(token)
        with self._writer() as session:
            session.merge(SettingRow(key="admin_token_hash", value=hash_token(token)))

    def ensure_admin_token(self) -> str | None:
        """Creates an admin token if there is none; returns it (shown once) or None."""
        with self._writer() as session:
            return self._ensure_admin_token(session)

    @staticmethod
    def _ensure_admin_token(session: Session) -> str | None:
        if session.get(SettingRow, "admin_token_hash") is not None:
            return None
        token = secrets.token_urlsafe(32)
        session.add(SettingRow(key="admin_token_hash", value=hash_token(token)))
        return token

    def admin_token_hash(self) -> str | None:
        """The stored hash of the admin token; admin sessions are signed under a key bound to it,
        so replacing the token ends every session."""
        with self._reader() as session:
            row = session.get(SettingRow, "admin_token_hash")
        return None if row is None else row.value

    def is_admin(self, token: str | None) -> bool:
        if not token:
            return False
        with self._reader() as session:
            row = session.get(SettingRow, "admin_token_hash")
        return row is not None and hmac.compare_digest(row.value, hash_token(token))

    # -- campaigns ------------------------------------------------------------------------------

    def create_campaign(self, name: str, items: Sequence[Item], gold: Sequence[Item],
                        plan: CampaignPlan, settings: CampaignSettings) -> Campaign:
        check_campaign(name, items, gold, plan)
        with self._writer() as session:
            return self._add_campaign(session, name, items, gold, plan, settings)

    def import_campaign(self, name: str, items: Sequence[Item], gold: Sequence[Item],
                        plan: CampaignPlan, settings: CampaignSettings,
                        admin_token: str | None = None) -> tuple[Campaign, str | None]:
        """Creates a campaign and sets up the admin token in one transaction: a failure leaves
        the database as it was. `admin_token` replaces the stored one; without it a token is
        made when there is none. Returns the campaign and the token made (shown once), or None.
        """
        check_campaign(name, items, gold, plan)
        if admin_token is not None:
            check_admin_token(admin_token)
        with self._writer() as session:
            campaign = self._add_campaign(session, name, items, gold, plan, settings)
            if admin_token is not None:
                session.merge(SettingRow(key="admin_token_hash", value=hash_token(admin_token)))
                return campaign, None
            return campaign, self._ensure_admin_token(session)

    @staticmethod
    def _add_campaign(session: Session, name: str, items: Sequence[Item], gold: Sequence[Item],
                      plan: CampaignPlan, settings: CampaignSettings) -> Campaign:
        if session.scalar(select(CampaignRow.id).where(CampaignRow.name == name)):
            raise ValueError(f"campaign {name!r} already exists in this database")
        row = CampaignRow(name=name, public_id=secrets.token_urlsafe(12),
                          plan_json=json.dumps(dataclasses.asdict(plan)),
                          settings_json=json.dumps(dataclasses.asdict(settings)),
                          created_at=time.time())
        session.add(row)
        session.flush()
        rows = [ItemRow(campaign_id=row.id, key=item.id, prompt=item.prompt,
                        model_a=item.model_a, output_a=item.output_a, model_b=item.model_b,
                        output_b=item.output_b, gold=item.gold, meta_json=json.dumps(item.meta))
                for item in list(items) + list(gold)]
        session.add_all(rows)
        session.flush()
        ids = [item_row.id for item_row in rows[:len(items)]]
        for number, slot_items in enumerate(
                plan_slots(ids, plan.overlap, plan.items_per_rater, plan.seed), start=1):
            slot = SlotRow(campaign_id=row.id, number=number)
            session.add(slot)
            session.flush()
            session.add_all(SlotItemRow(slot_id=slot.id, item_id=item_id)
                            for item_id in slot_items)
        return _campaign(row)

    def configure(self, name: str, **changes) -> Campaign:
        """Changes a campaign's settings (workforce, completion code, ...), never its items."""
        with self._writer() as session:
            row = self._campaign_row(session, name)
            current = json.loads(row.settings_json)
            unknown = set(changes) - set(current)
            if unknown:
                raise ValueError(f"unknown setting(s) {sorted(unknown)}")
            settings = CampaignSettings(**{**current, **changes})
            row.settings_json = json.dumps(dataclasses.asdict(settings))
            return _campaign(row)

    @staticmethod
    def _campaign_row(session: Session, name: str) -> CampaignRow:
        row = session.scalar(select(CampaignRow).where(CampaignRow.name == name))
        if row is None:
            names = session.scalars(select(CampaignRow.name)).all()
            raise KeyError(f"no campaign {name!r} in this database (campaigns: {sorted(names)})")
        return row

    def campaign(self, name: str) -> Campaign:
        with self._reader() as session:
            return _campaign(self._campaign_row(session, name))

    def campaign_by_id(self, campaign_id: int) -> Campaign | None:
        with self._reader() as session:
            row = session.get(CampaignRow, campaign_id)
            return None if row is None else _campaign(row)

    def campaign_by_public_id(self, public_id: str) -> Campaign | None:
        with self._reader() as session:
            row = session.scalar(select(CampaignRow).where(CampaignRow.public_id == public_id))
            return None if row is None else _campaign(row)

    def campaigns(self) -> list[Campaign]:
        with self._reader() as session:
            return [_campaign(row) for row in session.scalars(select(CampaignRow)
                                                              .order_by(CampaignRow.id))]

    # -- raters ---------------------------------------------------------------------------------

    def invite(self, campaign: Campaign, count: int, prefix: str = "invite") -> list[
            tuple[str, str]]:
        """Creates `count` private raters; returns (label, token) pairs. Tokens are not stored."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._writer() as session:
            taken = session.scalar(select(func.count()).select_from(RaterRow).where(
                RaterRow.campaign_id == campaign.id, RaterRow.workforce == "private"))
            invites = [(f"{prefix}-{taken + number}", secrets.token_urlsafe(32))
                       for number in range(1, count + 1)]
            now = time.time()
            session.add_all(RaterRow(campaign_id=campaign.id, workforce="private",
                                     external_id=label, token_hash=hash_token(token),
                                     created_at=now, last_seen=now)
                            for label, token in invites)
            return invites

    def arrive(self, campaign: Campaign, arrival: Arrival, cookie_token: str | None) -> str:
        """Admits a rater from the campaign's public workforce; returns their (new) token.

        The same platform id arriving again resumes its session when the browser holds the
        session's cookie or, for Prolific, when the study and session ids match; otherwise it is
        refused, so knowing someone's worker id is not enough to take over their session.
        """
        workforce = campaign.settings.workforce
        for _ in range(3):
            token = secrets.token_urlsafe(32)
            try:
                with self._writer() as session:
                    row = session.scalar(select(RaterRow).where(
                        RaterRow.campaign_id == campaign.id, RaterRow.workforce == workforce,
                        RaterRow.external_id == arrival.external_id))
                    if row is None:
                        now = time.time()
                        session.add(RaterRow(
                            campaign_id=campaign.id, workforce=workforce,
                            external_id=arrival.external_id, study_id=arrival.study_id,
                            session_id=arrival.session_id, token_hash=hash_token(token),
                            created_at=now, last_seen=now))
                        return token
                    if cookie_token and hmac.compare_digest(row.token_hash,
                                                            hash_token(cookie_token)):
                        return cookie_token
                    if (arrival.session_id is not None and row.session_id == arrival.session_id
                            and row.study_id == arrival.study_id):
                        row.token_hash = hash_token(token)  # the old link stops working
                        return token
            except IntegrityError:  # the same id arrived twice at once; look again
                continue
            raise ArrivalRefused("this id has already started a session in another browser")
        raise ArrivalRefused("could not register this arrival; try the link again")

    def rater(self, token: str) -> Rater | None:
        if not token or len(token) > 128:
            return None
        with self._reader() as session:
            row = session.scalar(select(RaterRow).where(RaterRow.token_hash == hash_token(token)))
            return None if row is None else _rater(row)
