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

from arch_compare.data.conversations import Turn, format_history
from arch_compare_tasks import demo_world
from arch_compare_tasks.registry import TaskSpec, as_text, register_task
from arch_compare_tasks.text2cypher_graph import (FACTS, SCHEMA, SEED, build_graph,
                                                  demo_graph_path)

LEVELS = ("lookup", "filter", "one_hop", "two_hop", "aggregation", "ordering", "negation")
HELD_OUT_COUNTRIES = 12
HELD_OUT_BLOCS = 2
TRAIN_SLOTS_PER_TEMPLATE = 150  # slot fillings per template for training, each in every wording
VALIDATION_PER_TEMPLATE = 7
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


def vocabulary_texts(per_template: int = 10) -> list[str]:
    """Training prompts (chat-formatted) and the target's answers, for the demo's tokenizers, so
    the schema and Cypher's keywords become pieces. Drawn without the database (no execution)."""
    texts = []
    for template in TEMPLATES:
        for index, filling in enumerate(_fillings(template, held_out=False)[:per_template]):
            wording = template.wordings[index % (len(template.wordings) - 1)]
            prompt = format_prompt(SCHEMA, string.Template(wording).substitute(filling))
            texts += [format_history([Turn("user", prompt)]), answer(template.gold(filling))]
    return texts


# --- registration ---------------------------------------------------------------------------------

@functools.cache
def demo_graph():
    """The process's read-only connection to its own copy of the demo graph."""
    from arch_compare.evaluation import graph_database
    return graph_database.ReadOnlyGraph(demo_graph_path())


def postprocess(output, example=None, is_target=False):
    """Targets -> {query, ordered, result}; predictions -> {query, result}, both run on the
    demo graph (read-only, with a timeout and a row cap) for `cypher.cypher_metrics`."""
    from arch_compare.evaluation import cypher
    if is_target:
        gold = (as_text(example["query"]) if example is not None
                else cypher.extract_query(as_text(output)))
        return {"query": gold, "ordered": cypher.has_order_by(gold),
                "result": demo_graph().run(gold)}
    query = cypher.extract_query(as_text(output))
    return {"query": query, "result": demo_graph().run(query)}


def _record(question: Question, targets: str) -> dict:
    return {"id": question.id, "inputs": format_history([Turn("user", question.prompt)]),
            "targets": targets, "prompt": question.prompt, "query": question.query}


DEMO_TASKS = {
    "demo_cypher_prompts": "English questions about the demo graph with its schema (local "
                           "imitation: the target translates them to Cypher)",
    "demo_cypher": "held-out English-to-Cypher questions (held-out wordings and entities), "
                   "scored by executing the query on the demo graph",
}


def register(replace: bool = False) -> None:
    from arch_compare.evaluation import cypher
    source = f"generated by arch_compare_tasks.text2cypher (seed {SEED})"
    register_task(TaskSpec(
        name="demo_cypher_prompts", kind="prompts", description=DEMO_TASKS["demo_cypher_prompts"],
        source=source, splits={"train": lambda: [
            {key: value for key, value in _record(q, "").items() if key != "query"}
            for q in questions("train")]},
        extra_features=("id", "prompt")), replace=replace)
    register_task(TaskSpec(
        name="demo_cypher", kind="evaluation", description=DEMO_TASKS["demo_cypher"],
        source=source, splits={"validation": lambda: [
            _record(q, answer(q.query)) for q in questions("validation")]},
        metric_fns=(cypher.cypher_metrics,), postprocess_fn=postprocess,
        extra_features=("id", "prompt", "query")), replace=replace)
