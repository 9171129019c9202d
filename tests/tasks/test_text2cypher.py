"""The text2cypher task family keeps its promises: gold queries run and answer something, the
splits share no wording and no entity, the translator knows the grammar, the metric scores gold
as right and garbage as wrong without touching the graph, and every prompt fits the demo."""

import re

import pytest
import seqio

from arch_compare.data.converters import feature_converter_for
from arch_compare.data.conversations import Turn
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare.evaluation import cypher, graph_database
from arch_compare.models import get_preset
from arch_compare_tasks import catalogue  # noqa: F401  (registers the tasks)
from arch_compare_tasks import demo_world, registry
from arch_compare_tasks import text2cypher as t2c
from arch_compare_tasks.text2cypher_graph import build_graph, demo_graph_path

TRAIN = t2c.questions("train")
VALIDATION = t2c.questions("validation")


def _wording_index(question: str) -> tuple[str, int]:
    """(template, wording index) of the one wording whose pattern reads `question`."""
    hits = [(template.name, index) for template in t2c.TEMPLATES
            for index, wording in enumerate(template.wordings)
            if t2c.wording_pattern(wording).match(question)]
    assert len(hits) == 1, (question, hits)
    return hits[0]


def test_every_gold_query_runs_and_returns_rows_on_the_real_database():
    with graph_database.ReadOnlyGraph(demo_graph_path()) as graph:
        for question in VALIDATION + TRAIN:
            result = graph.run(question.query)
            assert result.ok and result.rows, (question.question, question.query, result.error)
    assert 120 <= len(VALIDATION) <= 160 and len(TRAIN) >= 2000
    assert {q.level for q in VALIDATION} == set(t2c.LEVELS)
    assert {q.template for q in VALIDATION} == set(t2c.TEMPLATES_BY_NAME)
    assert len({q.question for q in TRAIN}) == len(TRAIN)  # distinct


def test_the_first_training_questions_mix_every_template_and_level():
    assert {q.template for q in TRAIN[:128]} == set(t2c.TEMPLATES_BY_NAME)
    assert {q.level for q in TRAIN[:128]} == set(t2c.LEVELS)


def test_validation_uses_held_out_wordings_and_entities_only():
    for question in VALIDATION:
        template, index = _wording_index(question.question)
        assert index == len(t2c.TEMPLATES_BY_NAME[template].wordings) - 1
    for question in TRAIN:
        template, index = _wording_index(question.question)
        assert index < len(t2c.TEMPLATES_BY_NAME[template].wordings) - 1
    # Entities, read from the text itself (not from the generator's bookkeeping).
    graph = build_graph()
    names = [c.name for c in graph.countries] + [name for name, _ in graph.blocs]
    countries, blocs = t2c.held_out_entities()

    def mentioned(text):
        return {name for name in names if re.search(rf"\b{re.escape(name)}\b", text)}

    train_mentions = set().union(*(mentioned(q.question + " " + q.query) for q in TRAIN))
    validation_mentions = set().union(*(mentioned(q.question) for q in VALIDATION))
    assert not train_mentions & (countries | blocs)
    assert validation_mentions <= countries | blocs
    assert validation_mentions & countries and validation_mentions & blocs


def test_the_entities_split_asks_held_out_entities_in_training_wordings_only():
    entities = t2c.questions("entities")
    asked = {q.question for q in TRAIN}
    graph = build_graph()
    names = [c.name for c in graph.countries] + [name for name, _ in graph.blocs]
    countries, blocs = t2c.held_out_entities()
    assert len(entities) >= 80
    for question in entities:
        template, index = _wording_index(question.question)
        assert index < len(t2c.TEMPLATES_BY_NAME[template].wordings) - 1  # a training wording
        assert question.question not in asked
        mentioned = {name for name in names
                     if re.search(rf"\b{re.escape(name)}\b", question.question)}
        assert mentioned and mentioned <= countries | blocs
        assert t2c.translate(question.question) == question.query


def test_the_translator_reads_every_wording_into_the_gold_query():
    for question in VALIDATION + TRAIN:
        assert t2c.translate(question.question) == question.query, question.question
    assert t2c.translate("What is the capital of Vitava?") is None
    prompt = VALIDATION[0].prompt
    assert t2c.target_respond([Turn("user", prompt)]) == (
        f"```cypher\n{VALIDATION[0].query}\n```")
    # Anything else is the demo world's target's business.
    assert t2c.target_respond([Turn("user", "Tell me about Vitava.")]) == \
        demo_world.target_respond([Turn("user", "Tell me about Vitava.")])


