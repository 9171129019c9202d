"""The grammar of the text2cypher questions: templates, their wordings, the translator target.

Each `Template` is one query structure at one difficulty level (`LEVELS`) with 3-4 English
wordings. Wordings and the gold query are `string.Template`s over the same slots (`$country`,
`$bloc`, `$attr` + `$value`, ...), so a question's gold query is a function of its slots only.

The translator (`translate`) knows the whole grammar, held-out wordings included: it matches a
question against each wording's regular expression and fills the gold query from the captured
slots; it never looks generated pairs up. `target_respond` is the demo's target for every task.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Sequence

from arch_compare.data.conversations import Turn
from arch_compare_tasks import demo_judge, demo_world
from arch_compare_tasks.text2cypher_graph import FACTS

LEVELS = ("lookup", "filter", "one_hop", "two_hop", "aggregation", "ordering", "negation")
AGGREGATES = {"largest": "max", "smallest": "min", "average": "avg"}
RANKS = {"largest": "DESC", "smallest": "ASC"}  # by population
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
_MEMBERS = "MATCH (c:Country)-[:JOINED]->(:Bloc {name: '$bloc'})"
TEMPLATES = (
    Template("country_property", "lookup", (
        "What is the $prop of $country?", "Give the $prop of $country.",
        "Tell me the $prop of $country.", "Show the $prop of $country."),
        "MATCH (c:Country {name: '$country'}) RETURN c.$prop"),
    Template("bloc_founded", "lookup", (
        "When was the $bloc founded?", "In which year was the $bloc founded?",
        "Founding year of the $bloc?"),
        "MATCH (b:Bloc {name: '$bloc'}) RETURN b.founded"),
    Template("countries_with_value", "filter", (
        "Which countries have $value as their $attr?", "List the countries whose $attr is $value.",
        "Countries with $attr $value?"),
        "MATCH (c:Country) WHERE c.$attr = '$value' RETURN c.name"),
    Template("population_above", "filter", (
        "Which countries have population over $number?",
        "List countries with population over $number.",
        "Countries with population above $number?"),
        "MATCH (c:Country) WHERE c.population > $number RETURN c.name"),
    Template("neighbours", "one_hop", (
        "Which countries border $country?", "List the neighbours of $country.",
        "What countries share a border with $country?", "Neighbours of $country?"),
        _NEIGHBOURS + " RETURN n.name"),
    Template("bloc_members", "one_hop", (
        "Which countries belong to the $bloc?", "List the members of the $bloc.",
        "Members of the $bloc?"),
        _MEMBERS + " RETURN c.name"),
    Template("blocs_of", "one_hop", (
        "Which blocs did $country join?", "List the blocs of $country.",
        "Blocs of $country?"),
        "MATCH (:Country {name: '$country'})-[:JOINED]->(b:Bloc) RETURN b.name"),
    Template("joined_since", "one_hop", (
        "When did $country join the $bloc?", "Since when is $country in the $bloc?",
        "Year $country joined the $bloc?"),
        "MATCH (:Country {name: '$country'})-[m:JOINED]->(:Bloc {name: '$bloc'}) "
        "RETURN m.since"),
    Template("neighbours_with_value", "one_hop", (
        "Which neighbours of $country have $attr $value?",
        "List neighbours of $country whose $attr is $value.",
        "Neighbours of $country with $attr $value?"),
        _NEIGHBOURS + " WHERE n.$attr = '$value' RETURN n.name"),
    Template("two_hop_neighbours", "two_hop", (
        "Which countries border a neighbour of $country?",
        "List countries bordering neighbours of $country.",
        "Neighbours of neighbours of $country?"),
        "MATCH (:Country {name: '$country'})-[:BORDERS]->(:Country)-[:BORDERS]->(n:Country) "
        "WHERE n.name <> '$country' RETURN DISTINCT n.name"),
    Template("neighbour_blocs", "two_hop", (
        "Which blocs did neighbours of $country join?",
        "List the blocs of neighbours of $country.",
        "Blocs of the neighbours of $country?"),
        "MATCH (:Country {name: '$country'})-[:BORDERS]->(:Country)-[:JOINED]->(b:Bloc) "
        "RETURN DISTINCT b.name"),
    Template("bloc_partners", "two_hop", (
        "Which countries share a bloc with $country?",
        "List countries in a bloc with $country.",
        "Bloc partners of $country?"),
        "MATCH (:Country {name: '$country'})-[:JOINED]->(:Bloc)<-[:JOINED]-(n:Country) "
        "WHERE n.name <> '$country' RETURN DISTINCT n.name"),
    Template("count_neighbours", "aggregation", (
        "How many countries border $country?", "How many neighbours has $country?",
        "Count the neighbours of $country."),
        _NEIGHBOURS + " RETURN count(*)"),
    Template("count_members", "aggregation", (
        "How many countries belong to the $bloc?", "How many members does the $bloc have?",
        "Count the members of the $bloc."),
        _MEMBERS + " RETURN count(*)"),
    Template("count_value", "aggregation", (
        "How many countries have $attr $value?",
        "Count countries whose $attr is $value.",
        "Number of countries with $attr $value?"),
        "MATCH (c:Country) WHERE c.$attr = '$value' RETURN count(*)"),
    Template("bloc_population", "aggregation", (
        "What is the $agg population in the $bloc?",
        "Give the $agg population of the $bloc.",
        "The $agg population among $bloc members?"),
        _MEMBERS + " RETURN $fn(c.population)"),
    Template("ranked_countries", "ordering", (
        "Which $n countries are $rank?", "List the $n $rank countries.",
        "The $n $rank countries by population?"),
        "MATCH (c:Country) RETURN c.name ORDER BY c.population $order LIMIT $n"),
    Template("ranked_members", "ordering", (
        "Which $n $bloc members are $rank?",
        "List the $n $rank $bloc members.",
        "The $n $rank members of the $bloc?"),
        _MEMBERS + " RETURN c.name ORDER BY c.population $order LIMIT $n"),
    Template("ranked_neighbours", "ordering", (
        "List neighbours of $country, $rank first.",
        "Sort neighbours of $country, $rank first.",
        "Neighbours of $country by population, $rank first?"),
        _NEIGHBOURS + " RETURN n.name ORDER BY n.population $order"),
    Template("value_not_in_bloc", "negation", (
        "Which countries with $attr $value are not in the $bloc?",
        "List countries with $attr $value outside the $bloc.",
        "Countries with $attr $value not in the $bloc?"),
        "MATCH (c:Country) WHERE c.$attr = '$value' AND NOT (c)-[:JOINED]->(:Bloc "
        "{name: '$bloc'}) RETURN c.name"),
    Template("value_in_no_bloc", "negation", (
        "Which countries with $attr $value are in no bloc?",
        "List countries with $attr $value in no bloc.",
        "Countries with $attr $value outside every bloc?"),
        "MATCH (c:Country) WHERE c.$attr = '$value' AND NOT (c)-[:JOINED]->(:Bloc) "
        "RETURN c.name"),
    Template("neighbours_not_in_bloc", "negation", (
        "Which neighbours of $country are not in the $bloc?",
        "List neighbours of $country outside the $bloc.",
        "Neighbours of $country not in the $bloc?"),
        _NEIGHBOURS + " WHERE NOT (n)-[:JOINED]->(:Bloc {name: '$bloc'}) RETURN n.name"),
)
TEMPLATES_BY_NAME = {template.name: template for template in TEMPLATES}


# --- the translator -------------------------------------------------------------------------------

def wording_pattern(wording: str) -> re.Pattern:
    pattern = re.escape(wording)
    for slot in string.Template(wording).get_identifiers():
        pattern = pattern.replace(re.escape("$" + slot), f"(?P<{slot}>{SLOT_PATTERNS[slot]})")
    return re.compile("^" + pattern + "$")


_PATTERNS = tuple((template, wording_pattern(wording))
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
    """The demo's target for every task: text2cypher prompts get the translated query, a judge's
    request a verdict (`demo_judge.py`), any other message goes to the demo world's target."""
    request = demo_judge.judge_request(turns[-1].text)
    if request is not None:
        return demo_judge.judge_reply(*request, respond=lambda text: target_respond(
            (Turn("user", text),)))
    match = PROMPT_PATTERN.match(turns[-1].text.strip())
    if match is None:
        return demo_world.target_respond(turns)
    query = translate(match.group("question"))
    return NO_TRANSLATION if query is None else answer(query)
