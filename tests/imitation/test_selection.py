"""Active selection (`imitation/selection.py`): each strategy's buying order against an
independent computation.

The references build model input by hand (`converters.prompt_tokens`, the teacher-forced
sequence laid out per architecture) and compute entropies in numpy from `model.logits`, so the
selection's seqio pipeline, batching (a padded last batch) and position bookkeeping are all
checked. Tiny models with every weight random (a freshly initialised one is near-uniform).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from arch_compare.data.converters import prompt_tokens
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare.decoding.search import DecodeConfig, generate
from arch_compare.imitation import pool_model, selection
from arch_compare.imitation.config import Selection
from arch_compare.models import PRESETS, build_model
from arch_compare_tasks import catalogue, registry  # noqa: F401 (catalogue registers the demo tasks)

MODELS = ("gpt2-tiny", "t5-tiny")
# Short enough that every prompt fits one decoding width (16 tokens): one compiled search.
TEXTS = ["the cat sat on the mat", "a river runs", "where is the house", "we walked home",
         "bread and cheese", "the sun is warm", "she reads a book", "open the door",
         "birds sing", "how far is it"]
RECORDS = tuple({"id": f"pool/{index}", "inputs": text, "prompt": text, "targets": ""}
                for index, text in enumerate(TEXTS))
LENGTHS = {"inputs": 32, "targets": 8}
MAX_NEW_TOKENS = 6
BATCH = 4  # 10 prompts: the last batch is padded
FAKE_TASK = "selection_test_prompts"


@pytest.fixture(scope="module")
def vocabulary(sentencepiece_model_path):
    return load_vocabulary("sentencepiece", sentencepiece_model_path)


@functools.cache
def lively_model(name: str):
    """`name` with every weight drawn at random (norm scales near 1)."""
    model = build_model(PRESETS[name])
    rng = np.random.default_rng(0)
    shapes = traverse_util.flatten_dict(model.abstract_params(), sep="/")
    drawn = {path: jnp.asarray((1.0 if path.endswith("norm/scale") else 0.0)
                               + 0.2 * rng.standard_normal(shape.shape), shape.dtype)
             for path, shape in sorted(shapes.items())}
    return model, traverse_util.unflatten_dict(drawn, sep="/")


def rank(strategy, name, vocabulary, count=len(RECORDS), records=RECORDS, task=FAKE_TASK,
         reuse=None, bought=(), **settings):
    model, params = lively_model(name) if name else (None, None)
    return selection.rank_pool(
        strategy, records, count=count, model=model, params=params, vocabulary=vocabulary,
        selection=Selection(**settings), prompts_task=task, feature_lengths=LENGTHS,
        batch_size=BATCH, max_new_tokens=MAX_NEW_TOKENS, progress=False, reuse=reuse,
        bought=bought)


def hand_batch(config, prompts, answers=None) -> tuple[dict, np.ndarray]:
    """One right-padded batch laid out by hand (no seqio): decoder-only reads prompt + answer,
    encoder-decoder encodes the prompt and reads start + answer. Also returns, per row, the
    first position whose next-token distribution predicts the answer's first token."""
    answers = answers or [[] for _ in prompts]
    if config.is_encoder_decoder:
        inputs = right_padded(prompts, config.pad_id)
        decoder = right_padded([[config.decoder_start_id, *a] for a in answers], config.pad_id)
        return ({"encoder_input_tokens": inputs, "decoder_input_tokens": decoder},
                np.zeros(len(prompts), int))
    tokens = right_padded([p + a for p, a in zip(prompts, answers)], 0)
    prefix = right_padded([[1] * len(p) for p in prompts], 0, tokens.shape[1])
    return ({"decoder_input_tokens": tokens, "decoder_causal_attention": prefix},
            np.array([len(p) - 1 for p in prompts]))


def right_padded(rows, fill, width=None) -> np.ndarray:
    out = np.full((len(rows), width or max(map(len, rows))), fill, np.int32)
    for index, row in enumerate(rows):
        out[index, :len(row)] = row
    return out


REFERENCES = {}