def _score(rows, outputs):
    targets = [t2c.postprocess(row["targets"], example=row, is_target=True) for row in rows]
    predictions = [t2c.postprocess(output) for output in outputs]
    return cypher.cypher_metrics(targets, predictions)


def test_gold_answers_score_100_and_garbage_0_leaving_the_graph_unchanged():
    rows = registry.records("demo_cypher", "validation")
    assert len(rows) == len(VALIDATION)
    assert rows[0]["targets"] == t2c.answer(rows[0]["query"])
    before = graph_database.fingerprint(demo_graph_path())
    gold = _score(rows, [row["targets"] for row in rows])
    assert gold == {"execution_accuracy": 100.0, "executable": 100.0, "exact_match": 100.0}
    garbage = ["MATCH (n) DETACH DELETE n", "I do not know.", "```cypher\nMATCH (c:Country) "
               "SET c.population = 0 RETURN c.name\n```", "MATCH (c:Country) RETURN c.nme"]
    outputs = [garbage[i % len(garbage)] for i in range(len(rows))]
    scores = _score(rows, outputs)
    assert scores["execution_accuracy"] == 0.0 and scores["exact_match"] == 0.0
    assert graph_database.fingerprint(demo_graph_path()) == before


def test_prompt_records_carry_the_schema_and_no_answer():
    rows = registry.records("demo_cypher_prompts", "train")
    assert len(rows) == len(TRAIN)
    assert all(row["targets"] == "" and t2c.SCHEMA in row["inputs"] for row in rows[:50])
    assert rows[0]["prompt"] == TRAIN[0].prompt


@pytest.fixture(scope="module")
def vocabularies(tmp_path_factory):
    paths = demo_world.write_vocabularies(tmp_path_factory.mktemp("vocabularies"))
    return {macro: load_vocabulary("hf_tokenizer" if path.endswith(".json") else "sentencepiece",
                                   path) for macro, path in paths.items()}


def test_every_prompt_and_answer_fits_the_demo_models_64_tokens(vocabularies):
    rows = [row for split, name in (("train", "demo_cypher_prompts"), ("validation", "demo_cypher"))
            for row in registry.records(name, split)]
    for macro, vocabulary in vocabularies.items():
        # +1: seqio appends EOS to inputs and targets.
        longest_input = max(len(vocabulary.encode(row["inputs"])) + 1 for row in rows)
        longest_answer = max(len(vocabulary.encode(t2c.answer(q.query))) + 1
                             for q in TRAIN + VALIDATION)
        assert longest_input <= 64 and longest_answer <= 64, (macro, longest_input,
                                                              longest_answer)
        for text in [row["inputs"] for row in rows] + [t2c.answer(q.query) for q in VALIDATION]:
            assert vocabulary.decode(vocabulary.encode(text)) == text, (macro, text)


def test_seqio_evaluator_scores_gold_and_garbage_through_the_tokenizer(vocabularies):
    """The whole seqio path: tokenized targets decoded, post-processed, executed, compared."""
    vocabulary = vocabularies["DEMO_SENTENCEPIECE_T5"]
    task = registry.seqio_task("demo_cypher", vocabulary)
    evaluator = seqio.Evaluator(task.name, feature_converter_for(get_preset("t5-tiny"), vocabulary),
                                eval_split="validation", use_memory_cache=False)
    name = evaluator.eval_tasks[0].name

    def padded(pairs, length=64):
        return [(i, list(tokens)[:length] + [0] * (length - len(tokens[:length])))
                for i, tokens in pairs]

    def gold(dataset):
        return padded((i, example["decoder_target_tokens"]) for i, example in dataset)

    def garbage(dataset):
        return padded((i, vocabulary.encode("MATCH (n) DETACH DELETE n")) for i, _ in dataset)

    metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=gold)
    assert metrics.result()[name]["execution_accuracy"] == 100.0
    metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=garbage)
    assert metrics.result()[name]["execution_accuracy"] == 0.0
