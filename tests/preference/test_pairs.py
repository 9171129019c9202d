"""Preference pairs: validation, the common JSONL layout both ways, chat prompts, and bad files
that name the file and line and keep what was read."""

import json

import pytest

from arch_compare.data.conversations import ImitationExample, Turn
from arch_compare.imitation.targets import Prompt
from arch_compare.preference.pairs import (
    PairFileError, PreferencePair, as_prompt, read_pairs, write_pairs)

CHAT = Prompt("chat-1", (Turn("system", "Answer briefly."), Turn("user", "Capital of France?"),
                         Turn("assistant", "Paris."), Turn("user", "And of Italy?")))


def pairs():
    return [PreferencePair("Name a prime.", "7 is prime.", "9 is prime."),
            PreferencePair(CHAT, "Rome.", "Milan.", "judge", {"judge": "gpt", "scores": [1, 2]})]


def test_write_then_read_gives_the_same_pairs_in_the_common_layout(tmp_path):
    path = tmp_path / "pairs.jsonl"
    assert write_pairs(path, pairs()) == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # The layout others read: prompt/chosen/rejected; a one-turn prompt as a string, a
    # history as chat messages; extra keys at the top level.
    assert lines[0]["prompt"] == "Name a prime." and lines[0]["chosen"] == "7 is prime."
    assert lines[1]["prompt"] == CHAT.messages() and lines[1]["judge"] == "gpt"
    assert read_pairs(path) == pairs()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]
    back = read_pairs(path)[1]
    assert back.prompt == CHAT and back.source == "judge" and dict(back.meta) == {
        "judge": "gpt", "scores": [1, 2]}


def test_a_string_prompt_is_one_user_turn_and_reads_as_an_imitation_example_does():
    pair = PreferencePair("  What is 2+2? ", "4", "5")
    assert pair.prompt.turns == (Turn("user", "What is 2+2?"),)
    assert pair.prompt == as_prompt("What is 2+2?")  # a stable id from the text
    example = ImitationExample("x", CHAT.turns, "Rome.", "test")
    assert PreferencePair(CHAT, "Rome.", "Milan.").inputs == example.to_features()["inputs"]


def test_conversational_records_are_read(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
        "id": "p7", "margin": 0.5}) + "\n\n")  # a blank line is skipped
    (pair,) = read_pairs(path)
    assert (pair.prompt.prompt_id, pair.chosen, pair.rejected) == ("p7", "Hello!", "Go away.")
    assert dict(pair.meta) == {"margin": 0.5} and pair.source == "file"


GOOD = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})


@pytest.mark.parametrize("bad, message", [
    ('{"prompt": "p", "chosen": "a"', "not JSON"),
    (json.dumps({"prompt": "p", "chosen": "a"}), "missing key(s) 'rejected'"),
    (json.dumps({"prompt": "p", "chosen": 3, "rejected": "b"}), "'chosen' must be a string"),
    (json.dumps({"prompt": 5, "chosen": "a", "rejected": "b"}), "'prompt' must be a string"),
    (json.dumps({"prompt": "p", "chosen": "a", "rejected": " a "}), "same text"),
    (json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}), "chosen is empty"),
    (json.dumps({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a",
                 "rejected": "b"}), "must end with a user turn"),
    (json.dumps(["p", "a", "b"]), "must be a JSON object"),
])
def test_a_bad_line_names_file_and_line_and_keeps_the_pairs_before_it(tmp_path, bad, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([GOOD, "", GOOD, bad, GOOD]) + "\n")
    with pytest.raises(PairFileError) as caught:
        read_pairs(path)
    error = caught.value
    assert str(error).startswith(f"{path}:4: ") and message in str(error)
    assert "2 pair(s)" in str(error) and error.line == 4
    assert [(p.chosen, p.rejected) for p in error.pairs] == [("a", "b"), ("a", "b")]


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_an_empty_file_is_an_error_naming_it(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    with pytest.raises(PairFileError, match="holds no pairs") as caught:
        read_pairs(path)
    assert str(path) in str(caught.value) and caught.value.pairs == []


def test_validation():
    with pytest.raises(ValueError, match="same text"):
        PreferencePair("p", "same", " same")
    with pytest.raises(ValueError, match="rejected is empty"):
        PreferencePair("p", "a", "  ")
    with pytest.raises(ValueError, match="prompt is empty"):
        PreferencePair(" ", "a", "b")
    with pytest.raises(TypeError, match="string or a Prompt"):
        PreferencePair(["p"], "a", "b")
    with pytest.raises(ValueError, match="meta must not hold"):
        PreferencePair("p", "a", "b", meta={"chosen": "c"})
    pair = PreferencePair("p", "a", "b", meta={"k": 1})
    with pytest.raises(TypeError):
        pair.meta["k"] = 2  # read-only


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, pairs())

    def broken():
        yield pairs()[0]
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        write_pairs(path, broken())
    assert read_pairs(path) == pairs()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]
