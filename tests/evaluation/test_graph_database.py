"""The read-only graph executor: building graphs, refusing writes, timeouts, row caps, fingerprints."""

import random
import time

import pytest

from arch_compare.evaluation.graph_database import (
    FORBIDDEN_KEYWORDS, ReadOnlyGraph, create_graph, fingerprint, plain_value, refusal,
)

CONTINENTS = ["Africa", "Asia", "Europe", "Americas", "Oceania"]
ORGANISATIONS = ["UN", "WTO", "NATO", "AU", "ASEAN"]
NUM_CITIES = 300  # makes a five-way cartesian product over all nodes ~4e12 combinations


def world_statements(seed: int = 0, shuffle: bool = False) -> list[str]:
    """A small graph: 30 countries with typed properties, borders, memberships, and 300 cities."""
    rng = random.Random(seed)
    countries = [(f"Country{i:02d}", rng.randrange(10**5, 10**8), round(rng.uniform(1e3, 1e6), 2),
                  CONTINENTS[i % len(CONTINENTS)]) for i in range(30)]
    nodes = [f"CREATE (:Country {{name: '{name}', population: {population}, area: {area}, "
             f"continent: '{continent}'}})" for name, population, area, continent in countries]
    nodes += [f"CREATE (:Organisation {{name: '{name}'}})" for name in ORGANISATIONS]
    rels = [f"MATCH (a:Country {{name: 'Country{i:02d}'}}), (b:Country {{name: 'Country{j:02d}'}}) "
            f"CREATE (a)-[:BORDERS {{length_km: {rng.randrange(10, 3000)}}}]->(b)"
            for i in range(30) for j in range(i + 1, 30) if (i * 7 + j * 3) % 5 == 0]
    rels += [f"MATCH (c:Country {{name: 'Country{i:02d}'}}), (o:Organisation {{name: '{org}'}}) "
             f"CREATE (c)-[:MEMBER_OF {{since: {1945 + (i * 13 + k) % 70}}}]->(o)"
             for i in range(30) for k, org in enumerate(ORGANISATIONS) if (i + k) % 3 == 0]
    if shuffle:
        random.Random(seed + 1).shuffle(nodes)
        random.Random(seed + 2).shuffle(rels)
    return [
        "CREATE NODE TABLE Country(name STRING, population INT64, area DOUBLE, continent STRING, "
        "PRIMARY KEY(name))",
        "CREATE NODE TABLE Organisation(name STRING, PRIMARY KEY(name))",
        "CREATE NODE TABLE City(id INT64, name STRING, PRIMARY KEY(id))",
        "CREATE REL TABLE BORDERS(FROM Country TO Country, length_km INT64)",
        "CREATE REL TABLE MEMBER_OF(FROM Country TO Organisation, since INT64)",
        *nodes,
        f"UNWIND range(1, {NUM_CITIES}) AS i CREATE (:City {{id: i, name: 'City' + CAST(i AS STRING)}})",
        *rels,
    ]


@pytest.fixture(scope="module")
def graph_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "world.kuzu"
    create_graph(path, world_statements())
    return path


@pytest.fixture(scope="module")
def graph(graph_path):
    with ReadOnlyGraph(graph_path, timeout_seconds=0.5, max_rows=100) as opened:
        yield opened


def test_reads_come_back_as_plain_values(graph):
    result = graph.run("MATCH (c:Country) WHERE c.continent = 'Europe' "
                       "RETURN c.name, c.population, c.area ORDER BY c.name")
    assert result.ok and result.columns == ("c.name", "c.population", "c.area")
    assert len(result.rows) == 6 and result.rows[0][0] == "Country02"
    assert all(isinstance(row, tuple) and isinstance(row[1], int) and isinstance(row[2], float)
               for row in result.rows)
    count = graph.run("MATCH (c:Country)-[:MEMBER_OF]->(o:Organisation) RETURN count(*)")
    assert count.rows == ((sum((i + k) % 3 == 0 for i in range(30) for k in range(5)),),)
    lists = graph.run("MATCH (o:Organisation) RETURN collect(o.name) AS names")
    assert isinstance(lists.rows[0][0], tuple) and sorted(lists.rows[0][0]) == sorted(ORGANISATIONS)
    hash(lists.rows)  # hashable all the way down


def test_nodes_and_relationships_have_a_canonical_form(graph):
    result = graph.run("MATCH (a:Country {name: 'Country00'})-[r:MEMBER_OF]->(o) "
                       "RETURN a, r, o ORDER BY o.name LIMIT 1")
    node, rel, organisation = result.rows[0]
    assert node[:2] == ("node", "Country")
    assert dict(node[2])["name"] == "Country00" and set(dict(node[2])) == {
        "name", "population", "area", "continent"}
    assert rel[0:2] == ("rel", "MEMBER_OF") and dict(rel[4]) == {"since": 1945 + 3}  # AU is organisation 3
    assert organisation == ("node", "Organisation", (("name", "AU"),))
    # The same node read again, with or without its label, is equal: results compare by value.
    again = graph.run("MATCH (a:Country {name: 'Country00'}) RETURN a")
    assert again.rows[0][0] == node
    typed = graph.run("MATCH (:Country {name: 'Country00'})-[:MEMBER_OF]->(o:Organisation) "
                      "RETURN o ORDER BY o.name LIMIT 1")
    assert typed.rows[0][0] == organisation
    assert plain_value({"k": [1, 2], "j": None}) == ("map", (("j", None), ("k", (1, 2))))


