"""The demo world keeps its promises: what the base sees, what imitation data holds and what the
evaluation asks are separated as documented, and the target and the metric behave."""

import re

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


def test_pretraining_states_every_known_fact_but_asks_none_the_evaluation_asks():
    """The evaluation asks known facts in a form the base never saw for them: pre-training states
    every fact of every known country, and its questions are only about the other facts."""
    text = "\n".join(" ".join(doc) for doc in world_lib.pretraining_documents(WORLD))
    for country in WORLD.group("known"):
        for key, attribute in world_lib.ATTRIBUTES.items():
            assert attribute.sentence.format(country=country.name,
                                             value=country.facts[key]) in text
    # Every question anywhere in the text (a sentence ending in "?", any speaker label dropped)
    # must be a fact question the world knows how to read, so a new wording cannot slip by.
    asked = set()
    for question in re.findall(r"[^.!?\n]*\?", text):
        question = re.sub(r"^\s*\w+:\s*", "", question)
        keys = [key for key, pattern in world_lib._QUESTIONS.items() if pattern.match(question)]
        assert len(keys) == 1, f"pre-training asks {question!r}, not a known fact question"
        asked.add((world_lib._QUESTIONS[keys[0]].match(question).group(1), keys[0]))
    evaluated, local = world_lib._split_known_facts(WORLD)
    assert not asked & {(country.name, key) for country, key in evaluated}
    assert asked == {(country.name, key) for country, key in local}
    for question in world_lib.fact_questions(WORLD, "known"):
        assert question["question"] not in text


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
