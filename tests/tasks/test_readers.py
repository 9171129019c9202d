import json

import pytest

from arch_compare.data.conversations import ImitationExample, Turn
from arch_compare_tasks.readers import (FIXTURES_DIR, READERS, DataFormatError, first_n,
                                        read_examples)

SYSTEM = Turn("system", "You are a helpful assistant who answers briefly.")
EGG = Turn("user", "How do I boil an egg?")
EGG_ANSWER = "Place the egg in boiling water for 7 to 9 minutes, then cool it in cold water."


def _read_fixture(format, name):
    return read_examples(FIXTURES_DIR / name, format)


def test_sharegpt_fixture_gives_one_example_per_assistant_turn():
    result = _read_fixture("sharegpt", "sharegpt.json")
    assert result.records == 3 and result.skipped == ()
    assert result.examples == (
        ImitationExample("sharegpt:sg-001:2", (SYSTEM, EGG), EGG_ANSWER, "sharegpt"),
        ImitationExample("sharegpt:sg-001:4",
                         (SYSTEM, EGG, Turn("assistant", EGG_ANSWER),
                          Turn("user", "And for a soft yolk?")),
                         "Boil it for about 6 minutes instead.", "sharegpt"),
        ImitationExample("sharegpt:sg-002:1",
                         (Turn("user", "Translate 'good morning' into Spanish."),),
                         '"Good morning" in Spanish is "buenos días".', "sharegpt"),
        # Bing's words are kept but marked: they are not the target model's.
        ImitationExample("sharegpt:sg-003:1", (Turn("user", "Write a haiku about rain."),),
                         "Soft rain on the roof\nwhispers to the sleeping town\n"
                         "puddles hold the sky",
                         "sharegpt/bing"),
    )


def test_sharegpt_features_render_the_whole_history():
    second = _read_fixture("sharegpt", "sharegpt.json").examples[1].to_features()
    assert second["inputs"] == (
        "System: You are a helpful assistant who answers briefly.\n\n"
        "User: How do I boil an egg?\n\n"
        f"Assistant: {EGG_ANSWER}\n\n"
        "User: And for a soft yolk?\n\n"
        "Assistant:")
    assert second["targets"] == "Boil it for about 6 minutes instead."


def test_hc3_targets_are_chatgpt_answers_only():
    result = _read_fixture("hc3", "hc3.jsonl")
    sky = Turn("user", "Why is the sky blue?")
    bank = Turn("user", "What does a central bank do?")
    assert result.examples == (
        ImitationExample("hc3:open_qa/7:0", (sky,),
                         "The sky looks blue because air molecules scatter short blue wavelengths "
                         "of sunlight more than longer red ones; this is called Rayleigh "
                         "scattering.", "hc3/open_qa"),
        # No id in the record: its key is the line it sits on.
        ImitationExample("hc3:line2:0", (bank,),
                         "A central bank manages a country's currency and money supply, sets "
                         "interest rates and supervises banks.", "hc3/finance"),
        ImitationExample("hc3:line2:1", (bank,),
                         "It sets monetary policy, mainly through interest rates, to keep "
                         "inflation stable.", "hc3/finance"),
    )
    human = {"Because of the way air scatters sunlight.", "It sets interest rates.",
             "It prints money, basically."}
    assert not human & {example.target for example in result.examples}


def test_openai_chat_fixture_keeps_the_system_message_in_history():
    result = _read_fixture("openai_chat", "openai_chat.jsonl")
    tutor = Turn("system", "You are a patient math tutor.")
    first_q = Turn("user", "What is 12 times 12?")
    assert result.examples == (
        ImitationExample("openai_chat:line1:2", (tutor, first_q), "12 times 12 is 144.",
                         "openai_chat"),
        ImitationExample("openai_chat:line1:4",
                         (tutor, first_q, Turn("assistant", "12 times 12 is 144."),
                          Turn("user", "And 13 times 13?")),
                         "13 times 13 is 169.", "openai_chat"),
        ImitationExample("openai_chat:line2:1", (Turn("user", "Name a primary color."),),
                         "Red is a primary color.", "openai_chat"),
    )


