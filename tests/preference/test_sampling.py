"""The student's sampled answers (preference.sampling) against the project's decoding called by
hand, and the pairs and best-of-n examples built from them on the demo Cypher prompts, checked
by executing the queries on the demo graph.

The reference answers are built without the module's pipeline: prompt tokens by hand
(`converters.prompt_tokens` of `format_history` of the prompt), batches of the same size (the
last padded with its own last row) and `decoding.search.generate` with the seed each round and
batch should get. Tiny models with every weight random, as the active-selection tests use.
"""

import pytest

from arch_compare.data.conversations import format_history
from arch_compare.data.converters import prompt_tokens
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare.decoding.search import DecodeConfig, generate
from arch_compare.evaluation import cypher
from arch_compare.imitation.pool_model import PoolModel
from arch_compare.imitation.selection import sample_seed
from arch_compare.imitation.targets import Prompt
from arch_compare.preference import checked, sampling
from arch_compare.preference.build_common import (ALL_FAIL, ALL_PASS, BOTH_BAD_VERDICT,
                                                  DUPLICATE_ANSWER, EMPTY_ANSWER, NO_WINNER,
                                                  TOO_FEW_ANSWERS)
from arch_compare.preference.pairs import read_pairs
from arch_compare_tasks import catalogue  # noqa: F401  (registers the demo tasks)
from arch_compare_tasks import registry
from arch_compare_tasks import text2cypher as t2c
from tests.imitation.test_selection import lively_model
from tests.preference.test_judged import CountingJudge

MODELS = ("gpt2-tiny", "t5-tiny")
TEXTS = ["the cat sat on the mat", "a river runs", "where is the house", "we walked home",
         "bread and cheese", "open the door"]
