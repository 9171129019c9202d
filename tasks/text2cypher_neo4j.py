"""Neo4j's Text2Cypher (2024) files: `question`, `schema`, `cypher` per row.

The Hugging Face release (`neo4j/text2cypher-2024v1`) is parquet with those columns plus
`data_source`, `instance_id` and `database_reference_alias`; users may also hold it as CSV (a
header row) or JSON lines. `read_rows(path)` reads `.jsonl`, `.csv` and, when `pyarrow` is
importable, `.parquet`, and raises `DataFormatError` naming the file and the line (CSV, JSONL:
where the record starts) or row (parquet) and what is wrong: a missing column, a value that is not
a non-empty string.

No database here holds Neo4j's graphs, so these tasks are scored by normalised exact match only
(`cypher.cypher_exact_match`), never by execution. Prompts use the same layout as the demo's
(`text2cypher.format_prompt`: the row's schema, then the question).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from arch_compare.data.conversations import Turn, format_history
from arch_compare_tasks.readers import DataFormatError
from arch_compare_tasks.registry import TaskSpec, as_text, register_task
from arch_compare_tasks.text2cypher import answer, format_prompt

COLUMNS = ("question", "schema", "cypher")
SUFFIXES = (".jsonl", ".csv", ".parquet")
SPLITS = ("train", "test")


def _check(path: Path, line: int, record, where: str = "line") -> dict:
    if not isinstance(record, dict):
        raise DataFormatError(path, line, f"{where} {line}: expected an object with "
                                          f"{', '.join(COLUMNS)}")
    missing = [column for column in COLUMNS if column not in record]
    if missing:
        raise DataFormatError(path, line, f"{where} {line}: missing column(s) "
                                          f"{', '.join(missing)}")
    for column in COLUMNS:
        if not isinstance(record[column], str) or not record[column].strip():
            raise DataFormatError(path, line, f"{where} {line}: {column!r} must be a non-empty "
                                              f"string, got {record[column]!r}")
    return {**record, "_line": line}


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise DataFormatError(path, line, f"line {line}: invalid JSON: {error.msg} "
                                              f"(column {error.colno})") from None
        rows.append(_check(path, line, record))
    return rows


def _csv(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise DataFormatError(path, 1, f"line 1 (header): missing column(s) {', '.join(missing)}; "
                                       f"found {', '.join(header) or 'nothing'}")
    rows, start = [], reader.line_num + 1  # schemas span lines: a record starts after the last
    for record in reader:
        if None in record:  # more fields than the header names
            raise DataFormatError(path, start, f"line {start}: {len(header) + len(record[None])} "
                                               f"fields, the header names {len(header)}")
        rows.append(_check(path, start, record))
        start = reader.line_num + 1
    return rows


def _parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet
    except ImportError:
        raise DataFormatError(path, 0, "reading parquet needs pyarrow (pip install pyarrow), or "
                                       "convert the file to JSON lines or CSV") from None
    table = pyarrow.parquet.read_table(path)
    missing = [column for column in COLUMNS if column not in table.column_names]
    if missing:
        raise DataFormatError(path, 0, f"missing column(s) {', '.join(missing)}; found "
                                       f"{', '.join(table.column_names)}")
    return [_check(path, row, record, where="row")
            for row, record in enumerate(table.to_pylist(), start=1)]


READERS = {".jsonl": _jsonl, ".csv": _csv, ".parquet": _parquet}


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of one Text2Cypher file, each with `_line` (line or row where it starts)."""
    path = Path(path)
    if path.suffix not in READERS:
        raise DataFormatError(path, 0, f"unknown Text2Cypher file type {path.suffix!r}; "
                                       f"expected one of {', '.join(SUFFIXES)}")
    if not path.exists():
        raise FileNotFoundError(f"Text2Cypher file {path} does not exist")
    return READERS[path.suffix](path)


def split_file(folder: Path, split: str) -> Path:
    """`folder/<split>.{jsonl,csv,parquet}`: the first that exists, else an error naming them."""
    candidates = [folder / f"{split}{suffix}" for suffix in SUFFIXES]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"Text2Cypher {split} split not found: expected one of "
                            f"{', '.join(map(str, candidates))}")


def records(path: Path) -> list[dict]:
    """Task records: the prompt (schema + question) in chat form, the query as the answer."""
    result = []
    for row in read_rows(path):
        prompt = format_prompt(row["schema"], row["question"])
        record_id = str(row.get("instance_id") or f"{path.name}:{row['_line']}")
        result.append({"id": record_id, "inputs": format_history([Turn("user", prompt)]),
                       "targets": answer(row["cypher"].strip()), "prompt": prompt,
                       "query": row["cypher"].strip()})
    return result


def postprocess(output, example=None, is_target=False):
    """Queries only (no database holds these graphs): results stay None."""
    from arch_compare.evaluation import cypher
    if is_target:
        gold = (as_text(example["query"]) if example is not None
                else cypher.extract_query(as_text(output)))
        return {"query": gold, "ordered": cypher.has_order_by(gold), "result": None}
    return {"query": cypher.extract_query(as_text(output)), "result": None}


def register(name: str, folder: str | os.PathLike, *, replace: bool = False) -> TaskSpec:
    """Text2Cypher from `folder/{train,test}.{jsonl,csv,parquet}`, scored by exact match; a
    missing file is reported, with the paths looked for, when a split is first read."""
    from arch_compare.evaluation import cypher
    folder = Path(folder)
    return register_task(TaskSpec(
        name=name, kind="evaluation", source=str(folder),
        splits={split: (lambda split=split: records(split_file(folder, split)))
                for split in SPLITS},
        description="Neo4j Text2Cypher (2024): schema + question -> Cypher, normalised exact "
                    "match only (no database holds its graphs here)",
        metric_fns=(cypher.cypher_exact_match,), postprocess_fn=postprocess,
        extra_features=("id", "prompt", "query")), replace=replace)