def test_alpaca_user_turn_is_instruction_then_input():
    result = _read_fixture("alpaca", "alpaca.json")
    assert result.examples == (
        ImitationExample("alpaca:line2", (Turn("user", "Give three tips for staying healthy."),),
                         "1. Eat a balanced diet.\n2. Exercise regularly.\n"
                         "3. Sleep seven to nine hours a night.", "alpaca"),
        ImitationExample("alpaca:line7",
                         (Turn("user", "Summarize the text in one sentence.\n\nThe city council "
                                       "met on Tuesday and voted to extend the library's opening "
                                       "hours to 9 pm on weekdays, starting next month."),),
                         "The council voted to keep the library open until 9 pm on weekdays "
                         "from next month.", "alpaca"),
    )


def test_every_registered_reader_has_a_fixture_that_reads_cleanly():
    names = {"sharegpt": "sharegpt.json", "hc3": "hc3.jsonl", "openai_chat": "openai_chat.jsonl",
             "alpaca": "alpaca.json"}
    assert set(READERS) == set(names)
    for format, name in names.items():
        result = _read_fixture(format, name)
        assert result.examples and not result.skipped
        ids = [example.example_id for example in result.examples]
        assert len(set(ids)) == len(ids)
        assert ids == [e.example_id for e in _read_fixture(format, name).examples]  # stable


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SHAREGPT_WITH_BAD_RECORDS = """\
[
  {"id": "ok", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
  {"id": "who",
   "conversations": [{"from": "human", "value": "hi"}, {"from": "narrator", "value": "x"}]},
  {"id": "quiet", "conversations": [{"from": "human", "value": "anyone there?"}]},
  {"id": "first", "conversations": [{"from": "gpt", "value": "H"}, {"from": "user", "value": "q"}]},
  {"id": "ok2", "conversations": [{"from": "human", "value": "2+2"}, {"from": "gpt", "value": "4"}]}
]
"""


def test_malformed_json_array_record_names_file_and_start_line(tmp_path):
    path = _write(tmp_path, "dump.json", SHAREGPT_WITH_BAD_RECORDS)
    with pytest.raises(DataFormatError) as err:
        read_examples(path, "sharegpt")
    assert err.value.path == str(path) and err.value.line == 3
    assert str(err.value).startswith(f"{path}:3: ")
    assert "conversations[1]" in str(err.value) and "'narrator'" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_skip_bad_records_every_skip_and_keeps_going(tmp_path):
    path = _write(tmp_path, "dump.json", SHAREGPT_WITH_BAD_RECORDS)
    result = read_examples(path, "sharegpt", skip_bad=True)
    assert [e.example_id for e in result.examples] == ["sharegpt:ok:1", "sharegpt:ok2:1"]
    assert result.records == 5
    assert [(skip.path, skip.line) for skip in result.skipped] == [(str(path), 3), (str(path), 5),
                                                                  (str(path), 6)]
    assert "unknown speaker 'narrator'" in result.skipped[0].reason
    assert result.skipped[1].reason == "conversation has no assistant turn"
    assert "turn 0 (assistant) must follow a user turn" in result.skipped[2].reason
    summary = result.summary()
    assert "2 examples from 2 of 5 records; 3 skipped" in summary
    assert "skipped line 5: conversation has no assistant turn" in summary


def test_record_without_target_turns_is_reported_even_without_skip_bad(tmp_path):
    path = _write(tmp_path, "hc3.jsonl",
                  '{"question": "q1", "human_answers": ["h"], "chatgpt_answers": ["c"]}\n'
                  '{"question": "q2", "human_answers": ["h"], "chatgpt_answers": []}\n')
    result = read_examples(path, "hc3")
    assert [e.example_id for e in result.examples] == ["hc3:line1:0"]
    assert [(skip.line, skip.reason) for skip in result.skipped] == [(2, "no chatgpt_answers")]


