"""Evaluation rows converted once per process, and read again when their task changes."""

import numpy as np
import pytest

from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.trainer.eval_rows import converted_rows
from arch_compare_tasks import registry

LENGTHS = {"inputs": 16, "targets": 16}
NAME = "eval_rows_test"


def _register(records):
    registry.register_task(registry.TaskSpec(
        name=NAME, kind="evaluation", description="test", source="test",
        splits={"validation": lambda: records}), replace=True)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "t5-tiny"])
def test_rows_are_read_once_and_again_after_the_task_changes(preset, vocabulary_path):
    config = get_preset(preset)
    vocabulary = vocabulary_for_model(config, vocabulary_path(config))
    converter = build_model(config).feature_converter(vocabulary)
    _register([{"inputs": "a question", "targets": "an answer"},
               {"inputs": "another one", "targets": "and its answer"}])
    first = converted_rows(NAME, vocabulary, converter, LENGTHS, "validation")
    assert [index for index, _ in first] == [0, 1]
    assert first[1][1]["text:inputs_pretokenized"] == b"another one"
    # The same task, vocabulary and an equal converter: the rows already made.
    again = converted_rows(NAME, vocabulary, build_model(config).feature_converter(vocabulary),
                           LENGTHS, "validation")
    assert again is first
    # Other lengths, or the task registered again with other records: read afresh.
    longer = converted_rows(NAME, vocabulary, converter, {"inputs": 24, "targets": 16},
                            "validation")
    assert longer is not first
    assert _widest(longer[0][1]) == _widest(first[0][1]) + 8
    _register([{"inputs": "something else", "targets": "entirely"}])
    changed = converted_rows(NAME, vocabulary, converter, LENGTHS, "validation")
    assert len(changed) == 1 and changed[0][1]["text:inputs_pretokenized"] == b"something else"
    assert any(not np.array_equal(values, first[0][1][name])
               for name, values in changed[0][1].items() if not name.startswith("text:"))


def _widest(row) -> int:
    return max(values.shape[0] for name, values in row.items() if not name.startswith("text:"))
