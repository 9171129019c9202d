import re

import pytest

from arch_compare_tasks.nq_synthetic import (INSTRUCTION, SEED_POOL_PATH, build_prompts,
                                             format_pair, load_seed_pairs, parse_generated_pair,
                                             parse_generated_pairs)
from arch_compare_tasks.readers import DataFormatError


@pytest.fixture(scope="module")
def pool():
    return load_seed_pairs()


def _shown_pairs(prompt):
    """The (question, answer) pairs a prompt shows, read independently of the parser."""
    return re.findall(r"^Q: (.*)\nA: (.*)$", prompt, flags=re.MULTILINE)


def test_shipped_seed_pool_is_ten_distinct_pairs(pool):
    assert len(pool) == 10
    assert len({question for question, _ in pool}) == 10
    assert all(question and answer for question, answer in pool)


def test_each_prompt_shows_exactly_k_distinct_seed_pairs(pool):
    prompts = build_prompts(pool, num_prompts=50, shots=5, seed=0)
    assert len(prompts) == 50
    for prompt in prompts:
        assert prompt.startswith(INSTRUCTION)
        shown = _shown_pairs(prompt)
        assert len(shown) == 5 and len(set(shown)) == 5
        assert set(shown) <= set(pool)


def test_prompts_are_deterministic_and_depend_on_the_seed(pool):
    assert build_prompts(pool, 20, seed=3) == build_prompts(pool, 20, seed=3)
    assert build_prompts(pool, 20, seed=3) != build_prompts(pool, 20, seed=4)
    # Asking for more prompts extends the list rather than reshuffling it.
    assert build_prompts(pool, 30, seed=3)[:20] == build_prompts(pool, 20, seed=3)


def test_prompts_draw_varied_subsets_from_the_whole_pool(pool):
    prompts = build_prompts(pool, 40, shots=5, seed=0)
    subsets = {frozenset(_shown_pairs(prompt)) for prompt in prompts}
    assert len(subsets) > 20  # 252 possible 5-of-10 subsets; a stuck sampler would repeat
    assert set().union(*subsets) == set(pool)


@pytest.mark.parametrize("kwargs, match", [
    ({"shots": 11}, "between 1 and the pool size 10"),
    ({"shots": 0}, "between 1 and the pool size 10"),
    ({"num_prompts": -1}, "non-negative"),
])
def test_bad_counts_are_refused(pool, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_prompts(pool, **{"num_prompts": 1, **kwargs})


def test_bad_seed_pools_are_refused(pool):
    with pytest.raises(ValueError, match="seed pair 3 repeats the question of seed pair 0"):
        build_prompts(pool[:3] + [(pool[0][0].upper(), "x")], 1, shots=2)
    with pytest.raises(ValueError, match="seed pair 1: answer must fit on one line"):
        build_prompts([("q", "a"), ("q2", "line\nbreak")], 1, shots=1)


def test_seed_pool_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"seeds\.jsonl:2: 'answer' must be a string"):
        load_seed_pairs(path)


def test_parse_round_trips_every_seed_pair(pool):
    for question, answer in pool:
        assert parse_generated_pair(format_pair(question, answer)) == (question, answer)
    assert SEED_POOL_PATH.exists()


@pytest.mark.parametrize("reply, expected", [
    ("Q: who invented the telephone\nA: Alexander Graham Bell\n\nQ: what is 2+2\nA: 4",
     ("who invented the telephone", "Alexander Graham Bell")),
    ("Sure! Here is a new one:\n\nQ: what is the capital of canada\nA: Ottawa\n\nHope it helps.",
     ("what is the capital of canada", "Ottawa")),
    ("**Question:** who discovered penicillin\n\n**Answer:** Alexander Fleming",
     ("who discovered penicillin", "Alexander Fleming")),
    ("Q: how many continents are there A: 7", ("how many continents are there", "7")),
    ("q: who was the first person on the moon\na: Neil Armstrong ", (
        "who was the first person on the moon", "Neil Armstrong")),
])
def test_parse_tolerates_chatter_and_formatting(reply, expected):
    assert parse_generated_pair(reply) == expected


@pytest.mark.parametrize("reply", [
    "",
    "I cannot think of a new question.",
    "Q: who wrote hamlet",  # no answer
    "Q: who wrote hamlet\nWilliam Shakespeare",  # answer without its label
    "Q:\nA: Paris",  # empty question
    "Q: what is the capital of france\nA:   ",  # empty answer
])
def test_unusable_replies_parse_to_none(reply):
    assert parse_generated_pair(reply) is None


def test_unusable_replies_are_counted_not_dropped():
    parsed = parse_generated_pairs(["Q: a\nA: b", "no pair here", "Q: c\nA: d", "A: orphan"])
    assert parsed.pairs == (("a", "b"), ("c", "d"))
    assert parsed.unusable == (1, 3)
    assert parsed.summary() == "2 of 4 replies gave a pair; 2 unusable"
