"""`arch-compare pairwise ...`: import, configure, invite, status, export and the admin token."""

import csv
import io
import json

import pytest

from arch_compare.cli import main
from arch_compare.pairwise.items import write_items
from arch_compare.pairwise.store import PairwiseStore
from tests.pairwise.conftest import IMITATION, TARGET, make_gold, make_items


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.delenv("ARCH_COMPARE_PAIRWISE_ADMIN_TOKEN", raising=False)
    write_items(tmp_path / "items.jsonl", make_items(6))
    write_items(tmp_path / "gold.jsonl", make_gold(2))
    return tmp_path, str(tmp_path / "campaigns.sqlite")


def pairwise(*args) -> int:
    return main(["pairwise", *map(str, args)])


def test_import_invite_configure_status_export(files, capsys):
    folder, db = files
    assert pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "study-1",
                    "--gold", folder / "gold.jsonl", "--overlap", 2, "--items-per-rater", 3,
                    "--gold-per-rater", 1) == 0
    out, err = capsys.readouterr()
    status = json.loads(out)
    assert (status["items"], status["gold_items"], status["slots"]) == (6, 2, 4)
    admin_token = err.split("keep it): ")[1].strip()
    store = PairwiseStore(db)
    assert store.is_admin(admin_token)

    assert pairwise("invite", "--db", db, "--campaign", "study-1", "--count", 2,
                    "--base-url", "https://rate.example.org/") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["invite-1", "invite-2"]
    token = lines[0].split("\t")[1].removeprefix("https://rate.example.org/rate/")
    rater = store.rater(token)
    assert rater.external_id == "invite-1"
    store.start(rater)
    while (shown := store.next_item(rater)) is not None:
        store.submit(rater, shown.position, "right", "a, \"quoted\" reason")

    assert pairwise("configure", "--db", db, "--campaign", "study-1", "--workforce", "crowd",
                    "--completion-code", "DONE1") == 0
    assert json.loads(capsys.readouterr().out)["workforce"] == "crowd"
    assert pairwise("status", "--db", db) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert (status["workforce"], status["ratings"], status["gold_ratings"]) == ("crowd", 3, 1)

    assert pairwise("export", "--db", db, "--campaign", "study-1", "--format", "jsonl") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and {row["model_b"] for row in rows} == {IMITATION}
    assert all(row["winner"] == row["right_model"] for row in rows)
    output = folder / "ratings.csv"
    assert pairwise("export", "--db", db, "--campaign", "study-1", "--format", "csv",
                    "--output", output) == 0
    table = list(csv.DictReader(io.StringIO(output.read_text())))
    assert [row["item_id"] for row in table] == [row["item_id"] for row in rows]
    assert table[0]["reason"] == "a, \"quoted\" reason" and table[0]["model_a"] == TARGET

    assert pairwise("admin-token", "--db", db) == 0
    rotated = capsys.readouterr().out.strip()
    assert store.is_admin(rotated) and not store.is_admin(admin_token)
    store.close()


def test_errors_name_the_problem(files, capsys, monkeypatch):
    folder, db = files
    bad = folder / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "p"}\n')
    assert pairwise("import", bad, "--db", db, "--campaign", "c") == 2
    assert f"{bad}:1: missing field(s)" in capsys.readouterr().err
    assert pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "c",
                    "--workforce", "prolific") == 2
    assert "needs a completion code" in capsys.readouterr().err
    monkeypatch.setenv("ARCH_COMPARE_PAIRWISE_ADMIN_TOKEN", "from-the-environment-123")
    assert pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "c") == 0
    assert "admin token" not in capsys.readouterr().err
    assert PairwiseStore(db).is_admin("from-the-environment-123")
    assert pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "c") == 2
    assert "already exists" in capsys.readouterr().err
    assert pairwise("invite", "--db", db, "--campaign", "nope", "--count", 1) == 2
    assert "no campaign 'nope'" in capsys.readouterr().err


