"""The `text2cypher` task's property graph: the demo world's countries, grown into a graph.

Nodes: `Country(name, flag, animal, food, sport, population)` (the demo world's 64 countries with
their four facts, plus a population in thousands, distinct per country so "the N largest" never
ties) and `Bloc(name, founded)` (six trade blocs; kuzu's parser refuses `Union`, a Cypher
keyword, as a table name).
Relationships: `BORDERS` (Country -> Country, stored in BOTH directions, so a query may always walk
it forwards) and `JOINED {since}` (Country -> Bloc). Borders come from an 8 x 8 map: countries
are dealt onto a grid and neighbouring cells border each other with a fixed probability, so the
map is planar and has cycles for two-hop questions to walk around (with this seed: 77 borders,
every country has 1-4 neighbours).

Everything is drawn from one seed; `build_graph()` is pure and `statements()` is the DDL and data
for `graph_database.create_graph`. `demo_graph_path()` builds the database once per process into a
temporary directory that nothing else shares, so no prediction can reach a file another process
reads.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import tempfile
from pathlib import Path

from arch_compare_tasks import demo_world

SEED = demo_world.SEED + 14  # issue 14's graph; any fixed number would do
BLOC_NAMES = ("Amber League", "Cobalt League", "Jade League", "Onyx League", "Coral League",
              "Ivory League")
GRID = 8  # countries are dealt onto a GRID x GRID map
BORDER_PROBABILITY = 0.7  # per pair of neighbouring cells
FACTS = tuple(demo_world.ATTRIBUTES)  # flag, animal, food, sport
# The schema as prompts show it: short, because the demo's prompts must fit in 64 tokens of its
# 512-piece tokenizers (property types and keys are in `statements()`).
SCHEMA = ("Country(name flag animal food sport population) Bloc(name founded) "
          "BORDERS:Country->Country JOINED{since}:Country->Bloc")


@dataclasses.dataclass(frozen=True)
class GraphCountry:
    name: str
    facts: tuple[tuple[str, str], ...]  # (attribute, value) in FACTS order
    population: int  # thousands

    def fact(self, key: str) -> str:
        return dict(self.facts)[key]


@dataclasses.dataclass(frozen=True)
class Graph:
    countries: tuple[GraphCountry, ...]
    blocs: tuple[tuple[str, int], ...]  # (name, founded)
    borders: tuple[tuple[str, str], ...]  # each unordered pair once, (a, b) with a < b
    memberships: tuple[tuple[str, str, int], ...]  # (country, bloc, since)

    def country(self, name: str) -> GraphCountry:
        for country in self.countries:
            if country.name == name:
                return country
        raise KeyError(f"no country {name!r} in the text2cypher graph")

    def neighbours(self, name: str) -> set[str]:
        return ({b for a, b in self.borders if a == name}
                | {a for a, b in self.borders if b == name})

    def members(self, bloc: str) -> set[str]:
        return {country for country, member_of, _ in self.memberships if member_of == bloc}


@functools.cache
def build_graph() -> Graph:
    rng = random.Random(SEED)
    world = demo_world.build_world()
    populations = rng.sample(range(200, 9_000), len(world.countries))
    countries = tuple(GraphCountry(c.name, tuple((k, c.facts[k]) for k in FACTS), population)
                      for c, population in zip(world.countries, populations))
    cells = [c.name for c in countries]
    rng.shuffle(cells)
    borders = []
    for index, name in enumerate(cells):
        row, column = divmod(index, GRID)
        for other_row, other_column in ((row, column + 1), (row + 1, column)):
            if other_row < GRID and other_column < GRID and rng.random() < BORDER_PROBABILITY:
                other = cells[other_row * GRID + other_column]
                borders.append(tuple(sorted((name, other))))
    blocs = tuple((name, rng.randrange(1900, 1990)) for name in BLOC_NAMES)
    memberships = []
    for country in countries:
        joined = rng.sample(blocs, k=rng.choices((0, 1, 2), weights=(2, 5, 3))[0])
        memberships += [(country.name, bloc, rng.randrange(founded, 2024))
                        for bloc, founded in joined]
    return Graph(countries, blocs, tuple(sorted(borders)), tuple(memberships))


def _text(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def statements(graph: Graph | None = None) -> list[str]:
    """Kuzu DDL (tables declared first, typed, with primary keys), then one CREATE per fact."""
    graph = graph or build_graph()
    result = [
        "CREATE NODE TABLE Country(name STRING PRIMARY KEY, flag STRING, animal STRING, "
        "food STRING, sport STRING, population INT64)",
        "CREATE NODE TABLE Bloc(name STRING PRIMARY KEY, founded INT64)",
        "CREATE REL TABLE BORDERS(FROM Country TO Country)",
        "CREATE REL TABLE JOINED(FROM Country TO Bloc, since INT64)",
    ]
    for country in graph.countries:
        facts = ", ".join(f"{key}: {_text(value)}" for key, value in country.facts)
        result.append(f"CREATE (:Country {{name: {_text(country.name)}, {facts}, "
                      f"population: {country.population}}})")
    result += [f"CREATE (:Bloc {{name: {_text(name)}, founded: {founded}}})"
               for name, founded in graph.blocs]
    for a, b in graph.borders:  # both directions: questions walk BORDERS forwards only
        result.append(f"MATCH (a:Country {{name: {_text(a)}}}), (b:Country {{name: {_text(b)}}}) "
                      f"CREATE (a)-[:BORDERS]->(b), (b)-[:BORDERS]->(a)")
    for country, bloc, since in graph.memberships:
        result.append(f"MATCH (c:Country {{name: {_text(country)}}}), "
                      f"(b:Bloc {{name: {_text(bloc)}}}) "
                      f"CREATE (c)-[:JOINED {{since: {since}}}]->(b)")
    return result


@functools.cache
def demo_graph_path() -> Path:
    """The demo graph, built once per process into a fresh temporary directory (removed at exit)."""
    from arch_compare.evaluation import graph_database
    scratch = tempfile.TemporaryDirectory(prefix="text2cypher-")
    _SCRATCH.append(scratch)  # keeps the directory alive for the process's lifetime
    path = Path(scratch.name) / "world.kuzu"
    graph_database.create_graph(path, statements())
    return path


_SCRATCH: list[tempfile.TemporaryDirectory] = []
