"""Scoring Cypher predictions: extraction, normalisation, ORDER BY, result comparison, metrics,
and the adversarial predictions of issue 14 pushed through the metric on a real graph."""

import time

import pytest

from arch_compare.evaluation.cypher import (
    cypher_exact_match, cypher_metrics, extract_query, has_order_by, normalise_query, results_match,
)
from arch_compare.evaluation.graph_database import QueryResult, ReadOnlyGraph, create_graph, fingerprint
from tests.evaluation.test_graph_database import world_statements


def result(columns, rows):
    return QueryResult(columns=tuple(columns), rows=tuple(tuple(row) for row in rows))


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("output, query", [
    ("Sure:\n```cypher\nMATCH (n) RETURN n;\n```\nand ```RETURN 2```", "MATCH (n) RETURN n"),
    ("```\nRETURN 1\n```", "RETURN 1"),
    ("~~~cypher\n  MATCH (c:Country)\n  RETURN c.name\n~~~", "MATCH (c:Country)\n  RETURN c.name"),
    ("```cypher\nRETURN 3", "RETURN 3"),  # an unclosed fence runs to the end
    ("  MATCH (n) RETURN n ;  ", "MATCH (n) RETURN n"),
    ("```cypher\nMATCH (n) RETURN n\n```\n```cypher\nRETURN 2\n```", "MATCH (n) RETURN n"),
])
def test_extract_query(output, query):
    assert extract_query(output) == query


# --------------------------------------------------------------------------- normalisation


def test_normalise_query_equates_spellings():
    canonical = normalise_query("MATCH (c:Country)-[:BORDERS]->(d) WHERE c.name = 'Chile' "
                                "RETURN count(d) AS n")
    for spelling in [
        "match (c:Country)-[:BORDERS]->(d)\n  where c.name = \"Chile\"\nreturn COUNT(d) as n;",
        "MATCH(c:Country) - [:BORDERS] -> (d) WHERE c.name='Chile' RETURN count ( d ) AS n",
        "MATCH (c:Country)-[:BORDERS]->(d) // a comment\nWHERE c.name = 'Chile' RETURN count(d) AS n",
    ]:
        assert normalise_query(spelling) == canonical, spelling
    assert canonical == "MATCH(c:Country)-[:BORDERS]->(d)WHERE c.name='Chile' RETURN COUNT(d)AS n"


def test_normalise_query_keeps_literals_and_identifiers():
    assert normalise_query("RETURN 'Chile'") != normalise_query("RETURN 'chile'")
    assert normalise_query("MATCH (c:Country) RETURN c") != normalise_query("MATCH (c:country) RETURN c")
    assert normalise_query("RETURN 'a  b'") == "RETURN 'a  b'"
    assert normalise_query('RETURN "it\'s"') == normalise_query("RETURN 'it\\'s'")
    assert normalise_query("RETURN 'match where'") == "RETURN 'match where'"


# --------------------------------------------------------------------------- ORDER BY


@pytest.mark.parametrize("query, ordered", [
    ("MATCH (c:Country) RETURN c.name ORDER BY c.name", True),
    ("match (c:Country) return c.name order  by c.name desc limit 3", True),
    ("MATCH (c:Country) RETURN c.name", False),
    ("MATCH (c:Country) WHERE c.name = 'ORDER BY' RETURN c.name", False),
    ("MATCH (c:Country) RETURN c.name // ORDER BY c.name", False),
    ("MATCH (c:Country) WITH c ORDER BY c.population DESC LIMIT 3 RETURN c.name", False),
    ("MATCH (c:Country) WHERE EXISTS { MATCH (c)-[:BORDERS]->(d) RETURN d ORDER BY d.name } "
     "RETURN c.name", False),
    ("MATCH (c:Country) WITH c ORDER BY c.area LIMIT 5 RETURN c.name ORDER BY c.name", True),
])
def test_has_order_by(query, ordered):
    assert has_order_by(query) is ordered


# --------------------------------------------------------------------------- comparison

GOLD = result(["name", "population"], [("A", 1), ("B", 2), ("C", 3)])


def test_permuted_columns_match():
    predicted = result(["pop", "country"], [(1, "A"), (2, "B"), (3, "C")])
    assert results_match(GOLD, predicted, ordered=False)
    assert results_match(GOLD, predicted, ordered=True)


def test_row_order_matters_only_when_ordered():
    shuffled = result(["name", "population"], [("C", 3), ("A", 1), ("B", 2)])
    assert results_match(GOLD, shuffled, ordered=False)
    assert not results_match(GOLD, shuffled, ordered=True)


def test_rows_compare_as_multisets():
    a, b = ("a", 1), ("b", 2)
    assert not results_match(result("xy", [a, a, b]), result("xy", [a, b, b]), ordered=False)
    assert not results_match(result("xy", [a, b]), result("xy", [a, b, b]), ordered=False)
    assert results_match(result("xy", [a, b, a]), result("xy", [a, a, b]), ordered=False)


def test_permutation_is_per_column_not_per_value():
    # Each column holds the same values but the pairing across columns differs.
    gold = result("xy", [(1, 2), (2, 1), (3, 3)])
    assert not results_match(gold, result("xy", [(1, 1), (2, 2), (3, 3)]), ordered=False)
    assert results_match(gold, result("yx", [(2, 1), (1, 2), (3, 3)]), ordered=False)
    # Two columns with identical contents: the search must try both assignments.
    gold = result("xyz", [(1, 1, "a"), (2, 2, "b")])
    assert results_match(gold, result("zxy", [("a", 1, 1), ("b", 2, 2)]), ordered=True)


