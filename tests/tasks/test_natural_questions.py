import importlib.resources
import json
import re
import sys

import pytest

from arch_compare.evaluation import metrics
from arch_compare_tasks import natural_questions as nq

VALIDATION = nq.FIXTURES / "validation.jsonl"
TRAIN = nq.FIXTURES / "train.jsonl"
SHOT = re.compile(r"Q: (.*)\nA: (.*)\n\n")


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_reader_keeps_questions_and_all_aliases():
    pairs = nq.read_jsonl(VALIDATION)
    records = _records(VALIDATION)
    assert [(p.question, list(p.answers)) for p in pairs] == \
        [(r["question"], r["answer"]) for r in records]
    assert "100 \u00b0C" in pairs[1].answers  # non-ASCII aliases survive
    assert pairs[3].source == f"{VALIDATION}:4"


def test_three_shot_prompts():
    examples = nq.build_examples(VALIDATION, TRAIN, shots=3, seed=0)
    pool = {r["question"]: r["answer"][0] for r in _records(TRAIN)}
    records = _records(VALIDATION)
    assert len(examples) == len(records)
    for example, record in zip(examples, records):
        prompt = example["inputs"]
        shots = SHOT.findall(prompt)
        assert len(shots) == 3
        assert prompt == "".join(f"Q: {q}\nA: {a}\n\n" for q, a in shots) + \
            f"Q: {record['question']}\nA:"
        assert all(pool[q] == a for q, a in shots)  # drawn from the pool, first alias shown
        assert len({q for q, _ in shots}) == 3
        assert record["question"] not in [q for q, _ in shots]
        assert example["targets"] == record["answer"][0]
        assert example["answers"] == record["answer"]


def test_own_question_is_excluded_even_when_the_pool_holds_it():
    # "what is the capital city of canada" is in both fixture files; with a 4-question pool
    # that holds it, every seed must pick the other three.
    target = nq.read_jsonl(VALIDATION)[2]
    pool = nq.read_jsonl(TRAIN)[:4]
    assert target.question in [p.question for p in pool]
    for seed in range(20):
        shots = nq.select_shots(pool, target, 3, seed)
        assert sorted(s.question for s in shots) == sorted(
            p.question for p in pool if p.question != target.question)


def test_self_match_ignores_case_and_punctuation():
    target = nq.QAPair("What is the capital city of Canada?", ("Ottawa",), "t:1")
    pool = nq.read_jsonl(TRAIN)[:4]
    assert all(s.question != "what is the capital city of canada"
               for seed in range(10) for s in nq.select_shots(pool, target, 3, seed))


def test_shot_choice_is_deterministic_and_independent_of_order(tmp_path):
    first = nq.build_examples(VALIDATION, TRAIN, seed=0)
    assert first == nq.build_examples(VALIDATION, TRAIN, seed=0)
    assert [e["inputs"] for e in first] != [e["inputs"] for e in
                                            nq.build_examples(VALIDATION, TRAIN, seed=1)]
    reversed_file = _write_jsonl(tmp_path / "validation.jsonl", _records(VALIDATION)[::-1])
    again = nq.build_examples(reversed_file, TRAIN, seed=0)
    assert [e["inputs"] for e in again] == [e["inputs"] for e in first][::-1]


def test_pool_too_small_names_the_example(tmp_path):
    pool = _write_jsonl(tmp_path / "pool.jsonl", _records(TRAIN)[2:4])  # no validation overlap
    with pytest.raises(ValueError, match=r"validation\.jsonl:1: the few-shot pool has 2 usable"):
        nq.build_examples(VALIDATION, pool, shots=3)
    assert len(nq.build_examples(VALIDATION, pool, shots=2)) == 10


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object, got list"),
    ('{"question": "who"}', r"missing key\(s\) \['answer'\]"),
    ('{"question": "who", "answer": "Bob"}', "'answer' must be a list"),
    ('{"question": "who", "answer": []}', "non-empty list"),
    ('{"question": "who", "answer": ["Bob", ""]}', "non-empty list"),
    ('{"question": "  ", "answer": ["Bob"]}', "'question' must be a non-empty string"),
    ('{"question": 7, "answer": ["Bob"]}', "'question' must be a non-empty string"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"question": "who", "answer": ["Bob"]})
    path.write_text(f"{good}\n\n{line}\n{good}\n", encoding="utf-8")  # a blank line 2 is skipped
    with pytest.raises(ValueError, match=message) as error:
        nq.read_jsonl(path)
    assert f"{path}:3:" in str(error.value)


def test_postprocess_feeds_exact_match():
    example = {"answers": [b"Albert Einstein", b"Einstein"]}
    target = nq.postprocess(b"Albert Einstein", example=example, is_target=True)
    assert target == ["Albert Einstein", "Einstein"]
    prediction = nq.postprocess(" Einstein\n\nQ: who wrote hamlet\nA:", example=example)
    assert prediction == "Einstein"
    assert metrics.exact_match([target], [prediction]) == {"exact_match": 100.0}


def test_tfds_reader_names_an_unprepared_data_dir(tmp_path):
    data_dir = tmp_path / "tfds_data"
    with pytest.raises(FileNotFoundError, match="not prepared") as error:
        nq.read_tfds("validation", data_dir)
    assert str(data_dir) in str(error.value)
    assert not data_dir.exists()  # the reader never starts a download


def test_tfds_reader_reads_a_prepared_data_dir(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    # Prepare the dataset from the fixture files instead of the network. tfds 4.9.10's
    # download_and_prepare imports the `importlib_resources` backport, which is not installed;
    # the standard library module provides what it uses.
    monkeypatch.setitem(sys.modules, "importlib_resources", importlib.resources)
    files = {"train": str(TRAIN), "validation": str(VALIDATION)}
    monkeypatch.setattr(tfds.download.DownloadManager, "download", lambda self, urls: files)
    tfds.builder(nq.TFDS_NAME, data_dir=str(tmp_path)).download_and_prepare()

    pairs = nq.read_tfds("validation", tmp_path)
    expected = {(r["question"], tuple(r["answer"])) for r in _records(VALIDATION)}
    assert {(p.question, p.answers) for p in pairs} == expected  # TFDS stores its own order
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['train', 'validation'\]"):
        nq.read_tfds("test", tmp_path)
    examples = nq.examples_from_pairs(pairs, nq.read_jsonl(TRAIN), shots=3)
    assert all(len(SHOT.findall(e["inputs"])) == 3 for e in examples)
