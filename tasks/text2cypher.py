"""English-to-Cypher over the demo graph: templates, gold queries, splits, the translator target.

Each `Template` is one query structure at one difficulty level (`LEVELS`: lookup, filter, one-hop,
two-hop, aggregation, ordering, negation) with 2-4 English wordings. Wordings and the gold query
are `string.Template`s over the same slots (`$country`, `$bloc`, `$attr` + `$value`, ...), so the
gold query of a question is a function of its slots only.

Splits (the issue asks that test questions use wordings and entities imitation never showed):
- `validation` questions use each template's LAST wording, which no training question uses, and
  mention only held-out entities (`HELD_OUT_COUNTRIES` countries and `HELD_OUT_BLOCS` blocs drawn
  from the seed); templates without entities (filters on a value, "the N most populous") differ
  from training by wording alone.
- `train` questions use the other wordings and never mention a held-out entity. They are dealt
  round-robin over the templates (each template's questions shuffled), so any prefix mixes every
  structure and level.
Every gold query is run on the real database and a question is kept only when its result has a
row that is not all null / zero (an empty answer cannot tell a right query from a wrong one).

The translator (`translate`) knows the whole grammar, held-out wordings included: it matches a
question against each wording's regular expression and fills the gold query from the captured
slots; it never looks the generated pairs up.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import string
from typing import Sequence

from arch_compare.data.conversations import Turn
from arch_compare_tasks import demo_world
from arch_compare_tasks.text2cypher_graph import (FACTS, SCHEMA, SEED, build_graph,
                                                  demo_graph_path)

LEVELS = ("lookup", "filter", "one_hop", "two_hop", "aggregation", "ordering", "negation")
HELD_OUT_COUNTRIES = 12
HELD_OUT_BLOCS = 2
TRAIN_SLOTS_PER_TEMPLATE = 150  # slot fillings per template drawn for training, each in every wording
VALIDATION_PER_TEMPLATE = 7
AGGREGATES = {"largest": "max", "smallest": "min", "average": "avg"}
RANKS = {"most": "DESC", "fewest": "ASC"}
PROPERTIES = FACTS + ("population",)
# Slot -> the regular expression that reads it back out of a question.
SLOT_PATTERNS = {
    "country": r"[A-Z][a-z]+", "bloc": r"[A-Z][a-z]+ League", "attr": "|".join(FACTS),
    "prop": "|".join(PROPERTIES), "value": r"[a-z]+", "number": r"\d+", "n": r"\d+",
    "agg": "|".join(AGGREGATES), "rank": "|".join(RANKS),
}
ENTITY_SLOTS = ("country", "bloc")


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    level: str
    wordings: tuple[str, ...]  # the last one is held out for validation
    query: str  # $fn and $order are derived from $agg and $rank

    def __post_init__(self):
        if self.level not in LEVELS or not 2 <= len(self.wordings) <= 4:
            raise ValueError(f"template {self.name!r}: bad level or wording count")

    @property
    def slots(self) -> tuple[str, ...]:
        names = string.Template(self.wordings[0]).get_identifiers()
        return tuple(names)

    def gold(self, slots: dict) -> str:
        derived = dict(slots)
        if "agg" in slots:
            derived["fn"] = AGGREGATES[slots["agg"]]
        if "rank" in slots:
            derived["order"] = RANKS[slots["rank"]]
        return string.Template(self.query).substitute(derived)


_NEIGHBOURS = "MATCH (:Country {name: '$country'})-[:BORDERS]->(n:Country)"
_MEMBERS = "MATCH (c:Country)-[:MEMBER_OF]->(:Bloc {name: '$bloc'})"
TEMPLATES = (
    Template("country_property", "lookup", (
        "What is the $prop of $country?", "Give the $prop of $country.",
        "Tell me the $prop of $country.", "Show the $prop of $country."),
        "MATCH (c:Country {name: '$country'}) RETURN c.$prop"),
    Template("bloc_founded", "lookup", (
        "When was the $bloc founded?", "In which year was the $bloc founded?",
        "Give the founding year of the $bloc."),
        "MATCH (b:Bloc {name: '$bloc'}) RETURN b.founded"),
    Template("countries_with_value", "filter", (
        "Which countries have $value as their $attr?", "List the countries whose $attr is $value.",
        "Name every country with $value as $attr."),
        "MATCH (c:Country) WHERE c.$attr = '$value' RETURN c.name"),
    Template("population_above", "filter", (
        "Which countries have a population over $number?",
        "List the countries whose population exceeds $number.",
        "Name the countries with population greater than $number."),
        "MATCH (c:Country) WHERE c.population > $number RETURN c.name"),
    Template("neighbours", "one_hop", (
        "Which countries border $country?", "List the neighbours of $country.",
        "What countries share a border with $country?", "Name the countries next to $country."),
        _NEIGHBOURS + " RETURN n.name"),
    Template("bloc_members", "one_hop", (
        "Which countries belong to the $bloc?", "List the members of the $bloc.",
        "Name the countries in the $bloc."),
        _MEMBERS + " RETURN c.name"),
    Template("blocs_of", "one_hop", (
        "Which blocs is $country a member of?", "List the blocs that $country belongs to.",
        "What blocs has $country joined?"),
        "MATCH (:Country {name: '$country'})-[:MEMBER_OF]->(b:Bloc) RETURN b.name"),
    Template("joined_since", "one_hop", (
        "When did $country join the $bloc?", "Since when is $country in the $bloc?",
        "In which year did $country join the $bloc?"),
        "MATCH (:Country {name: '$country'})-[m:MEMBER_OF]->(:Bloc {name: '$bloc'}) "
        "RETURN m.since"),
    Template("neighbours_with_value", "one_hop", (
        "Which neighbours of $country have $value as $attr?",
        "List the countries bordering $country whose $attr is $value.",
        "Name the neighbours of $country with $value as their $attr."),
        _NEIGHBOURS + " WHERE n.$attr = '$value' RETURN n.name"),
    Template("two_hop_neighbours", "two_hop", (
        "Which countries border a neighbour of $country?",
        "List the countries two borders away from $country.",
        "Name the neighbours of the neighbours of $country."),
        "MATCH (:Country {name: '$country'})-[:BORDERS]->(:Country)-[:BORDERS]->(n:Country) "
        "WHERE n.name <> '$country' RETURN DISTINCT n.name"),
    Template("neighbour_blocs", "two_hop", (
        "Which blocs do the neighbours of $country belong to?",
        "List the blocs of the countries bordering $country.",
        "Name the blocs that neighbours of $country are in."),
        "MATCH (:Country {name: '$country'})-[:BORDERS]->(:Country)-[:MEMBER_OF]->(b:Bloc) "
        "RETURN DISTINCT b.name"),
    Template("bloc_partners", "two_hop", (
        "Which countries share a bloc with $country?",
        "List the countries in a bloc with $country.",
        "Name the countries that are in a bloc together with $country."),
        "MATCH (:Country {name: '$country'})-[:MEMBER_OF]->(:Bloc)<-[:MEMBER_OF]-(n:Country) "
        "WHERE n.name <> '$country' RETURN DISTINCT n.name"),
    Template("count_neighbours", "aggregation", (
        "How many countries border $country?", "How many neighbours does $country have?",
        "Count the neighbours of $country."),
        _NEIGHBOURS + " RETURN count(*)"),
    Template("count_members", "aggregation", (
        "How many countries belong to the $bloc?", "How many members does the $bloc have?",
        "Count the members of the $bloc."),
        _MEMBERS + " RETURN count(*)"),
    Template("count_value", "aggregation", (
        "How many countries have $value as their $attr?",
        "Count the countries whose $attr is $value.",
        "What is the number of countries with $value as $attr?"),
        "MATCH (c:Country) WHERE c.$attr = '$value' RETURN count(*)"),
    Template("bloc_population", "aggregation", (
        "What is the $agg population in the $bloc?",
        "Give the $agg population of the $bloc members.",
        "Find the $agg population among members of the $bloc."),
        _MEMBERS + " RETURN $fn(c.population)"),
    Template("ranked_countries", "ordering", (
        "Which $n countries have the $rank people?", "List the $n countries with the $rank people.",
        "Name $n countries with the $rank people, in order."),
        "MATCH (c:Country) RETURN c.name ORDER BY c.population $order LIMIT $n"),
    Template("ranked_members", "ordering", (
        "Which $n members of the $bloc have the $rank people?",
        "List the $n members of the $bloc with the $rank people.",
        "Name $n members of the $bloc with the $rank people, in order."),
        _MEMBERS + " RETURN c.name ORDER BY c.population $order LIMIT $n"),
    Template("ranked_neighbours", "ordering", (
        "List the neighbours of $country from the $rank people down.",
        "Sort the neighbours of $country starting with the $rank people.",
        "Order the neighbours of $country by population, $rank people first."),
        _NEIGHBOURS + " RETURN n.name ORDER BY n.population $order"),
    Template("value_not_in_bloc", "negation", (
        "Which countries with $value as $attr are not in the $bloc?",
        "List the countries whose $attr is $value outside the $bloc.",
        "Name the countries with $value as their $attr that are not members of the $bloc."),
        "MATCH (c:Country) WHERE c.$attr = '$value' AND NOT (c)-[:MEMBER_OF]->(:Bloc "
        "{name: '$bloc'}) RETURN c.name"),
    Template("value_in_no_bloc", "negation", (
        "Which countries with $value as $attr belong to no bloc?",
        "List the countries whose $attr is $value and that are in no bloc.",
        "Name the countries with $value as their $attr outside every bloc."),
        "MATCH (c:Country) WHERE c.$attr = '$value' AND NOT (c)-[:MEMBER_OF]->(:Bloc) "
        "RETURN c.name"),
    Template("neighbours_not_in_bloc", "negation", (
        "Which neighbours of $country are not in the $bloc?",
        "List the neighbours of $country outside the $bloc.",
        "Name the countries bordering $country that are not members of the $bloc."),
        _NEIGHBOURS + " WHERE NOT (n)-[:MEMBER_OF]->(:Bloc {name: '$bloc'}) RETURN n.name"),
)
TEMPLATES_BY_NAME = {template.name: template for template in TEMPLATES}


# --- the translator -------------------------------------------------------------------------------

def _wording_pattern(wording: str) -> re.Pattern:
    pattern = re.escape(wording)
    for slot in string.Template(wording).get_identifiers():
        pattern = pattern.replace(re.escape("$" + slot), f"(?P<{slot}>{SLOT_PATTERNS[slot]})")
    return re.compile("^" + pattern + "$")


_PATTERNS = tuple((template, _wording_pattern(wording))
                  for template in TEMPLATES for wording in template.wordings)


def translate(question: str) -> str | None:
    """The gold Cypher for a question in any template's wording; None for anything else."""
    question = " ".join(question.split())
    for template, pattern in _PATTERNS:
        if match := pattern.match(question):
            return template.gold(match.groupdict())
    return None


