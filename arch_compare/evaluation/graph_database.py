"""Safe, in-process execution of model-predicted Cypher on an embedded graph database (kuzu).

A predicted query is model output, so it is treated as hostile:

- the database is opened `read_only=True`, which makes kuzu refuse CREATE / SET / DELETE / MERGE;
- before execution, `refusal()` statically refuses anything that is not one read-only statement.
  This matters beyond belt and braces: measured with kuzu 0.11.3, a read-only database still runs
  `COPY (...) TO 'file.csv'` (it writes the file) and `LOAD FROM '<any file>'` reads files;
- each query runs under kuzu's own per-query timeout (`Connection.set_query_timeout`). Measured:
  it does interrupt a running scan; a five-way cartesian product over 300 nodes that filters
  (`WHERE a.pop + ... > 0 RETURN count(*)`) stops 5-20 ms after the timeout with "Interrupted." and
  the connection stays usable. `Connection.interrupt()` from a timer thread sets the same flag and
  behaves the same, so it adds nothing. A plain `RETURN count(*)` over the product is not enumerated
  at all (kuzu multiplies the counts: a correct answer in milliseconds);
- at most `max_rows` rows are read (a streamed cartesian product stops there within milliseconds);
- the buffer pool is capped (BUFFER_POOL_BYTES), so a query that materialises a huge
  intermediate result fails with an out-of-memory error from kuzu (the timeout is not checked while
  it fills the pool) instead of taking the machine's memory.

`ReadOnlyGraph.run` never raises for anything about the query: every failure comes back as
`QueryResult.error`, which the metric counts as wrong.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import hashlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

# kuzu is imported lazily (inside functions) so that modules which only parse or score queries
# do not pay for loading the database engine.

# The buffer pool bounds what one query can materialise. Measured with kuzu 0.11.3: a five-way
# cartesian product that materialises its rows (`MATCH (a),(b),(c),(d),(e) RETURN a.name, e.name`
# over 300 nodes) is not stopped by the query timeout while it fills the pool; it fails with
# "Unable to allocate memory" after 40-80 ms with 64 MiB, 150-700 ms with 256 MiB. Evaluation graphs
# of a few thousand nodes need far less.
BUFFER_POOL_BYTES = 64 * 1024 * 1024

# Statements and clauses a read-only evaluation query never needs. Besides writes (CREATE, MERGE,
# SET, DELETE, DETACH, REMOVE, DROP, ALTER): COPY ... TO writes files; LOAD FROM reads any file;
# INSTALL / LOAD EXTENSION reach the network; ATTACH / DETACH / USE switch databases; EXPORT /
# IMPORT DATABASE write and read directories; CALL runs procedures; transactions and CHECKPOINT
# change database state; FOREACH only ever wraps writes.
FORBIDDEN_KEYWORDS = frozenset({
    "CREATE", "MERGE", "SET", "DELETE", "DETACH", "REMOVE", "DROP", "ALTER", "COPY", "LOAD",
    "INSTALL", "ATTACH", "USE", "EXPORT", "IMPORT", "CALL", "BEGIN", "COMMIT", "ROLLBACK",
    "CHECKPOINT", "FOREACH", "UNINSTALL", "UPDATE", "COMMENT",
})

# One token of Cypher text that is not code: a string literal (single or double quoted, with
# backslash escapes), a backtick-quoted identifier, or a comment. Unterminated ones run to the end.
_NON_CODE = re.compile(
    r"""'(?:[^'\\]|\\.)*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$)|`[^`]*(?:`|$)|//[^\n]*|/\*.*?(?:\*/|$)""",
    re.DOTALL,
)
_WORD = re.compile(r"(?<![\w.$])[A-Za-z_]\w*")  # a word not preceded by '.' (property access)


def code_only(query: str) -> str:
    """`query` with string literals, quoted identifiers and comments blanked out (one space each)."""
    return _NON_CODE.sub(" ", query)


def refusal(query: str) -> str | None:
    """Why `query` is refused before execution, or None when it is one read-only statement.

    The check reads only code (not string literals, backtick-quoted identifiers or comments), so
    `WHERE c.name = 'Create'` passes and `// note\nmatch (n) delete n` does not. It is deliberately
    conservative: a variable or map key named like a forbidden keyword is refused too (property
    names after a '.' are not keywords and pass).
    """
    code = code_only(query)
    if not code.strip():
        return "refused: empty query"
    if ";" in code.rstrip().removesuffix(";"):
        return "refused: more than one statement (';' inside the query)"
    words = {match.group(0).upper() for match in _WORD.finditer(code)}
    forbidden = sorted(words & FORBIDDEN_KEYWORDS)
    if forbidden:
        return f"refused: not a read-only query ({', '.join(forbidden)})"
    return None


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """A query's result as plain, hashable, comparable Python values.

    `columns` are the result's column names; `rows` hold one tuple per row. Values are converted by
    `plain_value`: lists become tuples, nodes and relationships a canonical tuple (see there).
    `error` says why the query failed (refused, syntax, runtime, timeout, too many rows: a partial
    result is never kept); rows are then empty.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, error: str) -> "QueryResult":
        return cls(columns=(), rows=(), error=error)


