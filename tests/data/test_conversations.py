import pytest

from arch_compare.data.conversations import (ImitationExample, Turn, examples_from_dialogue,
                                             format_history)


def test_turn_validates_role_and_text():
    with pytest.raises(ValueError, match="role='narrator'"):
        Turn("narrator", "hi")
    with pytest.raises(ValueError, match="empty"):
        Turn("user", "  \n ")
    with pytest.raises(TypeError, match="string"):
        Turn("user", 3)
    assert Turn("user", "  hi there \n").text == "hi there"


@pytest.mark.parametrize("history, target, match", [
    ((), "ok", "history is empty"),
    ((Turn("user", "q"), Turn("assistant", "a")), "ok", "end with a user turn"),
    ((Turn("system", "be brief"),), "ok", "end with a user turn"),
    ((Turn("user", "q"),), "   ", "target is empty"),
    (("q",), "ok", "history\\[0\\] is a str"),
])
def test_example_validation_names_the_problem_and_id(history, target, match):
    with pytest.raises((ValueError, TypeError), match=match) as err:
        ImitationExample("ex-1", history, target, "test")
    assert "ex-1" in str(err.value)


def test_example_keeps_history_as_a_tuple_and_strips_target():
    example = ImitationExample("ex-1", [Turn("user", "q")], "  answer \n", "test")
    assert example.history == (Turn("user", "q"),)
    assert example.target == "answer"
    hash(example)  # frozen and hashable, so examples can be deduplicated in sets


def test_format_history_labels_turns_and_ends_with_the_assistant_label():
    history = (Turn("system", "Be brief."), Turn("user", "Capital of France?"),
               Turn("assistant", "Paris."), Turn("user", "And of Italy?\nOne word."))
    assert format_history(history) == (
        "System: Be brief.\n\n"
        "User: Capital of France?\n\n"
        "Assistant: Paris.\n\n"
        "User: And of Italy?\nOne word.\n\n"
        "Assistant:")


def test_format_history_needs_a_turn():
    with pytest.raises(ValueError, match="at least one turn"):
        format_history(())


def test_to_features_are_the_same_strings_for_every_consumer():
    example = ImitationExample("sharegpt:a:1", (Turn("user", "Hi"),), "Hello!", "sharegpt")
    assert example.to_features() == {"id": "sharegpt:a:1", "inputs": "User: Hi\n\nAssistant:",
                                     "targets": "Hello!"}


def test_one_example_per_assistant_turn_with_everything_before_it_as_history():
    turns = [Turn("system", "s"), Turn("user", "u1"), Turn("assistant", "a1"),
             Turn("user", "u2"), Turn("user", "u2b"), Turn("assistant", "a2"), Turn("user", "u3")]
    examples = examples_from_dialogue(turns, "src", "dlg")
    assert [e.example_id for e in examples] == ["dlg:2", "dlg:5"]
    assert [e.target for e in examples] == ["a1", "a2"]
    assert examples[0].history == tuple(turns[:2])
    assert examples[1].history == tuple(turns[:5])
    assert {e.source for e in examples} == {"src"}


def test_dialogue_without_assistant_turns_gives_no_examples():
    assert examples_from_dialogue([Turn("user", "anyone?")], "src", "dlg") == []


@pytest.mark.parametrize("turns, match", [
    ([Turn("assistant", "Hi, how can I help?"), Turn("user", "q")], r"turn 0 .* follows nothing"),
    ([Turn("user", "q"), Turn("assistant", "a"), Turn("assistant", "more")],
     r"turn 2 .* follows turn 1 \(assistant\)"),
    ([Turn("system", "s"), Turn("assistant", "a")], r"turn 1 .* follows turn 0 \(system\)"),
])
def test_assistant_turn_must_answer_a_user_turn(turns, match):
    with pytest.raises(ValueError, match=match):
        examples_from_dialogue(turns, "src", "dlg")
