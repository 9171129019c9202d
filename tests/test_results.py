"""The results database: upserts never duplicate, studies share a file, bad files are refused."""

import math
import sqlite3

import pytest

from arch_compare.results import Metric, ResultsStore, Run, Sample, StudyConflict


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
        assert store.row_counts("s") == {"runs": 1, "metrics": 1, "samples": 1}
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