def plain_value(value: Any) -> Any:
    """A kuzu value as plain, hashable Python that compares by value.

    - None, bool, int, float, str, dates and times stay as they are; Decimal becomes float, UUID str;
    - lists and arrays become tuples (converted element-wise);
    - a node becomes `("node", label, ((property, value), ...))` with its non-NULL properties
      sorted by name (the primary key is among them, so this identifies the node); kuzu's internal
      id is dropped;
    - a relationship becomes `("rel", label, src, dst, ((property, value), ...))` where src and dst
      are the endpoints' internal ids `(table, offset)`: stable within one database, which is all
      the comparison of gold and predicted results on the same graph needs;
    - a path (recursive relationship) becomes `("path", nodes, rels)`;
    - any other map or struct becomes `("map", ((key, value), ...))` sorted by key's repr.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(plain_value(item) for item in value)
    if isinstance(value, dict):
        if "_nodes" in value and "_rels" in value:
            return ("path", plain_value(value["_nodes"]), plain_value(value["_rels"]))
        # NULL properties are left out: a node matched without a label, `(o)`, comes back with every
        # table's properties (NULL where its table lacks them), and must equal the same node
        # matched as `(o:Organisation)`. In Cypher a NULL property is an absent one.
        properties = tuple(sorted(
            (key, plain_value(item)) for key, item in value.items()
            if not str(key).startswith("_") and item is not None
        ))
        if "_src" in value and "_dst" in value:
            return ("rel", value.get("_label"), _internal_id(value["_src"]),
                    _internal_id(value["_dst"]), properties)
        if "_label" in value and "_id" in value:
            return ("node", value["_label"], properties)
        items = [(plain_value(key), plain_value(item)) for key, item in value.items()]
        return ("map", tuple(sorted(items, key=lambda pair: repr(pair[0]))))
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _internal_id(identifier: Any) -> tuple:
    if isinstance(identifier, dict):
        return (identifier.get("table"), identifier.get("offset"))
    return (identifier,)


def _path_in_use(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists() and path.stat().st_size > 0


def create_graph(path: str | os.PathLike, statements: Sequence[str]) -> None:
    """Build a NEW database at `path` from DDL and data statements, run in order.

    Refuses a `path` that already holds something (a non-empty file or folder): evaluation graphs
    are built once and never written again. A failing statement raises ValueError naming it.
    """
    import kuzu

    path = Path(path)
    if _path_in_use(path):
        raise ValueError(f"create_graph: {path} already exists and is not empty; "
                         "a graph is built once, into a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    before = set(path.parent.iterdir())
    database = kuzu.Database(str(path), buffer_pool_size=BUFFER_POOL_BYTES)
    connection = kuzu.Connection(database)
    try:
        for index, statement in enumerate(statements):
            try:
                connection.execute(statement)
            except RuntimeError as error:
                raise ValueError(f"create_graph: statement {index} failed ({error}): "
                                 f"{statement}") from error
    except BaseException:
        connection.close()
        database.close()
        # A half-built graph must not be mistaken for a built one: remove what this call created
        # (the database file or folder and its `.wal` / `.lock` companions).
        for created in set(path.parent.iterdir()) - before:
            if created == path or created.name.startswith(path.name + "."):
                shutil.rmtree(created) if created.is_dir() else created.unlink()
        raise
    connection.close()
    database.close()


class ReadOnlyGraph:
    """A graph database opened read-only to run untrusted queries (see the module docstring).

    Use as a context manager or call `close()`. `run(query)` returns a `QueryResult` and never
    raises for anything about the query. Nothing can change the graph, so the results of the last
    `cache_queries` distinct queries are kept (a study evaluates every run on the same questions,
    and models write the same queries); a timed-out query is run again when asked again.
    """

    def __init__(self, path: str | os.PathLike, *, timeout_seconds: float = 2.0,
                 max_rows: int = 1000, buffer_pool_bytes: int = BUFFER_POOL_BYTES,
                 cache_queries: int = 8192):
        import kuzu

        if timeout_seconds <= 0:
            raise ValueError(f"ReadOnlyGraph: timeout_seconds must be positive, got {timeout_seconds}")
        if max_rows < 1:
            raise ValueError(f"ReadOnlyGraph: max_rows must be at least 1, got {max_rows}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"ReadOnlyGraph: no graph database at {path} (create_graph builds one)")
        self.path = path
        self.timeout_seconds = float(timeout_seconds)
        self.max_rows = int(max_rows)
        self._results: collections.OrderedDict[str, QueryResult] = collections.OrderedDict()
        self._cache_queries = max(0, int(cache_queries))
        self._database = kuzu.Database(str(path), read_only=True, buffer_pool_size=buffer_pool_bytes)
        self._connection = kuzu.Connection(self._database)
        self._connection.set_query_timeout(max(1, round(1000 * self.timeout_seconds)))

    def run(self, query: str) -> QueryResult:
        """Run one read-only query; any failure is returned as `QueryResult.error`."""
        if not isinstance(query, str):
            return QueryResult.failed(f"refused: a query is a string, got {type(query).__name__}")
        reason = refusal(query)
        if reason is not None:
            return QueryResult.failed(reason)
        query = query.strip().removesuffix(";")
        if query in self._results:
            self._results.move_to_end(query)
            return self._results[query]
        result = self._execute(query)
        if self._cache_queries and not (result.error or "").startswith("timed out"):
            self._results[query] = result
            while len(self._results) > self._cache_queries:
                self._results.popitem(last=False)
        return result

    def _execute(self, query: str) -> QueryResult:
        start = time.monotonic()
        try:
            result = self._connection.execute(query)
            if isinstance(result, list):  # several statements: refusal() should have caught it
                for each in result:
                    each.close()
                return QueryResult.failed("refused: more than one statement")
            try:
                columns = tuple(result.get_column_names())
                rows = []
                while result.has_next():
                    if len(rows) == self.max_rows:
                        return QueryResult.failed(f"more than {self.max_rows} rows")
                    if time.monotonic() - start > self.timeout_seconds:
                        return QueryResult.failed(
                            f"timed out after {self.timeout_seconds:g} s (reading rows)")
                    rows.append(tuple(plain_value(value) for value in result.get_next()))
            finally:
                result.close()
        except Exception as error:  # anything the engine reports about this query
            message = str(error).strip() or type(error).__name__
            if message.startswith("Interrupted"):
                message = f"timed out after {self.timeout_seconds:g} s ({message})"
            return QueryResult.failed(message)
        return QueryResult(columns=columns, rows=tuple(rows))

    def close(self) -> None:
        self._connection.close()
        self._database.close()

    def __enter__(self) -> "ReadOnlyGraph":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def fingerprint(path: str | os.PathLike) -> str:
    """A SHA-256 of the graph's schema and every table's full contents, read read-only.

    Node tables contribute every node's properties; relationship tables every relationship's
    properties with its endpoints' tables and primary keys (internal ids are left out: they are
    storage details). Rows are sorted by their repr, so the hash does not depend on scan order.
    Two graphs with the same fingerprint hold the same data.
    """
    import kuzu

    database = kuzu.Database(str(path), read_only=True, buffer_pool_size=BUFFER_POOL_BYTES)
    connection = kuzu.Connection(database)

    def rows(query: str) -> list[list[Any]]:
        result = connection.execute(query)
        try:
            return result.get_all()
        finally:
            result.close()

    try:
        tables = sorted((name, kind) for _, name, kind, *_ in rows("CALL show_tables() RETURN *"))
        schema = {name: rows(f"CALL table_info('{name}') RETURN *") for name, _ in tables}
        primary_key = {name: next(column[1] for column in schema[name] if column[4] is True)
                       for name, kind in tables if kind == "NODE"}
        digest = hashlib.sha256(repr((tables, schema)).encode())
        for name, kind in tables:
            if kind == "NODE":
                contents = [repr(plain_value(node)) for (node,) in rows(f"MATCH (n:`{name}`) RETURN n")]
            else:
                contents = [
                    repr((source["_label"], source[primary_key[source["_label"]]],
                          target["_label"], target[primary_key[target["_label"]]],
                          plain_value(relationship)[4]))
                    for source, relationship, target in
                    rows(f"MATCH (a)-[r:`{name}`]->(b) RETURN a, r, b")
                ]
            digest.update(repr((name, kind, sorted(contents))).encode())
        return digest.hexdigest()
    finally:
        connection.close()
        database.close()