def reference(name: str, vocabulary) -> list[tuple[str, float]]:
    """(greedy answer text, mean token entropy in numpy) per record."""
    if name in REFERENCES:
        return REFERENCES[name]
    model, params = lively_model(name)
    prompts = [prompt_tokens(model.config, vocabulary, r["inputs"]) for r in RECORDS]
    assert max(map(len, prompts)) <= 16  # one width; nothing truncated: the same input both ways
    # In the selection's batches (the last padded with its own last row), so the compiled
    # search is shared: the test's time is compiling, not running.
    config = DecodeConfig(MAX_NEW_TOKENS, eos_id=vocabulary.eos_id)
    chunks = [prompts[start:start + BATCH] for start in range(0, len(prompts), BATCH)]
    outs = [generate(model, params, chunk + chunk[-1:] * (BATCH - len(chunk)), config)
            for chunk in chunks]
    tokens = np.concatenate([out.tokens for out in outs])[:len(prompts)]
    lengths = np.concatenate([out.lengths for out in outs])[:len(prompts)]
    answers = [tokens[row, :lengths[row]].tolist() for row in range(len(prompts))]
    batch, first = hand_batch(model.config, prompts, answers)  # EOS included when it ended
    logits = np.asarray(jax.jit(model.logits)(params, batch), np.float64)  # [b, l, v]
    results = []
    for row, answer in enumerate(answers):
        predicting = logits[row, first[row] + np.arange(len(answer))]  # [a, v]
        probs = np.exp(predicting - predicting.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        entropy = -np.sum(probs * np.log(probs), axis=-1).mean()
        results.append((vocabulary.decode(tokens[row].tolist()), float(entropy)))
    REFERENCES[name] = results
    return results


@pytest.fixture(scope="module")
def fake_task():
    """A prompts task whose checker passes every third record and logs what it was shown."""
    seen = []

    def check(record, answer):
        seen.append((record["id"], answer))
        return int(record["id"].split("/")[1]) % 3 == 0

    registry.register_task(registry.TaskSpec(
        name=FAKE_TASK, kind="prompts", description="selection tests", source="test",
        splits={"train": lambda: list(RECORDS)}, extra_features=("id", "prompt"),
        check_fn=check), replace=True)
    yield seen
    registry.TASKS.pop(FAKE_TASK, None)


def test_random_is_the_pool_order():
    result = rank("random", None, None, count=7)  # no model needed
    assert result.order == tuple(range(7))
    assert result.chosen(3) == (0, 1, 2)
    assert "first 7 of 10" in result.description
    with pytest.raises(ValueError, match="between 1 and the pool's 10 prompts, got 11"):
        rank("random", None, None, count=11)
    with pytest.raises(ValueError, match="unknown selection strategy 'loudest'"):
        rank("loudest", None, None)


def naive_k_center(points: np.ndarray, count: int, initial=()) -> list[int]:
    """The definition, recomputed from scratch at every step."""
    mean = points.mean(axis=0)
    order = list(initial) or [
        min(range(len(points)), key=lambda i: (np.linalg.norm(points[i] - mean), i))]
    while len(order) < count:
        def gap(i):
            return min(np.linalg.norm(points[i] - points[j]) for j in order)
        rest = [i for i in range(len(points)) if i not in order]
        order.append(max(rest, key=lambda i: (gap(i), -i)))  # ties: the lower index
    return order


def test_k_center_greedy_matches_the_definition_and_nests():
    rng = np.random.default_rng(3)
    points = rng.standard_normal((60, 5))
    points[40:50] = points[:10]  # exact duplicates: ties broken by pool order
    order, distances = selection.k_center_greedy(points, 60)
    assert order.tolist() == naive_k_center(points, 60)
    assert sorted(order.tolist()) == list(range(60))
    for k in (1, 7, 33):
        assert selection.k_center_greedy(points, k)[0].tolist() == order[:k].tolist()
    # Distances at choice time never grow (each choice is the farthest left), then duplicates
    # come last at distance zero.
    chosen = distances[order[1:]]
    assert np.all(np.diff(chosen) <= 1e-12) and np.all(chosen[-10:] == 0)


def test_k_center_greedy_continues_from_points_already_chosen():
    """A later round keeps what was bought and counts it as centres already chosen."""
    rng = np.random.default_rng(4)
    points = rng.standard_normal((40, 3))
    initial = [5, 17, 30]
    order, _ = selection.k_center_greedy(points, 20, initial=initial)
    assert order.tolist() == naive_k_center(points, 20, initial)
    full, _ = selection.k_center_greedy(points, 20)
    assert selection.k_center_greedy(points, 20, initial=full[:6])[0].tolist() == full.tolist()


def test_a_later_round_keeps_what_was_bought():
    later = rank("random", None, None, count=7, bought=(9, 4))
    assert later.order == (9, 4, 0, 1, 2, 3, 5)
    with pytest.raises(ValueError, match="at most 7 distinct pool indices"):
        rank("random", None, None, count=7, bought=(1, 1))


@pytest.mark.parametrize("name", MODELS)
def test_diversity_orders_the_pooled_states(name, vocabulary, fake_task):
    model, params = lively_model(name)
    prompts = [prompt_tokens(model.config, vocabulary, r["inputs"]) for r in RECORDS]
    states = np.asarray(jax.jit(model.pooled_states)(params, hand_batch(model.config,
                                                                        prompts)[0]))
    expected, _ = selection.k_center_greedy(states, 6)
    result = rank("diversity", name, vocabulary, count=6)
    assert result.order == tuple(expected.tolist())
    assert len(result.scores) == len(RECORDS)


@pytest.mark.parametrize("name", MODELS)
def test_entropy_scores_match_numpy_and_rank_highest_first(name, vocabulary, fake_task):
    result = rank("uncertainty", name, vocabulary, count=5)
    expected = np.array([entropy for _, entropy in reference(name, vocabulary)])
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4)
    assert np.ptp(expected) > 1e-3  # distinct scores: the order below means something
    assert result.order == tuple(np.argsort(-expected, kind="stable")[:5].tolist())