def test_wrong_values_column_count_and_errors():
    assert not results_match(GOLD, result(["name", "population"], [("A", 1), ("B", 2), ("C", 4)]),
                             ordered=False)
    assert not results_match(GOLD, result(["name"], [("A",), ("B",), ("C",)]), ordered=False)
    assert not results_match(GOLD, result(["n", "p", "x"], [("A", 1, 0), ("B", 2, 0), ("C", 3, 0)]),
                             ordered=False)
    assert not results_match(GOLD, QueryResult.failed("timed out"), ordered=False)
    with pytest.raises(ValueError, match="gold result is an error"):
        results_match(QueryResult.failed("boom"), GOLD, ordered=False)


def test_both_empty_match_and_floats_are_rounded():
    assert results_match(result(["a"], []), result(["b", "c"], []), ordered=False)
    assert not results_match(GOLD, result(["name", "population"], []), ordered=False)
    assert results_match(result(["x"], [(0.1 + 0.2,)]), result(["y"], [(0.3,)]), ordered=False)
    assert results_match(result(["x"], [(3,)]), result(["y"], [(3.0,)]), ordered=False)
    assert not results_match(result(["x"], [(0.3,)]), result(["y"], [(0.3001,)]), ordered=False)


# --------------------------------------------------------------------------- metrics


def test_metrics_count_hits_and_check_inputs():
    targets = [{"query": "MATCH (n) RETURN n.name", "ordered": False, "result": GOLD}] * 3
    predictions = [
        {"query": "match (n) return n.name", "result": GOLD},
        {"query": "MATCH (m) RETURN m.name", "result": result(["x", "y"], [])},
        {"query": "MATCH (n) RETURN", "result": QueryResult.failed("syntax")},
    ]
    scores = cypher_metrics(targets, predictions)
    assert (scores["execution_accuracy"].hits, scores["execution_accuracy"].n) == (1, 3)
    assert (scores["executable"].hits, scores["exact_match"].hits) == (2, 1)
    assert cypher_exact_match(targets, predictions)["exact_match"].hits == 1
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        cypher_metrics(targets, predictions[:2])
    with pytest.raises(ValueError, match="no executed result"):
        cypher_metrics(targets, [dict(p, result=None) for p in predictions])
    with pytest.raises(ValueError, match="gold query fails"):
        cypher_metrics([dict(targets[0], result=QueryResult.failed("x"))], predictions[:1])


# --------------------------------------------------------------------------- adversarial


def test_adversarial_predictions_score_wrong_and_leave_the_graph_unchanged(tmp_path):
    """Issue 14: hostile predictions through the metric; the graph and the file system unchanged."""
    path = tmp_path / "world.kuzu"
    create_graph(path, world_statements())
    before = fingerprint(path)
    files_before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    copy_target = tmp_path / "x.csv"
    gold_query = "MATCH (c:Country) WHERE c.continent = 'Europe' RETURN c.name"
    adversarial = [
        "MATCH (n) DETACH DELETE n",
        "CREATE (:Country {name: 'Atlantis', population: 1, area: 1.0, continent: 'Europe'})",
        "MATCH (c:Country) SET c.continent = 'Europe' RETURN c.name",
        "MERGE (c:Country {name: 'Atlantis'}) RETURN c.name",
        f"COPY (MATCH (c:Country) RETURN c.name) TO '{copy_target}'",
        "LOAD FROM '/etc/passwd' RETURN *",
        # Five-way cartesian products over 335 nodes. kuzu answers `RETURN count(*)` without
        # enumerating (it multiplies counts: a wrong number in milliseconds); a filter over all five
        # forces enumeration (timeout); returned rows hit the row cap or the buffer-pool cap.
        "MATCH (a),(b),(c),(d),(e) RETURN count(*)",
        "MATCH (a),(b),(c),(d),(e) WHERE a.name + b.name + c.name + d.name + e.name <> '' "
        "RETURN count(*)",
        "MATCH (a),(b),(c),(d),(e) RETURN a.name, e.name",
        "MATCH (a),(b),(c),(d),(e) RETURN a.name, b.name, c.name, d.name, e.name",
        "MATCH (c:Country) WHERE c.continent = 'Europe' RETURN c.name,",  # syntax error
        f"{gold_query}; MATCH (n) DETACH DELETE n",
        "// a harmless read\nmatch (c:Country) detach delete c",
        "match (c:Country) where c.continent = 'Europe' delete c",
    ]
    start = time.monotonic()
    with ReadOnlyGraph(path, timeout_seconds=0.5, max_rows=200) as graph:
        gold = graph.run(gold_query)
        assert gold.ok and len(gold.rows) == 6
        targets = [{"query": gold_query, "ordered": has_order_by(gold_query), "result": gold}]
        predictions = []
        for query in adversarial + [gold_query]:  # the last one, the gold query, is a control
            query_start = time.monotonic()
            predictions.append({"query": query, "result": graph.run(extract_query(query))})
            assert time.monotonic() - query_start < 0.5 + 3.0, query
        scores = cypher_metrics(targets * len(predictions), predictions)
        errors = [p["result"].error for p in predictions]
        assert graph.run("MATCH (c:Country) RETURN count(*)").rows == ((30,),)  # still usable
    elapsed = time.monotonic() - start
    # Every prediction but the plain cartesian count (index 6, which runs and returns a wrong
    # number) and the control errs.
    assert all(error for i, error in enumerate(errors[:-1]) if i != 6) and errors[-1] is None, errors
    assert errors[6] is None and predictions[6]["result"].rows[0][0] == 335 ** 5
    assert any("timed out" in (error or "") for error in errors), errors
    assert (scores["execution_accuracy"].hits, scores["execution_accuracy"].n) == (1, len(predictions))
    assert scores["executable"].hits == 2
    assert not copy_target.exists()
    assert fingerprint(path) == before
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files_before
    assert elapsed < 15, elapsed
