"""`arch-compare report`: writes both files, and says clearly what is wrong with its input."""

from arch_compare.cli import main
from arch_compare.report import write_report
from arch_compare.results import ResultsStore, Run

from tests.report.parsing import parse_html


def test_writes_html_and_markdown_from_a_study_directory(study_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(study_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("report.html", "report.md"):
        assert (out / name).stat().st_size > 10_000
        assert str(out / name) in printed
    assert len(list((out / "figures").glob("*.png"))) == 7


def test_a_missing_path_is_an_error_that_names_it(tmp_path, capsys):
    missing = tmp_path / "no-such-study"
    assert main(["report", str(missing), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "arch-compare report: error:" in error and str(missing) in error
    assert not (tmp_path / "out").exists()


def _two_studies(path):
    """One empty study and one with only its target evaluated: a report must still render."""
    with ResultsStore(path) as store:
        store.register_study("empty", {}, path.parent)
        store.register_study("started", {"notes": "just begun"}, path.parent)
        store.put_run("started", Run(run_id="target/t", role="target", model="t",
                                     architecture="target", family="t", config={}, status="done"))
        store.put_metrics("started", "target/t", "nq", {"exact_match": 31.0},
                          {"exact_match": "capability"})
        store.put_run("started", Run(run_id="base/m", role="base", model="m",
                                     architecture="decoder_only", family="gpt2", config={},
                                     status="running"))
    return path


def test_an_ambiguous_database_lists_its_studies(tmp_path, capsys):
    database = _two_studies(tmp_path / "both.sqlite")
    assert main(["report", str(database), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "2 studies (empty, started)" in error and "--study" in error
    assert main(["report", str(database), "--out", str(tmp_path / "out"), "--study",
                 "missing"]) == 2
    assert "no study named 'missing'" in capsys.readouterr().err


def test_studies_without_results_still_render(tmp_path):
    database = _two_studies(tmp_path / "both.sqlite")
    for study in ("empty", "started"):
        paths = write_report(database, tmp_path / study, study=study)
        page = parse_html(paths.html.read_text())
        assert page.nesting_errors == [] and len(page.headings["h2"]) == 10
        summary = paths.markdown.read_text().split("\n\n")[1]
        assert "No imitation run has finished" in summary
    assert "just begun" in (tmp_path / "started" / "report.md").read_text()