def test_student_first_buys_the_failures_first(vocabulary, fake_task):
    fake_task.clear()
    result = rank("student_first", "gpt2-tiny", vocabulary, count=8)
    failed = [i for i in range(len(RECORDS)) if i % 3]
    passed = [i for i in range(len(RECORDS)) if i % 3 == 0]
    assert result.order == tuple((failed + passed)[:8])
    assert result.scores == tuple(float(i % 3 != 0) for i in range(len(RECORDS)))
    assert "failed 6 of 10" in result.description
    # The checker saw every record with the base model's greedy answer.
    texts = [text for text, _ in reference("gpt2-tiny", vocabulary)]
    assert fake_task == [(record["id"], text) for record, text in zip(RECORDS, texts)]


def test_strategies_given_one_reuse_dict_decode_the_pool_once(vocabulary, fake_task,
                                                              monkeypatch):
    calls = []
    answers = pool_model.PoolModel.answers
    monkeypatch.setattr(pool_model.PoolModel, "answers",
                        lambda self, *args: calls.append(args[1]) or answers(self, *args))
    reuse = {}
    entropy = rank("uncertainty", "gpt2-tiny", vocabulary, count=3, reuse=reuse)
    failures = rank("student_first", "gpt2-tiny", vocabulary, count=3, reuse=reuse)
    assert calls == ["greedy answers"]
    assert len(entropy.scores) == len(failures.scores) == len(RECORDS)
    rank("student_first", "gpt2-tiny", vocabulary, count=3)  # no reuse: decodes again
    assert calls == ["greedy answers"] * 2


def test_a_task_without_a_checker_is_named():
    message = "strategy 'student_first': task 'demo_cypher' has no answer checker"
    with pytest.raises(ValueError, match=message):
        rank("student_first", None, None, task="demo_cypher")  # before any model work
    with pytest.raises(ValueError, match=message):  # the same check, for a study's plan
        selection.check_strategies(("random", "diversity", "student_first"), "demo_cypher")
    selection.check_strategies(tuple(selection.STRATEGIES), "demo_cypher_prompts")


def test_disagreement_ranks_by_sampled_answers(vocabulary, fake_task):
    assert selection.disagreement(["a", "a", "a"]) == 0.0
    assert selection.disagreement(["a", "b", "c"]) == 1.0
    assert selection.disagreement(["a", "a", "b", "b"]) == pytest.approx(1 - 2 / 6)
    assert selection.normalised("  MATCH (n)\n RETURN  n ") == "MATCH (n) RETURN n"
    first = rank("uncertainty", "gpt2-tiny", vocabulary, count=BATCH, records=RECORDS[:BATCH],
                 measure="disagreement", samples=2, seed=5)
    scores = np.array(first.scores)
    assert set(scores) <= {0.0, 1.0}
    assert np.all(np.diff(scores[list(first.order)]) <= 0)  # highest disagreement first
    again = rank("uncertainty", "gpt2-tiny", vocabulary, count=BATCH, records=RECORDS[:BATCH],
                 measure="disagreement", samples=2, seed=5)
    assert again.order == first.order and again.scores == first.scores  # seeded


def test_the_cypher_checker_executes_against_the_gold_query():
    from arch_compare_tasks.text2cypher import answer, questions
    records = registry.records("demo_cypher_prompts", "train")[:3]
    golds = [question.query for question in questions("train")[:3]]
    assert all("query" not in record for record in records)  # looked up by id
    check = registry.checker("demo_cypher_prompts")
    assert [check(record, answer(gold)) for record, gold in zip(records, golds)] == [True] * 3
    assert not check(records[0], answer(golds[1]))  # another question's query
    assert not check(records[0], "MATCH (c:Country RETURN")  # does not run
    # Execution, not spelling: the gold query respelled (keyword case, layout, a ';') counts.
    respelled = golds[0].replace(" RETURN ", "\n  return ")
    assert respelled != golds[0]
    assert check(records[0], f"Here it is:\n```cypher\n{respelled};\n```")
