"""The results database: upserts never duplicate, studies share a file, bad files are refused."""

import dataclasses
import math
import sqlite3

import pytest

from arch_compare.evaluation.intervals import MetricValue
from arch_compare.results import (Collection, Comparison, Metric, Prediction, ResultsStore, Run,
                                  Sample, StudyConflict)


def _run(run_id="imitation/gpt2-tiny/broad/64", **fields):
    values = dict(role="imitation", model="gpt2-tiny", architecture="decoder_only",
                  family="gpt2", config={"steps": 8}, data_source="broad", data_examples=64)
    return Run(run_id=run_id, **{**values, **fields})


def test_upserts_replace_rows_instead_of_adding(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.register_study("s", {"a": 1}, tmp_path)
        for status in ("running", "done"):
            store.put_run("s", _run(status=status))
            store.put_metrics("s", _run().run_id, "qa", {"exact_match": 10.0},
                              {"exact_match": "capability"})
            store.put_samples("s", [Sample(_run().run_id, "qa", "1", "Q?", "A", "A")])
        assert store.row_counts("s") == {"runs": 1, "metrics": 1, "samples": 1,
                                         "predictions": 0, "comparisons": 0,
                                         "collections": 0}
        assert store.runs("s")[0].status == "done"
        assert store.runs("s")[0].config == {"steps": 8}
        assert store.metrics("s") == [Metric(_run().run_id, "qa", "exact_match", "capability",
                                             10.0)]


def test_nan_metrics_are_stored_as_null(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.register_study("s", {}, tmp_path)
        store.put_run("s", _run())
        store.put_metrics("s", _run().run_id, "style", {"list_when_target_lists": math.nan})
        assert store.metrics("s")[0].value is None


def test_two_studies_share_a_file_and_a_name_clash_is_refused(tmp_path):
    with ResultsStore(tmp_path / "db.sqlite") as store:
        store.register_study("one", {"models": ["gpt2-tiny"]}, tmp_path / "one")
        store.register_study("two", {"models": ["t5-tiny"]}, tmp_path / "two")
        store.put_run("one", _run())
        store.put_run("two", _run())
        assert store.row_counts("one")["runs"] == store.row_counts("two")["runs"] == 1
        store.register_study("one", {"models": ["gpt2-tiny"]}, tmp_path / "one")  # same: fine
        with pytest.raises(StudyConflict, match="'one'"):
            store.register_study("one", {"models": ["llama-tiny"]}, tmp_path / "one")
        with pytest.raises(KeyError, match="studies: one, two"):
            store.study("three")


def test_an_imitation_run_without_its_data_is_refused():
    with pytest.raises(ValueError, match="data_source"):
        _run(data_source=None)
    with pytest.raises(ValueError, match="status"):
        _run(status="finished")


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="not an arch_compare results database"):
        ResultsStore(path)
    assert path.read_bytes().startswith(b"not a database")  # left as it was


def test_a_reader_sees_what_a_writer_committed(tmp_path):
    with ResultsStore(tmp_path) as writer, ResultsStore(tmp_path) as reader:
        writer.register_study("s", {}, tmp_path)
        writer.put_run("s", _run(status="done"))
        assert [run.status for run in reader.runs("s")] == ["done"]
    assert sqlite3.connect(tmp_path / "results.sqlite").execute(
        "PRAGMA journal_mode").fetchone()[0] == "wal"


def test_intervals_predictions_and_comparisons_round_trip(tmp_path):
    run_id = _run().run_id
    with ResultsStore(tmp_path) as store:
        store.register_study("s", {}, tmp_path)
        store.put_run("s", _run())
        store.put_metrics("s", run_id, "qa", {
            "exact_match": MetricValue(25.0, 10.5, 48.0, 20, "wilson"),
            "pearson": MetricValue(0.4, math.nan, math.nan, 20, "bootstrap"), "plain": 3.0})
        assert store.metrics("s") == [
            Metric(run_id, "qa", "exact_match", "other", 25.0, 10.5, 48.0, 20, "wilson"),
            Metric(run_id, "qa", "pearson", "other", 0.4, None, None, 20, "bootstrap"),
            Metric(run_id, "qa", "plain", "other", 3.0)]
        store.put_predictions("s", run_id, "qa", [("a", "one"), ("b", "two"), ("c", "three")])
        store.put_predictions("s", run_id, "qa", [("a", "uno"), ("b", "dos")])  # replaces
        assert store.predictions("s", run_id, "qa") == [Prediction(run_id, "qa", 0, "a", "uno"),
                                                        Prediction(run_id, "qa", 1, "b", "dos")]
        comparison = Comparison(run_id, "base/gpt2-tiny", "qa", "exact_match", 12.0, 2.0, 20.0,
                                True)
        store.put_comparisons("s", [comparison, comparison])
        assert store.comparisons("s") == [comparison]
        assert store.row_counts("s") == {"runs": 1, "metrics": 3, "samples": 0,
                                         "predictions": 2, "comparisons": 1,
                                         "collections": 0}


OLD_SCHEMA = """
CREATE TABLE studies (name TEXT PRIMARY KEY, config_json TEXT NOT NULL, config_hash TEXT NOT NULL,
                      directory TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE runs (study TEXT NOT NULL, run_id TEXT NOT NULL, role TEXT NOT NULL,
    model TEXT NOT NULL, architecture TEXT NOT NULL, family TEXT NOT NULL, parameters INTEGER,
    data_source TEXT, data_examples INTEGER, data_tokens INTEGER, data_reference_tokens INTEGER,
    status TEXT NOT NULL, config_json TEXT NOT NULL, estimate_json TEXT, measured_json TEXT,
    error TEXT, started REAL, finished REAL, PRIMARY KEY (study, run_id));
CREATE TABLE metrics (study TEXT NOT NULL, run_id TEXT NOT NULL, task TEXT NOT NULL,
    metric TEXT NOT NULL, kind TEXT NOT NULL, value REAL, PRIMARY KEY (study, run_id, task, metric));
CREATE TABLE samples (study TEXT NOT NULL, run_id TEXT NOT NULL, task TEXT NOT NULL,
    example_id TEXT NOT NULL, prompt TEXT NOT NULL, output TEXT NOT NULL, reference TEXT NOT NULL,
    PRIMARY KEY (study, run_id, task, example_id));
INSERT INTO studies VALUES ('old', '{}', 'x', '.', 0);
INSERT INTO runs (study, run_id, role, model, architecture, family, status, config_json)
    VALUES ('old', 'base/m', 'base', 'm', 'decoder_only', 'gpt2', 'done', '{}');
INSERT INTO metrics VALUES ('old', 'base/m', 'qa', 'exact_match', 'capability', 30.0);
"""


def test_a_database_written_before_intervals_opens_reads_and_takes_writes(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema as it was before intervals
        db.executescript(OLD_SCHEMA)
    with ResultsStore(path, read_only=True) as reader:  # read-only: missing columns are NULL
        assert reader.metrics("old") == [Metric("base/m", "qa", "exact_match", "capability",
                                                30.0)]
        assert reader.comparisons("old") == [] and reader.predictions("old") == []
        assert reader.row_counts("old")["comparisons"] == 0
        assert reader.collections("old") == [] and reader.row_counts("old")["collections"] == 0
    with sqlite3.connect(path) as db:
        assert "low" not in {row[1] for row in db.execute("PRAGMA table_info(metrics)")}
    with ResultsStore(path) as store:  # a writer adds the columns and tables
        store.put_metrics("old", "base/m", "qa", {"exact_match": MetricValue(
            40.0, 20.0, 60.0, 10, "wilson")}, {"exact_match": "capability"})
        store.put_predictions("old", "base/m", "qa", [("1", "yes")])
        assert store.metrics("old") == [Metric("base/m", "qa", "exact_match", "capability", 40.0,
                                               20.0, 60.0, 10, "wilson")]
        assert store.row_counts("old")["predictions"] == 1
        store.put_collection("old", COLLECTION)  # the writer created the table
        assert store.collections("old") == [COLLECTION]


COLLECTION = Collection("broad", "random", "", "batch", "gpt-4o-mini", answers=16,
                        prompt_tokens=200, completion_tokens=900, tokens_estimated=False,
                        spent_usd=0.00029, estimated_answers=16, estimated_prompt_tokens=180,
                        estimated_completion_tokens=4096, estimated_usd=0.00124)


def test_collections_round_trip_and_upsert(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.register_study("s", {"a": 1}, tmp_path)
        shared = COLLECTION
        chosen = dataclasses.replace(COLLECTION, selection="uncertainty", model="gpt2-tiny",
                                     mode="online", price=None, spent_usd=None,
                                     estimated_usd=None, tokens_estimated=True)
        store.put_collection("s", shared)
        store.put_collection("s", chosen)
        again = dataclasses.replace(shared, answers=17, spent_usd=0.0003)
        store.put_collection("s", again)  # a resumed study rewrites its row
        assert store.collections("s") == [again, chosen]
        assert store.row_counts("s")["collections"] == 2
        assert store.collections("other") == []


@pytest.mark.parametrize("change, message", [
    ({"mode": "later"}, "mode must be one of"),
    ({"answers": -1}, "answers must be an integer >= 0"),
    ({"price": None}, "dollars need a price row"),
    ({"spent_usd": None}, "a price row prices what was spent"),
])
def test_a_collection_row_is_validated(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(COLLECTION, **change)