def test_import_from_a_study_results_database(files, capsys):
    from arch_compare.results import ResultsStore, Run, Sample

    folder, db = files
    with ResultsStore(folder / "results") as results:
        results.register_study("tiny", {"grid": 1}, folder / "results")
        results.put_run("tiny", Run("target/teacher", "target", "teacher", "target", "target", {}))
        for run_id in ("imitation/llama-tiny/broad/8", "imitation/t5-tiny/broad/8"):
            results.put_run("tiny", Run(run_id, "imitation", run_id.split("/")[1],
                                        "decoder_only", "llama", {}, data_source="broad",
                                        data_examples=8))
        results.put_run("tiny", Run("base/llama-tiny", "base", "llama-tiny", "decoder_only",
                                    "llama", {}))
        for run_id in ("target/teacher", "imitation/llama-tiny/broad/8",
                       "imitation/t5-tiny/broad/8", "base/llama-tiny"):
            results.put_samples("tiny", [
                Sample(run_id, "style", f"ex{n}", f"prompt {n}", "" if n == 2 else f"{run_id} {n}",
                       "ref") for n in range(3 if run_id != "imitation/t5-tiny/broad/8" else 2)])
    assert pairwise("import", "--from-study", folder / "results", "--study", "tiny", "--db", db,
                    "--campaign", "from-study", "--overlap", 1) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 5  # 3 + 2 shared examples, no base
    store = PairwiseStore(db)
    (_, token), = store.invite(store.campaign("from-study"), 1)
    rater = store.rater(token)
    store.start(rater)
    while (shown := store.next_item(rater)) is not None:
        store.submit(rater, shown.position, "left", "")
    rows = list(store.rating_rows(store.campaign("from-study")))
    assert {row["model_a"] for row in rows} == {"target/teacher"}
    assert {row["model_b"] for row in rows} == {"imitation/llama-tiny/broad/8",
                                                "imitation/t5-tiny/broad/8"}
    assert {row["meta"]["model_b_name"] for row in rows} == {"llama-tiny", "t5-tiny"}
    store.close()
    assert pairwise("import", "--from-study", folder / "results", "--study", "nope", "--db", db,
                    "--campaign", "x") == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    assert pairwise("import", folder / "items.jsonl", "--from-study", folder / "results",
                    "--db", db, "--campaign", "x") == 2
    assert "either an ITEMS file or --from-study" in capsys.readouterr().err
    missing = folder / "no_such_study.sqlite"
    assert pairwise("import", "--from-study", missing, "--study", "tiny", "--db", db,
                    "--campaign", "y") == 2
    assert not missing.exists()  # the study's database is a source: never created


def dump(path) -> list[str]:
    """The database's content as SQL, read without changing the file."""
    import contextlib
    import sqlite3

    uri = path.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        return list(connection.iterdump())


def leftovers(db) -> list[str]:
    return sorted(path.name for path in db.parent.glob(db.name + "*"))


def test_a_failed_import_leaves_nothing_behind(files, capsys, monkeypatch):
    import arch_compare.pairwise.store as store_module

    folder, _ = files
    db = folder / "new.sqlite"
    bad = folder / "bad.jsonl"
    bad.write_text(folder.joinpath("items.jsonl").read_text() + '{"id": "truncated", "pro\n')
    assert pairwise("import", bad, "--db", db, "--campaign", "c") == 2
    assert f"{bad}:7:" in capsys.readouterr().err
    assert leftovers(db) == []
    # Caught by the campaign's own checks, which once ran only after the database was made.
    assert pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "c",
                    "--gold", folder / "gold.jsonl", "--gold-per-rater", 5) == 2
    assert "only 2 gold items" in capsys.readouterr().err
    monkeypatch.setenv("ARCH_COMPARE_PAIRWISE_ADMIN_TOKEN", "short")
    assert pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "c") == 2
    assert "at least 16 characters" in capsys.readouterr().err
    monkeypatch.delenv("ARCH_COMPARE_PAIRWISE_ADMIN_TOKEN")
    assert leftovers(db) == []

    # A failure inside the transaction, after rows were added: rolled back, the new file removed.
    # (An unexpected error: the CLI re-raises it with ARCH_COMPARE_TRACEBACK=1.)
    monkeypatch.setenv("ARCH_COMPARE_TRACEBACK", "1")

    def fail(*args, **kwargs):
        raise RuntimeError("disk gone")

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "plan_slots", fail)
        with pytest.raises(RuntimeError, match="disk gone"):
            pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "c")
    assert leftovers(db) == []

    # An existing database is left exactly as it was, whatever fails.
    assert pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "kept") == 0
    capsys.readouterr()
    before = dump(db)
    assert pairwise("import", bad, "--db", db, "--campaign", "other") == 2
    assert pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "kept") == 2
    assert "already exists" in capsys.readouterr().err
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "plan_slots", fail)
        with pytest.raises(RuntimeError, match="disk gone"):
            pairwise("import", folder / "items.jsonl", "--db", db, "--campaign", "other")
    assert dump(db) == before


def test_only_import_creates_a_database_and_foreign_files_are_refused(files, capsys):
    import sqlite3

    folder, _ = files
    missing = folder / "missing.sqlite"
    for action in (["status"], ["export", "--campaign", "c"], ["admin-token"],
                   ["invite", "--campaign", "c", "--count", "1"]):
        assert pairwise(*action, "--db", missing) == 2, action
        assert "no pairwise database there" in capsys.readouterr().err
    assert leftovers(missing) == []

    results = folder / "results.sqlite"  # another tool's database, e.g. a study's results
    connection = sqlite3.connect(results)
    connection.execute("CREATE TABLE runs (id TEXT)")
    connection.commit()
    connection.close()
    garbage = folder / "notes.txt"
    garbage.write_text("not a database at all\n" * 100)
    for path, expected in ((results, "not a pairwise database (its tables: runs)"),
                           (garbage, "not a SQLite database")):
        content = path.read_bytes()
        assert pairwise("status", "--db", path) == 2
        assert pairwise("import", folder / "items.jsonl", "--db", path, "--campaign", "c") == 2
        err = capsys.readouterr().err
        assert err.count(f"{path}: {expected}") == 2, err
        assert path.read_bytes() == content and leftovers(path) == [path.name]