PROMPTS = [Prompt.from_text(f"sampling/{index}", text) for index, text in enumerate(TEXTS)]
LENGTHS = {"inputs": 48, "targets": 8}
MAX_NEW_TOKENS = 6
BATCH = 4  # 6 prompts: the last batch is padded
TASK = "demo_cypher_prompts"
SETTINGS = dict(feature_lengths=LENGTHS, batch_size=BATCH, max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def vocabulary(sentencepiece_model_path):
    return load_vocabulary("sentencepiece", sentencepiece_model_path)


def answers(name, vocabulary, prompts=PROMPTS, **settings):
    model, params = lively_model(name)
    settings = {**SETTINGS, **settings}
    return sampling.student_answers(model, params, vocabulary, prompts, progress=False,
                                    **settings)


def by_hand(name, vocabulary, texts, config_of) -> list[str]:
    """Each prompt's answer from `generate` on hand-built prompt tokens, batch b decoded with
    `config_of(b)`."""
    model, params = lively_model(name)
    rendered = [format_history(Prompt.from_text("x", text).turns) for text in texts]
    prompts = [prompt_tokens(model.config, vocabulary, inputs) for inputs in rendered]
    assert max(map(len, prompts)) < LENGTHS["inputs"]  # nothing cut: the same input both ways
    out = []
    for number, start in enumerate(range(0, len(prompts), BATCH)):
        chunk = prompts[start:start + BATCH]
        generated = generate(model, params, chunk + chunk[-1:] * (BATCH - len(chunk)),
                             config_of(number))
        out += [vocabulary.decode(row.tolist()) for row in generated.tokens[:len(chunk)]]
    return out


@pytest.mark.parametrize("name", MODELS)
def test_sampled_answers_are_seeded_generate_rounds(name, vocabulary):
    drawn = answers(name, vocabulary, samples=2, temperature=1.0, seed=3)
    assert len(drawn) == len(PROMPTS) and all(len(row) == 2 for row in drawn)
    for sample in range(2):
        expected = by_hand(name, vocabulary, TEXTS, lambda batch, sample=sample: DecodeConfig(
            MAX_NEW_TOKENS, method="sample", temperature=1.0, eos_id=vocabulary.eos_id,
            seed=sample_seed(3, sample, batch)))
        assert [row[sample] for row in drawn] == expected
    # A near-uniform random model at temperature 1: rounds and seeds give other answers.
    assert sum(row[0] != row[1] for row in drawn) >= len(PROMPTS) - 1
    assert answers(name, vocabulary, samples=2, temperature=1.0, seed=3) == drawn
    other = answers(name, vocabulary, samples=2, temperature=1.0, seed=4)
    assert sum(a != b for row, again in zip(drawn, other) for a, b in zip(row, again)) >= \
        len(PROMPTS)


@pytest.mark.parametrize("name", MODELS)
def test_temperature_zero_repeats_the_greedy_answer(name, vocabulary):
    drawn = answers(name, vocabulary, samples=3, temperature=0, seed=9)
    greedy = by_hand(name, vocabulary, TEXTS,
                     lambda _: DecodeConfig(MAX_NEW_TOKENS, eos_id=vocabulary.eos_id))
    assert drawn == [[text] * 3 for text in greedy]
    # A bare string is one user turn, as a pair file's prompt is.
    assert answers(name, vocabulary, prompts=TEXTS, samples=1, temperature=0, seed=0) == [
        [text] for text in greedy]


@pytest.fixture(scope="module")
def cypher_records():
    """Four demo Cypher prompt records (no gold in them) and their gold queries."""
    records = registry.records(TASK, "train")[:4]
    gold = {q.id: q.query for q in t2c.questions("train")}
    return records, [gold[record["id"]] for record in records]


def test_long_prompts_are_cut_as_the_pool_model_cuts_them(vocabulary, cypher_records):
    records, _ = cypher_records
    model, params = lively_model("t5-tiny")
    lengths = {"inputs": 24, "targets": 8}
    tokens = [len(vocabulary.encode(record["inputs"])) for record in records]
    assert min(tokens) > lengths["inputs"]  # every prompt is cut
    drawn = sampling.student_answers(
        model, params, vocabulary, [checked.record_prompt(r) for r in records],
        samples=2, temperature=0, seed=0, feature_lengths=lengths, batch_size=BATCH,
        max_new_tokens=MAX_NEW_TOKENS, progress=False)
    pool = PoolModel(model, params, vocabulary, [r["inputs"] for r in records],
                     feature_lengths=lengths, batch_size=BATCH, max_new_tokens=MAX_NEW_TOKENS,
                     progress=False)
    assert drawn == [[text] * 2 for text in pool.greedy().texts]


def graph_rows(query):
    """kuzu's rows for a query as a sorted list, None when it does not run."""
    result = t2c.demo_graph().run(query)
    return sorted(map(repr, result.rows)) if result.ok else None


def with_gold(gold, monkeypatch):
    """Mix the gold queries into the student's real answers: record 0 gets its gold after the
    samples, record 1 only its samples, record 2 its gold twice first (a duplicate), record 3
    only its gold (all pass)."""
    real = sampling.sampled_answers
    seen = []

    def mixed(*args, **kwargs):
        drawn = real(*args, **kwargs)
        seen.append(drawn)
        return [drawn[0] + [t2c.answer(gold[0])], drawn[1],
                [gold[2], gold[2]] + drawn[2], [t2c.answer(gold[3])]]

    monkeypatch.setattr(sampling, "sampled_answers", mixed)
    return seen


STUDENT = sampling.StudentSampling(samples=3, temperature=1.0, seed=0,
                                   feature_lengths={"inputs": 96, "targets": 16}, batch_size=4,
                                   max_new_tokens=8)


def test_pairs_from_a_tiny_students_samples_follow_the_checker(vocabulary, cypher_records,
                                                               monkeypatch, tmp_path):
    records, gold = cypher_records
    model, params = lively_model("gpt2-tiny")
    check = registry.checker(TASK)
    # The student alone: a random model fails every prompt, so no pair forms; each prompt is
    # counted once and the file is still written.
    pairs, summary = sampling.pairs_for_task(TASK, model, params, vocabulary, STUDENT, limit=4,
                                             path=tmp_path / "alone.jsonl", progress=False)
    alone = sampling.answers_for_task(TASK, model, params, vocabulary, STUDENT, limit=4,
                                      progress=False)
    passing = [[check(record, text) for text in set(map(str.strip, row)) if text]
               for record, row in zip(records, alone.samples)]
    assert not any(map(any, passing))  # the checker's verdicts on the raw samples
    assert pairs == [] and (tmp_path / "alone.jsonl").read_text() == ""
    assert summary.kept + sum(summary.dropped.get(reason, 0) for reason in (
        ALL_FAIL, ALL_PASS, TOO_FEW_ANSWERS)) == 4
    assert summary.candidates == sum(map(len, passing))

    # Gold queries mixed in: pairs form, each a passing answer over a failing one.
    seen = with_gold(gold, monkeypatch)
    path = tmp_path / "pairs.jsonl"
    pairs, summary = sampling.pairs_for_task(TASK, model, params, vocabulary, STUDENT, limit=4,
                                             path=path, pairs_per_prompt=2, progress=False)
    assert seen[0] == [list(row) for row in alone.samples]  # the same seeded samples
    assert [pair.prompt.prompt_id for pair in pairs] == [records[0]["id"], records[2]["id"]]
    for pair in pairs:
        record = records[[r["id"] for r in records].index(pair.prompt.prompt_id)]
        assert pair.inputs == record["inputs"] and pair.source == "execution"
        assert check(record, pair.chosen) and not check(record, pair.rejected)
        # Independently of the checker: kuzu's rows for the chosen query are the gold's, the
        # rejected answer's query does not give them (or does not run).
        gold_rows = graph_rows(gold[records.index(record)])
        assert gold_rows is not None
        assert graph_rows(cypher.extract_query(pair.chosen)) == gold_rows
        assert graph_rows(cypher.extract_query(pair.rejected)) != gold_rows
    assert pairs[1].chosen == gold[2]
    assert read_pairs(path) == pairs
    # The counts add up: every answer is a candidate, empty or a duplicate; every prompt kept a
    # pair or is counted once.
    mixed = [alone.samples[0] + (t2c.answer(gold[0]),), alone.samples[1],
             (gold[2], gold[2]) + alone.samples[2], (t2c.answer(gold[3]),)]
    assert summary.candidates + summary.dropped.get(EMPTY_ANSWER, 0) + summary.dropped.get(
        DUPLICATE_ANSWER, 0) == sum(map(len, mixed))
    assert summary.dropped.get(DUPLICATE_ANSWER, 0) >= 1
    assert summary.dropped[ALL_PASS] == 1
    with_pairs = len({pair.prompt.prompt_id for pair in pairs})
    assert with_pairs + sum(summary.dropped.get(reason, 0) for reason in (
        ALL_FAIL, ALL_PASS, TOO_FEW_ANSWERS)) == 4
    assert summary.prompts == 4 and summary.kept == len(pairs)


def test_best_of_n_keeps_the_first_passing_answer(vocabulary, cypher_records, monkeypatch):
    records, gold = cypher_records
    model, params = lively_model("gpt2-tiny")
    with_gold(gold, monkeypatch)
    examples, summary = sampling.best_of_n_for_task(TASK, model, params, vocabulary, STUDENT,
                                                    limit=4, progress=False)
    assert [(e.example_id, e.target) for e in examples] == [
        (f"{records[0]['id']}:best_of_4", t2c.answer(gold[0]).strip()),
        (f"{records[2]['id']}:best_of_5", gold[2]),
        (f"{records[3]['id']}:best_of_1", t2c.answer(gold[3]).strip())]
    assert all(format_history(e.history) == records[index]["inputs"]
               for e, index in zip(examples, (0, 2, 3)))
    assert summary.kept == 3
    assert summary.dropped.get(ALL_FAIL, 0) + summary.dropped.get(TOO_FEW_ANSWERS, 0) == 1


def prefers_cypher(first, second):
    """A judge that prefers an answer with a MATCH clause: both -> tie, neither -> both bad."""
    verdict = {(True, False): "A", (False, True): "B", (True, True): "tie",
               (False, False): "both bad"}[("MATCH" in first, "MATCH" in second)]
    return f"Reasons.\nVerdict: {verdict}"


def test_the_target_as_judge_of_the_students_samples(vocabulary, cypher_records, monkeypatch,
                                                     tmp_path):
    records, gold = cypher_records
    model, params = lively_model("gpt2-tiny")
    with_gold(gold, monkeypatch)
    judge = CountingJudge(prefers_cypher)
    path, cache = tmp_path / "judged.jsonl", tmp_path / "judge-cache"
    pairs, summary = sampling.judged_pairs_for_task(TASK, judge, model, params, vocabulary,
                                                    STUDENT, limit=4, path=path,
                                                    cache_path=cache, progress=False)
    # Records 0 and 2: the gold over each of the 3 samples; 1: samples only; 3: one answer.
    assert [(p.prompt.prompt_id, p.chosen, p.source) for p in pairs] == [
        (records[0]["id"], t2c.answer(gold[0]).strip(), "judge")] * 3 + [
        (records[2]["id"], gold[2], "judge")] * 3
    assert len({p.rejected for p in pairs}) == 6 and read_pairs(path) == pairs
    comparisons = 6 + 3 + 6  # distinct answers 4, 3, 4 and 1, each two compared once
    assert judge.calls == 2 * comparisons and summary.candidates == comparisons
    assert summary.dropped == {BOTH_BAD_VERDICT: 9, DUPLICATE_ANSWER: 1, TOO_FEW_ANSWERS: 1}
    # Through the collection cache: asking again pays for nothing.
    examples, best = sampling.judged_best_of_n_for_task(TASK, judge, model, params, vocabulary,
                                                        STUDENT, limit=4, cache_path=cache,
                                                        progress=False)
    assert judge.calls == 2 * comparisons
    assert [(e.example_id, e.target) for e in examples] == [
        (f"{records[0]['id']}:best_of_4", t2c.answer(gold[0]).strip()),
        (f"{records[2]['id']}:best_of_5", gold[2])]
    assert best.dropped[NO_WINNER] == 1 and best.dropped[TOO_FEW_ANSWERS] == 1


@pytest.mark.parametrize("settings, message", [
    (dict(samples=0), "samples must be an integer >= 1"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(batch_size=2.5), "batch_size must be an integer >= 1"),
    (dict(feature_lengths={"inputs": 8}), "feature_lengths needs targets"),
])
def test_settings_are_checked_with_their_name(settings, message):
    base = dict(samples=2, temperature=1.0, seed=0, feature_lengths=LENGTHS, batch_size=4,
                max_new_tokens=4)
    with pytest.raises((ValueError, KeyError), match=message):
        sampling.StudentSampling(**{**base, **settings})


def test_a_task_without_a_checker_is_named_before_sampling():
    with pytest.raises(ValueError, match="task 'demo_cypher' has no answer checker"):
        sampling.pairs_for_task("demo_cypher", None, None, None, STUDENT, split="validation")