def test_string_literals_naming_writes_are_not_refused(graph):
    result = graph.run("MATCH (c:Country) WHERE c.name <> 'DELETE everything' "
                       "AND c.continent <> \"create\" /* set */ RETURN count(*) // merge")
    assert result.ok and result.rows == ((30,),)
    assert graph.run("MATCH (c:`Country`) RETURN count(*);").rows == ((30,),)  # one trailing ';'


@pytest.mark.parametrize("query", [
    "MATCH (n) DETACH DELETE n",
    "match (c:Country) set c.population = 0",
    "// just a read\nMATCH (c:Country) DELETE c",
    "/* read */ MERGE (c:Country {name: 'X'})",
    "MATCH (c:Country) RETURN c; MATCH (o:Organisation) RETURN o",
    "COPY (MATCH (c:Country) RETURN c.name) TO '/tmp/x.csv'",
    "LOAD FROM '/etc/passwd' RETURN *",
    "CALL show_tables() RETURN *",
    "INSTALL httpfs",
    "ATTACH 'other.kuzu' AS other (dbtype kuzu)",
    "CHECKPOINT",
])
def test_refused_statically(query):
    assert refusal(query) is not None


def test_every_forbidden_keyword_is_refused_in_any_case():
    for keyword in FORBIDDEN_KEYWORDS:
        assert refusal(f"MATCH (n) {keyword.lower()} n") is not None, keyword
        assert refusal(f"MATCH (n) WHERE n.name = '{keyword}' RETURN n.{keyword.lower()}") is None, keyword


def test_cartesian_product_times_out_and_the_connection_stays_usable(graph):
    start = time.monotonic()
    result = graph.run("MATCH (a),(b),(c),(d),(e) WHERE a.id + b.id + c.id + d.id + e.id > 0 "
                       "RETURN count(*)")
    elapsed = time.monotonic() - start
    assert not result.ok and "timed out" in result.error
    assert 0.4 < elapsed < 0.5 + 3.0, elapsed
    assert graph.run("MATCH (c:Country) RETURN count(*)").rows == ((30,),)


def test_results_are_kept_but_timeouts_run_again(graph_path, monkeypatch):
    with ReadOnlyGraph(graph_path, timeout_seconds=0.5, max_rows=100, cache_queries=2) as opened:
        executed = []
        execute = opened._execute
        monkeypatch.setattr(opened, "_execute", lambda query: executed.append(query) or
                            execute(query))
        count = "MATCH (c:Country) RETURN count(*)"
        first = opened.run(count)
        assert opened.run(count + ";  ") is first and executed == [count]  # one query, one run
        slow = "MATCH (a),(b),(c),(d),(e) WHERE a.id + b.id + c.id + d.id + e.id > 0 RETURN 1"
        assert "timed out" in opened.run(slow).error and "timed out" in opened.run(slow).error
        assert executed.count(slow) == 2
        opened.run("MATCH (o:Organisation) RETURN o.name")
        opened.run("RETURN 1 +")  # an error about the query is as final as a result: kept
        opened.run("RETURN 1 +")
        assert executed.count("RETURN 1 +") == 1
        assert opened.run(count).rows == ((30,),) and executed.count(count) == 2  # evicted


def test_results_over_the_row_cap_are_errors(graph):
    streamed = graph.run("MATCH (a),(b),(c),(d),(e) RETURN a.id, b.id, c.id, d.id, e.id")
    assert streamed.error == "more than 100 rows"
    assert graph.run("MATCH (c:City) RETURN c.id").error == "more than 100 rows"
    assert len(graph.run("MATCH (c:City) WHERE c.id <= 100 RETURN c.id").rows) == 100


def test_query_errors_come_back_as_errors(graph):
    for query in ["MATC (n) RETURN n", "MATCH (n:Nowhere) RETURN n", "RETURN 1 +", "", 42]:
        result = graph.run(query)
        assert not result.ok and result.error and result.rows == ()


def test_create_graph_refuses_existing_path_and_names_failing_statement(tmp_path, graph_path):
    with pytest.raises(ValueError, match="already exists"):
        create_graph(graph_path, ["CREATE NODE TABLE X(a INT64, PRIMARY KEY(a))"])
    broken = tmp_path / "broken.kuzu"
    with pytest.raises(ValueError, match=r"statement 1 failed .*CREATE \(:X \{b: 1\}\)"):
        create_graph(broken, ["CREATE NODE TABLE X(a INT64, PRIMARY KEY(a))", "CREATE (:X {b: 1})"])
    assert list(tmp_path.iterdir()) == []  # no half-built graph left behind
    with pytest.raises(FileNotFoundError):
        ReadOnlyGraph(tmp_path / "missing.kuzu")


def test_fingerprint_depends_on_contents_not_insertion_order(tmp_path, graph_path):
    create_graph(tmp_path / "shuffled.kuzu", world_statements(shuffle=True))
    assert fingerprint(tmp_path / "shuffled.kuzu") == fingerprint(graph_path)
    changed = [s.replace("length_km: ", "length_km: 1", 1) if "BORDERS {" in s else s
               for s in world_statements()]
    create_graph(tmp_path / "changed.kuzu", changed)
    assert fingerprint(tmp_path / "changed.kuzu") != fingerprint(graph_path)