@pytest.mark.parametrize("format, name, text, line, reason", [
    ("hc3", "bad.jsonl", '{"question": "q", "chatgpt_answers": ["a"]}\n\n{"question": "q"\n',
     3, "invalid JSON"),
    ("hc3", "bad.jsonl", '{"question": "q", "chatgpt_answers": "a"}\n', 1,
     "'chatgpt_answers' must be a list, got a string"),
    ("hc3", "bad.jsonl", '{"question": "q", "chatgpt_answers": ["a", ""]}\n', 1,
     "chatgpt_answers[1] must be a non-empty string"),
    ("hc3", "bad.jsonl", '["not", "an", "object"]\n', 1, "expected a JSON object, got a list"),
    ("openai_chat", "bad.jsonl",
     '{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]}\n', 1,
     "messages[1]: unsupported role 'tool'"),
    ("openai_chat", "bad.jsonl",
     '{"messages": []}\n{"messages": [{"role": "user", "content": null}]}\n', 2,
     "messages[0]: 'content' must be a string, got null"),
    ("alpaca", "bad.json", '[\n  {"instruction": "i", "input": "", "output": "o"},\n'
     '  {"instruction": "i",\n   "input": ""}\n]\n', 3, "missing key 'output'"),
    ("alpaca", "bad.json", '[\n  {"instruction": "i", "output": "o"}\n  {"instruction": "j"}\n]',
     3, "expected ',' or ']'"),
    ("alpaca", "bad.json", '[\n  {"instruction": "i", "output": "o"},\n  {"instruction": }\n]',
     3, "invalid JSON"),
    ("sharegpt", "bad.json", '{"id": "x", "conversations": []}', 1, "found one object"),
    ("sharegpt", "bad.json", '[\n  {"id": "x", "conversations": [{"from": "human", "value": "q"}, '
     '{"from": "gpt", "value": "a"}]},\n  {"id": "x", "conversations": [{"from": "human", '
     '"value": "q"}, {"from": "gpt", "value": "b"}]}\n]', 3, "repeats the one from line 2"),
    ("sharegpt", "bad.json", '[\n  {"id": "x", "conversations": [{"from": "human", "value": ""}]}]',
     2, "conversations[0]: Turn.text is empty"),
    ("sharegpt", "bad.json", '[]\n]', 2, "unexpected content after the JSON array"),
    ("sharegpt", "bad.json", '', 1, "invalid JSON"),
])
def test_bad_input_errors_name_file_line_and_reason(tmp_path, format, name, text, line, reason):
    path = _write(tmp_path, name, text)
    with pytest.raises(DataFormatError) as err:
        read_examples(path, format)
    assert err.value.line == line
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert reason in str(err.value)


def test_invalid_json_line_is_skippable_in_json_lines(tmp_path):
    path = _write(tmp_path, "chat.jsonl",
                  '{"messages": [{"role": "user", "content": "q"}, '
                  '{"role": "assistant", "content": "a"}]}\n'
                  '{"messages": [\n'
                  '{"messages": [{"role": "user", "content": "q2"}, '
                  '{"role": "assistant", "content": "a2"}]}\n')
    result = read_examples(path, "openai_chat", skip_bad=True)
    assert [e.target for e in result.examples] == ["a", "a2"]
    assert [e.example_id for e in result.examples] == ["openai_chat:line1:1",
                                                       "openai_chat:line3:1"]
    assert [skip.line for skip in result.skipped] == [2]
    assert result.skipped[0].reason.startswith("invalid JSON")


def test_invalid_json_inside_an_array_raises_even_with_skip_bad(tmp_path):
    path = _write(tmp_path, "bad.json", '[\n  {"instruction": "i", "output": "o"},\n  {oops}\n]')
    with pytest.raises(DataFormatError, match=":3: invalid JSON"):
        read_examples(path, "alpaca", skip_bad=True)


def test_unknown_format_suggests_a_close_name(tmp_path):
    with pytest.raises(ValueError, match="'sharegpt'"):
        read_examples(tmp_path / "x.json", "sharegtp")


def test_record_ids_come_from_the_record_when_present(tmp_path):
    records = [{"id": 41, "instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    path = _write(tmp_path, "data.json", json.dumps(records, indent=1))
    ids = [e.example_id for e in read_examples(path, "alpaca").examples]
    assert ids == ["alpaca:41", "alpaca:line7"]


def test_first_n_is_exact_and_refuses_too_few():
    examples = _read_fixture("sharegpt", "sharegpt.json").examples
    assert first_n(examples, 2) == list(examples[:2])
    assert first_n(iter(examples), 4) == list(examples)
    assert first_n(examples, 0) == []
    with pytest.raises(ValueError, match="first 5 examples but only 4 exist"):
        first_n(examples, 5)
    with pytest.raises(ValueError, match="non-negative"):
        first_n(examples, -1)
