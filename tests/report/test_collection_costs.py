"""The report shows each purchase of the target's answers, estimated against spent (tokens and
dollars, and who counted the tokens); a study that recorded none gets no such section, and a
database older than the table still reports."""

import dataclasses
import sqlite3

from arch_compare.report import html, markdown
from arch_compare.report.load import load_study
from arch_compare.report.sections import build_document
from arch_compare.results import Collection, ResultsStore
from tests.report.fixture_study import build_study
from tests.report.parsing import markdown_tables
from tests.test_results import OLD_SCHEMA

TITLE = "The target's answers: estimated and spent"
SHARED = Collection("broad", "random", "", "batch", "demo-target", answers=16,
                    prompt_tokens=1_234, completion_tokens=3_100, tokens_estimated=False,
                    spent_usd=0.0068, estimated_answers=16, estimated_prompt_tokens=1_107,
                    estimated_completion_tokens=4_096, estimated_usd=0.0082,
                    fictional_price=True)
CHOSEN = dataclasses.replace(SHARED, selection="diversity", model="llama-tiny", mode="online",
                             prompt_tokens=950, completion_tokens=2_000, tokens_estimated=True,
                             spent_usd=0.0091, estimated_prompt_tokens=1_300,
                             estimated_usd=0.0177)


def test_a_study_with_collections_shows_estimated_against_spent(tmp_path):
    path = build_study(tmp_path / "results.sqlite")
    with ResultsStore(path) as store:
        study = store.studies()[0].name
        store.put_collection(study, SHARED)
        store.put_collection(study, CHOSEN)
    document = build_document(load_study(path))
    titles = [section.title for section in document.sections]
    assert titles.index(TITLE) == titles.index("Compute: estimated and measured") + 1
    text = markdown.render(document)
    table = next(t for t in markdown_tables(text) if t[0][0] == "Source")
    header, shared, chosen, total = table
    cells = dict(zip(header, shared))
    assert (cells["Answers est. / bought"], cells["Prompt tokens est."],
            cells["Prompt tokens billed"], cells["Answer tokens est."],
            cells["Answer tokens billed"], cells["Tokens counted by"]) == (
        "16 / 16", "1,107", "1,234", "4,096", "3,100", "the target")
    assert (cells["Est. $"], cells["Spent $"], cells["Spent / est."]) == (
        "$0.0082", "$0.0068", f"{0.0068 / 0.0082:.2f}")
    assert cells["Chosen for"] == "(shared)" and cells["Mode"] == "batch"
    cells = dict(zip(header, chosen))
    assert cells["Tokens counted by"].startswith("estimated") and cells["Chosen for"] == \
        "llama-tiny"
    cells = dict(zip(header, total))
    assert cells["Est. $"] == "**$0.026**" and cells["Spent $"] == "**$0.016**"
    assert cells["Prompt tokens billed"] == "**2,184**"
    assert "FICTIONAL price row demo-target" in text
    page = html.render(document)
    assert TITLE.replace("'", "&#x27;") in page and "$0.0068" in page


def test_no_section_without_collections_and_an_older_database_reports(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # written before the collections table existed
        db.executescript(OLD_SCHEMA)
    data = load_study(path)
    assert data.collections == ()
    assert TITLE not in [section.title for section in build_document(data).sections]
