"""English-to-Cypher over the demo graph: the questions, their splits and the tasks.

The grammar (templates, wordings, the translator target) is `text2cypher_grammar`, re-exported
here; the graph is `text2cypher_graph`.

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
"""

from __future__ import annotations

import dataclasses
import functools
import random
import string
from typing import Sequence

from arch_compare.data.conversations import Turn, format_history
from arch_compare_tasks import demo_world
from arch_compare_tasks.registry import TaskSpec, as_text, register_task
from arch_compare_tasks.text2cypher_graph import (FACTS, SCHEMA, SEED, build_graph,
                                                  demo_graph_path)
from arch_compare_tasks.text2cypher_grammar import (  # noqa: F401  (re-exported)
    AGGREGATES, ENTITY_SLOTS, LEVELS, NO_TRANSLATION, PROMPT_PATTERN, PROPERTIES, RANKS,
    TEMPLATES, TEMPLATES_BY_NAME, Template, answer, format_prompt, target_respond, translate,
    wording_pattern)

HELD_OUT_COUNTRIES = 12
HELD_OUT_BLOCS = 2
TRAIN_SLOTS_PER_TEMPLATE = 150  # slot fillings per template for training, each in every wording
VALIDATION_PER_TEMPLATE = 7
# split -> its seed offset. `validation`: held-out wordings and entities (the test set);
# `entities`: held-out entities in the wordings training used (questions training asked, which
# templates without entities can repeat, are dropped): it tells a model that cannot read a new
# wording from one that cannot translate at all.
SPLITS = {"train": 3, "validation": 2, "entities": 4}


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
    graph = demo_graph()
    return {query: graph.run(query) for query in dict.fromkeys(queries)}


def _question(template: Template, wording: str, filling: dict, index: int, split: str) -> Question:
    entities = tuple(filling[slot] for slot in ENTITY_SLOTS if slot in filling)
    return Question(f"text2cypher/{split}/{template.name}/{index}", template.name, template.level,
                    string.Template(wording).substitute(filling), template.gold(filling),
                    entities)


@functools.cache
def questions(split: str) -> tuple[Question, ...]:
    """The `train` or `validation` questions (see the module docstring for the split rule)."""
    if split not in SPLITS:
        raise KeyError(f"text2cypher has splits {', '.join(SPLITS)}, not {split!r}")
    held_out = split != "train"
    rng = random.Random(SEED + SPLITS[split])
    asked = {q.question for q in questions("train")} if split == "entities" else set()
    drawn: list[list[tuple[Template, str, dict]]] = []
    for template in TEMPLATES:
        fillings = _fillings(template, held_out)
        rng.shuffle(fillings)
        limit = 4 * VALIDATION_PER_TEMPLATE if held_out else TRAIN_SLOTS_PER_TEMPLATE
        if split == "entities":  # one training wording per filling, drawn
            drawn.append([(template, rng.choice(template.wordings[:-1]), filling)
                          for filling in fillings[:limit]])
            continue
        wordings = template.wordings[-1:] if held_out else template.wordings[:-1]
        drawn.append([(template, wording, filling) for filling in fillings[:limit]
                      for wording in wordings])
    results = _gold_results([t.gold(f) for group in drawn for t, _, f in group])
    kept = []
    for group in drawn:
        group = [item for item in group if _informative(results[item[0].gold(item[2])])
                 and string.Template(item[1]).substitute(item[2]) not in asked]
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
    # Every digit, for numbers the drawn questions happen to miss (the SentencePiece models have
    # no byte fallback: an unseen character would decode as unknown).
    return texts + [" ".join(map(str, range(10)))]


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


@functools.cache
def _questions_by_id(split: str) -> dict[str, Question]:
    return {question.id: question for question in questions(split)}


@functools.lru_cache(maxsize=4096)
def _gold_result(query: str):
    return demo_graph().run(query)


def check_answer(record, answer_text: str) -> bool:
    """Whether an answer to a `demo_cypher*` record is correct: its query (`extract_query`)
    executes on the demo graph to the gold query's result (`cypher.results_match`: rows as
    multisets, column order free, row order only under ORDER BY). The gold query is the
    record's `query`, else the question's, looked up by the record's id (the prompts task keeps
    it out of its records, so it never reaches the target)."""
    from arch_compare.evaluation import cypher
    record_id = as_text(record["id"])
    if "query" in record:
        gold = as_text(record["query"])
    else:
        split = record_id.split("/")[1] if record_id.count("/") >= 3 else None
        question = _questions_by_id(split).get(record_id) if split in SPLITS else None
        if question is None:
            raise KeyError(f"check_answer: {record_id!r} is not a text2cypher question id "
                           f"(text2cypher/<split>/<template>/<index>) and the record has no "
                           f"query")
        gold = question.query
    predicted = demo_graph().run(cypher.extract_query(as_text(answer_text)))
    return cypher.results_match(_gold_result(gold), predicted, ordered=cypher.has_order_by(gold))


def _record(question: Question, targets: str) -> dict:
    return {"id": question.id, "inputs": format_history([Turn("user", question.prompt)]),
            "targets": targets, "prompt": question.prompt, "query": question.query}


DEMO_TASKS = {
    "demo_cypher_prompts": "English questions about the demo graph with its schema (local "
                           "imitation: the target translates them to Cypher)",
    "demo_cypher": "held-out English-to-Cypher questions (held-out wordings and entities), "
                   "scored by executing the query on the demo graph",
    "demo_cypher_entities": "English-to-Cypher questions about held-out entities in wordings "
                            "the imitation data used, scored by execution",
}


def register(replace: bool = False) -> None:
    from arch_compare.evaluation import cypher
    source = f"generated by arch_compare_tasks.text2cypher (seed {SEED})"
    register_task(TaskSpec(
        name="demo_cypher_prompts", kind="prompts", description=DEMO_TASKS["demo_cypher_prompts"],
        source=source, splits={"train": lambda: [
            {key: value for key, value in _record(q, "").items() if key != "query"}
            for q in questions("train")]},
        extra_features=("id", "prompt"), check_fn=check_answer), replace=replace)
    for name, split in (("demo_cypher", "validation"), ("demo_cypher_entities", "entities")):
        register_task(TaskSpec(
            name=name, kind="evaluation", description=DEMO_TASKS[name], source=source,
            splits={"validation": (lambda split=split: [
                _record(q, answer(q.query)) for q in questions(split)])},
            metric_fns=(cypher.cypher_metrics,), postprocess_fn=postprocess,
            extra_features=("id", "prompt", "query")), replace=replace)