PROMPT_PATTERN = re.compile(r"^(?P<schema>.+)\nQuestion: (?P<question>[^\n]+)$", re.DOTALL)


def format_prompt(schema: str, question: str) -> str:
    """The prompt layout of every text2cypher task: the schema, then the question."""
    return f"{schema.strip()}\nQuestion: {' '.join(question.split())}"


def answer(query: str) -> str:
    """The target's answer form: the query alone in a fenced block."""
    return f"```cypher\n{query}\n```"


NO_TRANSLATION = "I cannot translate that question."


def target_respond(turns: Sequence[Turn]) -> str:
    """The demo's target for every task: text2cypher prompts get the translated query, any other
    message goes to the demo world's target."""
    match = PROMPT_PATTERN.match(turns[-1].text.strip())
    if match is None:
        return demo_world.target_respond(turns)
    query = translate(match.group("question"))
    return NO_TRANSLATION if query is None else answer(query)


# --- questions ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    template: str
    level: str
    question: str
    query: str
    entities: tuple[str, ...]  # the countries and blocs it mentions

    @property
    def prompt(self) -> str:
        return format_prompt(SCHEMA, self.question)


@functools.cache
def held_out_entities() -> tuple[frozenset[str], frozenset[str]]:
    """(countries, blocs) that only validation questions mention."""
    graph = build_graph()
    rng = random.Random(SEED + 1)
    countries = rng.sample([c.name for c in graph.countries], HELD_OUT_COUNTRIES)
    blocs = rng.sample([name for name, _ in graph.blocs], HELD_OUT_BLOCS)
    return frozenset(countries), frozenset(blocs)


