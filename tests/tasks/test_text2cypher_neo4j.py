"""Neo4j's Text2Cypher files: read from JSONL, CSV and parquet, malformed files named by line,
scored by exact match."""

import json
import shutil

import pytest

from arch_compare.evaluation import cypher
from arch_compare_tasks import catalogue, registry
from arch_compare_tasks import text2cypher_neo4j as neo4j
from arch_compare_tasks.readers import DataFormatError

FIXTURE = catalogue.FIXTURES / "text2cypher"


def test_the_fixture_task_reads_both_formats_into_schema_and_question_prompts():
    test = registry.records("text2cypher_neo4j_fixture", "test")
    train = registry.records("text2cypher_neo4j_fixture", "train")  # CSV, multi-line schemas
    assert (len(test), len(train)) == (9, 3)
    row = json.loads((FIXTURE / "test.jsonl").read_text().splitlines()[0])
    assert test[0]["id"] == row["instance_id"] and test[0]["query"] == row["cypher"]
    assert test[0]["prompt"] == f"{row['schema']}\nQuestion: {row['question']}"
    assert test[0]["inputs"].endswith(f"Question: {row['question']}\n\nAssistant:")
    # CSV records start on the line after the previous record's last (schemas span lines).
    assert [r["_line"] for r in neo4j.read_rows(FIXTURE / "train.csv")] == [2, 15, 27]


def test_exact_match_scoring_without_a_database():
    rows = registry.records("text2cypher_neo4j_fixture", "test")
    targets = [neo4j.postprocess(r["targets"], example=r, is_target=True) for r in rows]
    assert all(t["result"] is None for t in targets)
    gold = [neo4j.postprocess(r["targets"]) for r in rows]
    assert cypher.cypher_exact_match(targets, gold)["exact_match"] == 100.0
    wrong = [neo4j.postprocess("MATCH (n) RETURN n")] + gold[1:]
    assert cypher.cypher_exact_match(targets, wrong)["exact_match"].hits == len(rows) - 1


def test_parquet_gives_the_same_rows(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")  # optional: the reader says so when it is missing
    import pyarrow.parquet
    rows = neo4j.read_rows(FIXTURE / "test.jsonl")
    table = pyarrow.Table.from_pylist([{k: v for k, v in r.items() if k != "_line"}
                                       for r in rows])
    pyarrow.parquet.write_table(table, tmp_path / "test.parquet")
    from_parquet = neo4j.read_rows(tmp_path / "test.parquet")
    assert [(r["question"], r["schema"], r["cypher"]) for r in from_parquet] == \
        [(r["question"], r["schema"], r["cypher"]) for r in rows]


def test_malformed_files_are_named_with_their_line(tmp_path):
    lines = (FIXTURE / "test.jsonl").read_text().splitlines()
    bad_json = tmp_path / "test.jsonl"
    bad_json.write_text("\n".join(lines[:2] + ["{not json"] + lines[3:]))
    with pytest.raises(DataFormatError, match=rf"{bad_json}:3: line 3: invalid JSON"):
        neo4j.read_rows(bad_json)
    no_cypher = tmp_path / "missing.jsonl"
    record = json.loads(lines[0])
    del record["cypher"]
    no_cypher.write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataFormatError, match=r":2: line 2: missing column\(s\) cypher"):
        neo4j.read_rows(no_cypher)
    header = tmp_path / "header.csv"
    header.write_text("question,cypher\nWho?,MATCH (n) RETURN n\n")
    with pytest.raises(DataFormatError, match=r":1: .*missing column\(s\) schema"):
        neo4j.read_rows(header)
    empty = tmp_path / "empty.csv"
    empty.write_text('question,schema,cypher\nWho?,"A\nB",MATCH (n) RETURN n\nWhy?,S,\n')
    with pytest.raises(DataFormatError, match=r":4: line 4: 'cypher' must be a non-empty"):
        neo4j.read_rows(empty)


def test_a_missing_split_names_the_paths_looked_for(tmp_path):
    shutil.copy(FIXTURE / "test.jsonl", tmp_path / "test.jsonl")
    neo4j.register("text2cypher_neo4j_test_folder", tmp_path, replace=True)
    try:
        assert len(registry.records("text2cypher_neo4j_test_folder", "test")) == 9
        with pytest.raises(FileNotFoundError, match=str(tmp_path / "train.jsonl")):
            registry.records("text2cypher_neo4j_test_folder", "train")
    finally:  # the folder goes with the test; so does the task
        del registry.TASKS["text2cypher_neo4j_test_folder"]
