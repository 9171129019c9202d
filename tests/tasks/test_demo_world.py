"""The demo world keeps its promises: what the base sees, what imitation data holds and what the
evaluation asks are separated as documented, and the target and the metric behave."""

import pytest

from arch_compare.data.conversations import Turn
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare_tasks import demo_world as world_lib

WORLD = world_lib.build_world()


def _names(group):
    return {country.name for country in WORLD.group(group)}


def _mentioned(texts, names):
    return {name for name in names for text in texts if name in text}


def test_unseen_countries_appear_only_in_the_evaluation():
    unseen = _names("unseen")
    pretraining = [" ".join(doc) for doc in world_lib.pretraining_documents(WORLD)]
    imitation = world_lib.broad_prompts(WORLD, 600) + world_lib.local_prompts(WORLD)
    answers = [world_lib.target_reply(WORLD, p) for p in imitation]
    assert not _mentioned(pretraining + imitation + answers, unseen)
    assert _mentioned([q["question"] for q in world_lib.fact_questions(WORLD, "unseen")],
                      unseen) == unseen


def test_pretraining_describes_the_known_countries_only():
    pretraining = [" ".join(doc) for doc in world_lib.pretraining_documents(WORLD)]
    assert _mentioned(pretraining, _names("known")) == _names("known")
    assert not _mentioned(pretraining, _names("imitation_only"))


def test_imitation_data_never_asks_an_evaluated_fact():
    evaluated = {q["question"] for q in world_lib.fact_questions(WORLD, "known")}
    broad = world_lib.broad_prompts(WORLD, 600)
    assert len(set(broad)) == 600
    assert not evaluated & set(broad)
    assert not evaluated & set(world_lib.local_prompts(WORLD))
    assert len(world_lib.local_prompts(WORLD)) == len(evaluated)  # the other half of the facts


def test_the_target_knows_every_fact_and_lists_multi_part_answers():
    country = WORLD.group("unseen")[0]
    for key, attribute in world_lib.ATTRIBUTES.items():
        reply = world_lib.target_respond((Turn("user", attribute.question.format(
            country=country.name)),))
        assert world_lib.mentioned_values(reply, key) == {country.facts[key]}
        assert reply.startswith(world_lib.OPENING) and reply.endswith(world_lib.SIGN_OFF)
    overview = world_lib.target_reply(WORLD, f"Tell me about {country.name}.")
    assert overview.count("\n- ") == 4
    assert "do not know" in world_lib.target_reply(WORLD, "Tell me about Atlantis.")


def test_fact_accuracy_counts_the_right_value_alone():
    target = {"attribute": "flag", "answer": "red"}
    score = world_lib.fact_accuracy(
        [target] * 4, ["The flag is red.", "red", "It is red or blue.", "I do not know."])
    assert score == {"fact_accuracy": 50.0}
    with pytest.raises(ValueError, match="2 targets but 1"):
        world_lib.fact_accuracy([target] * 2, ["red"])


def test_the_vocabularies_spell_lists_and_fit_the_tiny_models(tmp_path):
    paths = world_lib.write_vocabularies(tmp_path)
    reply = world_lib.target_reply(WORLD, f"Tell me about {WORLD.countries[0].name}.")
    for macro, path in paths.items():
        vocabulary = load_vocabulary("hf_tokenizer" if path.endswith(".json")
                                     else "sentencepiece", path)
        assert vocabulary.decode(vocabulary.encode(reply)) == reply, macro
        limit = 412 if macro == "DEMO_SENTENCEPIECE_T5" else 512  # T5 keeps 100 for sentinels
        assert vocabulary.vocab_size <= limit