def _slot_values(slot: str, held_out: bool) -> list:
    """Values of one slot; entity slots split by `held_out`. attr/value are one joint slot."""
    graph = build_graph()
    countries, blocs = held_out_entities()
    if slot == "country":
        return [c.name for c in graph.countries if (c.name in countries) == held_out]
    if slot == "bloc":
        return [name for name, _ in graph.blocs if (name in blocs) == held_out]
    if slot == "attr":
        return [{"attr": key, "value": value}
                for key in FACTS for value in demo_world.ATTRIBUTES[key].values]
    return {"prop": list(PROPERTIES), "number": [str(n) for n in range(1000, 8001, 500)],
            "n": [str(n) for n in range(2, 6)], "agg": list(AGGREGATES),
            "rank": list(RANKS)}[slot]


def _fillings(template: Template, held_out: bool) -> list[dict]:
    fillings = [{}]
    for slot in template.slots:
        if slot == "value":
            continue  # drawn with attr
        values = _slot_values(slot, held_out)
        fillings = [{**filling, **(v if isinstance(v, dict) else {slot: v})}
                    for filling in fillings for v in values]
    return fillings


def _informative(result) -> bool:
    """A result that can tell queries apart: it ran and holds a value that is not null or 0."""
    return (result is not None and result.ok and bool(result.rows)
            and any(value not in (None, 0) for row in result.rows for value in row))


