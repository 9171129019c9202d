"""The pairwise tables (SQLAlchemy 2 declarative rows) and the engines that open them.

SQLite runs in WAL mode and every write transaction takes the write lock up front (BEGIN
IMMEDIATE): under concurrent raters a deferred transaction that read first could otherwise fail to
upgrade to a writer without waiting on the busy timeout. PostgreSQL needs no such help.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from sqlalchemy import (Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool


class Base(DeclarativeBase):
    pass


class SettingRow(Base):
    __tablename__ = "pairwise_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CampaignRow(Base):
    __tablename__ = "pairwise_campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Raters see this random id, never the name (which may well name the models compared).
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    plan_json: Mapped[str] = mapped_column(Text)
    settings_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class ItemRow(Base):
    __tablename__ = "pairwise_items"
    __table_args__ = (UniqueConstraint("campaign_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("pairwise_campaigns.id"), index=True)
    key: Mapped[str] = mapped_column(String(200))  # the item's id in the imported file
    prompt: Mapped[str] = mapped_column(Text)
    model_a: Mapped[str] = mapped_column(String(200))
    output_a: Mapped[str] = mapped_column(Text)
    model_b: Mapped[str] = mapped_column(String(200))
    output_b: Mapped[str] = mapped_column(Text)
    gold: Mapped[str | None] = mapped_column(String(16))
    meta_json: Mapped[str] = mapped_column(Text, default="{}")


class RaterRow(Base):
    __tablename__ = "pairwise_raters"
    __table_args__ = (UniqueConstraint("campaign_id", "workforce", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("pairwise_campaigns.id"), index=True)
    workforce: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(64))  # invite label or platform worker id
    study_id: Mapped[str | None] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | expired
    created_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)


class SlotRow(Base):
    __tablename__ = "pairwise_slots"
    __table_args__ = (UniqueConstraint("campaign_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("pairwise_campaigns.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    rater_id: Mapped[int | None] = mapped_column(ForeignKey("pairwise_raters.id"), index=True)


class SlotItemRow(Base):
    __tablename__ = "pairwise_slot_items"
    slot_id: Mapped[int] = mapped_column(ForeignKey("pairwise_slots.id"), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("pairwise_items.id"), primary_key=True)


class AssignmentRow(Base):
    __tablename__ = "pairwise_assignments"
    __table_args__ = (UniqueConstraint("rater_id", "item_id"),
                      UniqueConstraint("rater_id", "position"))
    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("pairwise_raters.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("pairwise_items.id"))
    position: Mapped[int] = mapped_column(Integer)  # 1-based order in the rater's session
    a_on_left: Mapped[bool] = mapped_column(Boolean)  # left/right lives here, never in a page


class RatingRow(Base):
    __tablename__ = "pairwise_ratings"
    __table_args__ = (UniqueConstraint("item_id", "rater_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("pairwise_items.id"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("pairwise_raters.id"), index=True)
    choice: Mapped[str] = mapped_column(String(16))  # left | right | tie | both_bad
    verdict: Mapped[str] = mapped_column(String(16))  # A | B | tie | both_bad (stored order)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)


def normalise_url(url: str) -> str:
    """A bare path means a SQLite file; `postgresql://` uses the psycopg 3 driver."""
    if "://" not in url:
        return f"sqlite:///{url}"
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; None for an in-memory database or another backend."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_sqlite_file(url: str, create: bool) -> None:
    """Refuses a SQLite file that is not a pairwise database before anything writes to it.

    Read through a read-only connection: opening with the store's engine would already switch
    the file to WAL mode, and `create_all` would add the pairwise tables to, say, a study's
    results database. A file with no tables at all (new or empty) is fine.
    """
    path = sqlite_path(url)
    if path is None:
        return
    if not path.exists():
        if create:
            return
        raise FileNotFoundError(f"{path}: no pairwise database there (`arch-compare pairwise "
                                f"import` creates one)")
    try:
        with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro",
                                                uri=True)) as connection:
            tables = [name for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{path}: not a SQLite database ({error})") from None
    if tables and not any(name.startswith("pairwise_") for name in tables):
        raise ValueError(f"{path}: not a pairwise database (its tables: "
                         f"{', '.join(sorted(tables)[:5])}); pass another --db")


def _engine(url: str, immediate: bool = True):
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    in_memory = parsed.database in (None, "", ":memory:")
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                           **({"poolclass": StaticPool} if in_memory else
                              {"pool_size": 10, "max_overflow": 20}))

    @event.listens_for(engine, "connect")
    def _connect(connection, _record):
        connection.isolation_level = None  # the BEGIN below is the only one issued
        cursor = connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine

