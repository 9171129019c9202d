"""The target's answers in the study's budget: the plan prices each purchase (random exactly, other
strategies at an upper bound) and the total includes them; `record_collection` writes what a
purchase was billed against its estimate; an unknown price row fails when the config is built.
In-process on a tiny study built in Python (the demo world's prompts task)."""

import dataclasses
import json
import math

import pytest

from arch_compare.budget.targets import get_price
from arch_compare.imitation import collection, collection_cost
from arch_compare.imitation import plan as plan_lib
from arch_compare.imitation.config import CollectionSettings, StudyConfig
from arch_compare.imitation.targets import (GenerationSettings, Prompt, Reply, TokenUsage,
                                           cache_key)
from arch_compare.results import ResultsStore
from arch_compare_tasks import registry


def _config(tmp_path, **collection_settings) -> StudyConfig:
    return StudyConfig(
        name="tiny", directory=str(tmp_path / "study"),
        target={"kind": "function", "name": "demo-target",
                "function": "arch_compare_tasks.demo_world:target_respond"},
        models=[{"preset": "gpt2-tiny", "vocabulary": "unused",
                 "pretraining": {"task": "demo_pretraining", "steps": 6}}],
        sources=[{"name": "broad", "prompts_task": "demo_broad_prompts", "amounts": [8, 16],
                  "selection": {"strategies": ["random", "diversity"], "pool": 24}}],
        evaluations=[{"task": "demo_facts_known", "max_examples": 6}],
        training={"feature_lengths": {"inputs": 32, "targets": 64}, "batch_size": 4,
                  "optimizer": {"name": "adamw", "schedule": {"peak_learning_rate": 3e-3}}},
        collection=collection_settings, budget={"hardware": "a100-80gb", "chips": 1})


def _prompt_chars(record) -> int:
    return len(str(record.get("prompt") or record["inputs"]))


@pytest.fixture(scope="module")
def pool():
    return registry.records("demo_broad_prompts", "train")[:24]


def test_the_plan_prices_each_purchase_and_the_total_includes_them(tmp_path, pool):
    config = _config(tmp_path, mode="batch", price="demo-target", expected_answer_tokens=100)
    random_tokens = math.ceil(sum(_prompt_chars(r) for r in pool[:16]) / 4)
    longest_tokens = math.ceil(sum(sorted(map(_prompt_chars, pool))[-16:]) / 4)
    # demo-target: $1 / $4 per million, batch half price; 16 answers x 100 tokens each.
    random_usd = (random_tokens * 1.0 + 1600 * 4.0) / 1e6 * 0.5
    upper_usd = (longest_tokens * 1.0 + 1600 * 4.0) / 1e6 * 0.5
    planned = collection_cost.planned_collections(config)
    assert [(p.label, p.answers, p.prompt_tokens, p.answer_tokens, p.upper_bound)
            for p in planned] == [("broad", 16, random_tokens, 1600, False),
                                  ("broad/diversity/gpt2-tiny", 16, longest_tokens, 1600, True)]
    assert [p.cost.usd for p in planned] == pytest.approx([random_usd, upper_usd])

    runs = plan_lib.plan(config)
    estimates = plan_lib.estimates(config, runs)
    text, total = plan_lib.budget_table(config, estimates, planned)
    compute = sum(e["cost_usd"] for e in estimates.values() if e is not None)
    assert total == pytest.approx(compute + random_usd + upper_usd)
    assert f"{random_tokens:,} prompt +" in text and f"{longest_tokens:,} prompt +" in text
    assert "(upper bound)" in text and "FICTIONAL" in text and "batch at 'demo-target'" in text
    assert "not priced here" not in text
    assert text.splitlines()[-1].endswith(f"in all ${total:,.2f}")

    unpriced = _config(tmp_path)  # no price row: tokens, but no dollars, and the total says so
    text, total_unpriced = plan_lib.budget_table(unpriced, estimates)
    assert total_unpriced == pytest.approx(compute)
    assert "not priced: set collection.price" in text and f"{random_tokens:,} prompt +" in text


def test_an_unknown_price_row_fails_when_the_config_is_built(tmp_path):
    with pytest.raises(ValueError, match="collection.price: unknown target price 'gpt4o-mini'.*"
                                         "did you mean 'gpt-4o-mini'"):
        CollectionSettings(price="gpt4o-mini")
    with pytest.raises(ValueError, match="collection.price"):
        _config(tmp_path, price="nope")


def test_record_collection_writes_billed_against_estimated(tmp_path, pool):
    config = _config(tmp_path, mode="online", price="gpt-4o-mini", expected_answer_tokens=50)
    settings = GenerationSettings()
    cache = tmp_path / "broad.jsonl"
    prompts = [Prompt.from_text(f"p{i}", "x" * 39 + str(i)) for i in range(4)]  # 40 chars
    keys = [cache_key("demo-target", prompt, settings) for prompt in prompts]
    replies = [Reply("a" * 20, usage=TokenUsage(12, 30)),  # counted by the target, online
               Reply("b" * 20, usage=TokenUsage(14, 40)),  # counted, bought in a batch
               Reply("c" * 20),  # no usage: 40 / 4 = 10 prompt, 20 / 4 = 5 answer tokens
               Reply("d" * 20, usage=TokenUsage(99, 99))]  # another purchase's answer
    with cache.open("w") as handle:
        for index, (key, prompt, reply) in enumerate(zip(keys, prompts, replies)):
            extra = {"mode": "batch"} if index == 1 else {}
            handle.write(json.dumps(collection.answer_record(key, prompt, settings,
                                                             "demo-target", reply, 1,
                                                             **extra)) + "\n")
        handle.write('{"key": "cut sho')  # a write a kill cut short: not an answer
    source = config.sources[0]
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.register_study("tiny", {}, tmp_path)
        row = collection_cost.record_collection(store, "tiny", config, source, cache,
                                                keys=keys[:3])
        assert store.collections("tiny") == [row]
    price = get_price("gpt-4o-mini")  # $0.15 / $0.60 per million; batch half price
    online = (12 + 10) * 0.15 + (30 + 5) * 0.60
    batch = (14 * 0.15 + 40 * 0.60) * 0.5
    assert (row.answers, row.prompt_tokens, row.completion_tokens) == (3, 36, 75)
    assert row.tokens_estimated and row.mode == "online" and row.price == price.name
    assert row.spent_usd == pytest.approx((online + batch) / 1e6)
    planned = collection_cost.planned_collections(config)[0]
    assert (row.estimated_answers, row.estimated_prompt_tokens,
            row.estimated_completion_tokens) == (16, planned.prompt_tokens, 800)
    assert row.estimated_usd == pytest.approx(planned.cost.usd)
    assert not row.fictional_price

    with ResultsStore(tmp_path / "results.sqlite") as store:
        chosen = collection_cost.record_collection(store, "tiny", config, source, cache,
                                                   selection="diversity", model="gpt2-tiny",
                                                   keys=[keys[3]])
        assert (chosen.prompt_tokens, chosen.completion_tokens) == (99, 99)
        assert not chosen.tokens_estimated and chosen.estimated_answers == 16
        with pytest.raises(ValueError, match="buys no answers of 'broad' for selection "
                                             "'uncertainty'"):
            collection_cost.record_collection(store, "tiny", config, source, cache,
                                              selection="uncertainty", model="gpt2-tiny")
        assert len(store.collections("tiny")) == 2
    unpriced = dataclasses.replace(config, collection=CollectionSettings())
    with ResultsStore(tmp_path / "results.sqlite") as store:
        row = collection_cost.record_collection(store, "tiny", unpriced, source, cache)
        assert row.spent_usd is None and row.estimated_usd is None and row.answers == 4