def _gold_results(queries: Sequence[str]) -> dict[str, object]:
    from arch_compare.evaluation import graph_database
    with graph_database.ReadOnlyGraph(demo_graph_path()) as graph:
        return {query: graph.run(query) for query in dict.fromkeys(queries)}


def _question(template: Template, wording: str, filling: dict, index: int, split: str) -> Question:
    entities = tuple(filling[slot] for slot in ENTITY_SLOTS if slot in filling)
    return Question(f"text2cypher/{split}/{template.name}/{index}", template.name, template.level,
                    string.Template(wording).substitute(filling), template.gold(filling),
                    entities)


@functools.cache
def questions(split: str) -> tuple[Question, ...]:
    """The `train` or `validation` questions (see the module docstring for the split rule)."""
    if split not in ("train", "validation"):
        raise KeyError(f"text2cypher has splits train and validation, not {split!r}")
    held_out = split == "validation"
    rng = random.Random(SEED + (2 if held_out else 3))
    drawn: list[list[tuple[Template, str, dict]]] = []
    for template in TEMPLATES:
        fillings = _fillings(template, held_out)
        rng.shuffle(fillings)
        wordings = template.wordings[-1:] if held_out else template.wordings[:-1]
        limit = 4 * VALIDATION_PER_TEMPLATE if held_out else TRAIN_SLOTS_PER_TEMPLATE
        drawn.append([(template, wording, filling) for filling in fillings[:limit]
                      for wording in wordings])
    results = _gold_results([t.gold(f) for group in drawn for t, _, f in group])
    kept = []
    for group in drawn:
        group = [item for item in group if _informative(results[item[0].gold(item[2])])]
        rng.shuffle(group)
        kept.append(group[:VALIDATION_PER_TEMPLATE] if held_out else group)
    ordered = []  # round-robin over templates, so every prefix mixes them
    for position in range(max(len(group) for group in kept)):
        ordered += [group[position] for group in kept if position < len(group)]
    return tuple(_question(t, w, f, i, split) for i, (t, w, f) in enumerate(ordered))
