"""The results database of imitation studies: one SQLite file, any number of studies.

The study runner writes here as it goes and the report reads only from here (it never imports the
trainer or the models). A run is one row keyed by `(study, run_id)`; its metrics (each with its 95%
interval), a few sample outputs, every prediction and the paired comparisons between runs hang
off that key, and every write is an upsert on it, so a resumed study rewrites the rows it
repeats instead of adding duplicates. Two studies can share one file: rows carry the study's name,
and registering a name that already holds a study of a different configuration is refused rather
than mixed into it.

SQLite runs in WAL mode with a busy timeout, so a report can read while a study writes; readers
open the file read-only (`ResultsStore(path, read_only=True)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from arch_compare.evaluation.intervals import MetricValue, as_metric_value
from arch_compare.results_schema import ADDED_COLUMNS, ADDED_METRIC_COLUMNS, SCHEMA, TABLES
from arch_compare.results_types import (METRIC_KINDS, ROLES, STATUSES, Collection, Comparison,
                                        Metric, Prediction, Run, Sample, Study)

__all__ = ["DATABASE_FILE", "METRIC_KINDS", "ROLES", "STATUSES", "Collection", "Comparison",
           "Metric",
           "Prediction", "ResultsDatabaseError", "ResultsStore", "Run", "Sample", "Study",
           "StudyConflict", "config_hash"]

DATABASE_FILE = "results.sqlite"


class ResultsDatabaseError(ValueError):
    """A results database that cannot be read or written: damaged, locked, unreadable."""


class StudyConflict(ValueError):
    """A study name already used in this database by a study of another configuration."""


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


_RUN_JSON = ("config", "estimate", "measured")


def _real(value: float | None) -> float | None:
    """NaN (undefined) is stored as NULL."""
    return None if value is None or value != value else float(value)


def _dump(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


class ResultsStore:
    """Reads and writes one results database; `path` is the file or a directory holding it.

    `read_only=True` is for commands that only read (the report, exports): the file must exist
    and is never created or changed. Either way a file that is not a results database is refused
    by name rather than adopted."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        path = Path(path)
        if path.is_dir():
            path = path / DATABASE_FILE
        self.path = path
        self.read_only = read_only
        if read_only:
            self._connection = self._open_read_only(path)
            self._check_kind(empty_ok=False)
        else:
            if not path.exists() and not path.parent.is_dir():
                raise FileNotFoundError(f"{path}: its directory does not exist")
            try:
                self._connection = sqlite3.connect(path, timeout=30, isolation_level=None)
            except sqlite3.OperationalError as error:  # a directory, no permission
                raise ValueError(f"{path}: cannot open the results database ({error})") from None
            self._check_kind(empty_ok=True)
            # Changes the file (WAL mode, the schema), so only after the kind check above.
            try:
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.executescript(SCHEMA)
                for table, added in ADDED_COLUMNS.items():
                    for column, kind in added.items():
                        if column not in self._columns(table):
                            self._connection.execute(
                                f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.DatabaseError as error:
                raise self._damaged(error) from None
        self._connection.execute("PRAGMA foreign_keys=ON")
        self._connection.row_factory = sqlite3.Row

    @staticmethod
    def _open_read_only(path: Path) -> sqlite3.Connection:
        """A connection that can neither create nor change `path`. With no `-wal` file beside it
        no writer holds the database and its whole content is in the file itself: it is opened
        `immutable`, because a plain read-only open of a WAL database would create `-wal` and
        `-shm` files next to it and leave them there. A writer that starts meanwhile writes to
        its own WAL, not the file, until a checkpoint (about 1,000 pages later)."""
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such results database")
        live_writer = Path(f"{path}-wal").exists()
        uri = f"{path.absolute().as_uri()}?" + ("mode=ro" if live_writer else "immutable=1")
        try:
            return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        except sqlite3.OperationalError as error:  # unreadable
            raise ValueError(f"{path}: cannot open the results database ({error})") from None

    def _check_kind(self, *, empty_ok: bool) -> None:
        """Refuse a file that is not a results database: not SQLite at all, or SQLite holding
        other tables (a pairwise database, another program's file). A writer adopts only an
        empty file; a reader adopts nothing."""
        try:
            tables = {row[0] for row in self._connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise ValueError(f"not an arch_compare results database: {self.path} "
                             f"({error})") from None
        if "runs" not in tables and (tables or not empty_ok):
            self._connection.close()
            others = f"; its tables: {', '.join(sorted(tables))}" if tables else ""
            raise ValueError(f"not an arch_compare results database: {self.path} "
                             f"(no 'runs' table{others})")

    def _columns(self, table: str) -> set[str]:
        """The table's columns; empty when it does not exist (an older database, read only)."""
        return {row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _damaged(self, error: sqlite3.DatabaseError) -> Exception:
        """A damaged, locked or unreadable file, named; anything else (a constraint this code
        broke) as it is."""
        if type(error) in (sqlite3.DatabaseError, sqlite3.OperationalError):
            return ResultsDatabaseError(f"{self.path}: {error}")
        return error

    def _read(self, query: str, args: Iterable = ()) -> list[sqlite3.Row]:
        try:
            return self._connection.execute(query, tuple(args)).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._damaged(error) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as error:
            raise self._damaged(error) from None
        try:
            yield self._connection
        except BaseException as error:
            self._connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.DatabaseError):
                raise self._damaged(error) from None
            raise
        self._connection.execute("COMMIT")

    # -- writing -----------------------------------------------------------------------------------

    def register_study(self, name: str, config: Mapping[str, Any], directory: str | Path) -> Study:
        """Create the study, or return it if it exists with the same configuration."""
        digest = config_hash(config)
        with self._transaction() as db:
            row = db.execute("SELECT config_hash FROM studies WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO studies VALUES (?, ?, ?, ?, ?)",
                           (name, _dump(dict(config)), digest, str(directory), time.time()))
            elif row["config_hash"] != digest:
                raise StudyConflict(
                    f"{self.path}: holds a study named {name!r} with another configuration; "
                    f"give this study another name (or use another database)")
        return self.study(name)

    def put_run(self, study: str, run: Run) -> None:
        """Insert or replace the run's row (its metrics and samples are kept)."""
        fields = dataclasses.asdict(run)
        values = {name: _dump(fields[name]) if name in _RUN_JSON else fields[name]
                  for name in fields}
        columns = ["study", *(("config_json" if n == "config" else f"{n}_json" if n in _RUN_JSON
                               else n) for n in values)]
        placeholders = ", ".join("?" * len(columns))
        updates = ", ".join(f"{column} = excluded.{column}" for column in columns[2:])
        with self._transaction() as db:
            db.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({placeholders}) "
                       f"ON CONFLICT (study, run_id) DO UPDATE SET {updates}",
                       (study, *values.values()))

    def put_metrics(self, study: str, run_id: str, task: str,
                    values: Mapping[str, float | MetricValue],
                    kinds: Mapping[str, str] | None = None) -> None:
        """Upsert one task's metrics (a MetricValue with its interval; a Proportion gets
        Wilson's); `kinds` maps metric -> capability | style (default other)."""
        kinds = kinds or {}
        rows = []
        for metric, value in values.items():
            kind = kinds.get(metric, "other")
            if kind not in METRIC_KINDS:
                raise ValueError(f"metric {task}/{metric}: kind must be one of {METRIC_KINDS}, "
                                 f"got {kind!r}")
            value = as_metric_value(value)  # a bare number: no interval known
            rows.append((study, run_id, task, metric, kind, _real(value.value), _real(value.low),
                         _real(value.high), value.n, value.method))
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO metrics (study, run_id, task, metric, kind, value, low, high, n, "
                "method) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (study, run_id, task, "
                "metric) DO UPDATE SET kind = excluded.kind, value = excluded.value, low = "
                "excluded.low, high = excluded.high, n = excluded.n, method = excluded.method",
                rows)

    def put_samples(self, study: str, samples: Iterable[Sample]) -> None:
        rows = [(study, s.run_id, s.task, s.example_id, s.prompt, s.output, s.reference)
                for s in samples]
        with self._transaction() as db:
            db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                           "(study, run_id, task, example_id) DO UPDATE SET prompt = "
                           "excluded.prompt, output = excluded.output, reference = "
                           "excluded.reference", rows)

    def put_predictions(self, study: str, run_id: str, task: str,
                        outputs: Iterable[tuple[str, str]]) -> None:
        """Every output of a run on a task, as (example_id, output) in record order; replaces
        what the run had recorded for the task (a re-evaluated run may have fewer)."""
        rows = [(study, run_id, task, index, str(example_id), output)
                for index, (example_id, output) in enumerate(outputs)]
        with self._transaction() as db:
            db.execute("DELETE FROM predictions WHERE study = ? AND run_id = ? AND task = ?",
                       (study, run_id, task))
            db.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?)", rows)

    def put_comparisons(self, study: str, comparisons: Iterable[Comparison]) -> None:
        rows = [(study, c.run_id, c.baseline_run_id, c.task, c.metric, _real(c.difference),
                 _real(c.low), _real(c.high), int(bool(c.significant))) for c in comparisons]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO comparisons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (study, "
                "run_id, baseline_run_id, task, metric) DO UPDATE SET difference = "
                "excluded.difference, low = excluded.low, high = excluded.high, significant = "
                "excluded.significant", rows)

    def put_collection(self, study: str, collection: Collection) -> None:
        """Insert or replace what one collection was estimated to cost and cost (keyed by
        study, source, selection and model: a resumed study rewrites its row)."""
        fields = dataclasses.asdict(collection)
        fields.update(tokens_estimated=int(collection.tokens_estimated),
                      fictional_price=int(collection.fictional_price),
                      spent_usd=_real(collection.spent_usd),
                      estimated_usd=_real(collection.estimated_usd))
        columns = ["study", *fields, "recorded"]
        keys = ("study", "source", "selection", "model")
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        with self._transaction() as db:
            db.execute(f"INSERT INTO collections ({', '.join(columns)}) VALUES "
                       f"({', '.join('?' * len(columns))}) ON CONFLICT ({', '.join(keys)}) DO "
                       f"UPDATE SET {updates}", (study, *fields.values(), time.time()))

    # -- reading -----------------------------------------------------------------------------------

    def studies(self) -> list[Study]:
        rows = self._read("SELECT * FROM studies ORDER BY created")
        return [Study(row["name"], json.loads(row["config_json"]), row["directory"],
                      row["created"]) for row in rows]

    def study(self, name: str) -> Study:
        for study in self.studies():
            if study.name == name:
                return study
        known = ", ".join(s.name for s in self.studies()) or "none"
        raise KeyError(f"{self.path}: no study named {name!r} (studies: {known})")

    def runs(self, study: str) -> list[Run]:
        rows = self._read("SELECT * FROM runs WHERE study = ? ORDER BY rowid", (study,))
        runs = []
        for row in rows:
            fields = {name: row[name] for name in row.keys() if name != "study"}
            for name in _RUN_JSON:
                text = fields.pop(f"{name}_json")
                fields[name] = None if text is None else json.loads(text)
            runs.append(Run(**fields))
        return runs

    def run(self, study: str, run_id: str) -> Run | None:
        return next((run for run in self.runs(study) if run.run_id == run_id), None)

    def metrics(self, study: str) -> list[Metric]:
        present = self._columns("metrics")  # an older database read-only: no interval columns
        added = ", ".join(c if c in present else f"NULL AS {c}" for c in ADDED_METRIC_COLUMNS)
        rows = self._read(f"SELECT run_id, task, metric, kind, value, {added} FROM metrics "
                          f"WHERE study = ? ORDER BY rowid", (study,))
        return [Metric(*row) for row in rows]

    def predictions(self, study: str, run_id: str | None = None,
                    task: str | None = None) -> list[Prediction]:
        """Stored outputs in record order (none from a database older than the table)."""
        if not self._columns("predictions"):
            return []
        query, args = "SELECT * FROM predictions WHERE study = ?", [study]
        for column, value in (("run_id", run_id), ("task", task)):
            if value is not None:
                query, args = query + f" AND {column} = ?", args + [value]
        rows = self._read(query + " ORDER BY run_id, task, example_index", args)
        return [Prediction(*(row[name] for name in ("run_id", "task", "example_index",
                                                    "example_id", "output"))) for row in rows]

    def comparisons(self, study: str) -> list[Comparison]:
        if not self._columns("comparisons"):
            return []
        rows = self._read("SELECT run_id, baseline_run_id, task, metric, difference, low, high, "
                          "significant FROM comparisons WHERE study = ? ORDER BY rowid", (study,))
        return [Comparison(*row[:7], bool(row[7])) for row in rows]

    def samples(self, study: str, run_id: str | None = None) -> list[Sample]:
        query, args = "SELECT * FROM samples WHERE study = ?", [study]
        if run_id is not None:
            query, args = query + " AND run_id = ?", args + [run_id]
        rows = self._read(query + " ORDER BY rowid", args)
        return [Sample(*(row[name] for name in ("run_id", "task", "example_id", "prompt",
                                                "output", "reference"))) for row in rows]

    def collections(self, study: str) -> list[Collection]:
        """Every collection of the target's answers recorded for the study, in the order first
        recorded (none from a database older than the table)."""
        if not self._columns("collections"):
            return []
        names = [field.name for field in dataclasses.fields(Collection)]
        rows = self._read(f"SELECT {', '.join(names)} FROM collections WHERE study = ? "
                          f"ORDER BY rowid", (study,))
        return [Collection(**{**dict(zip(names, row)),
                              "tokens_estimated": bool(row["tokens_estimated"]),
                              "fictional_price": bool(row["fictional_price"])}) for row in rows]

    def row_counts(self, study: str) -> dict[str, int]:
        """Rows per table for one study (the resume tests compare these)."""
        return {table: self._read(f"SELECT COUNT(*) FROM {table} WHERE study = ?", (study,))[0][0]
                if self._columns(table) else 0 for table in TABLES}
