import csv
import re

import pytest

from arch_compare.evaluation import metrics
from arch_compare_tasks import mmlu

FIXTURES = mmlu.FIXTURES
SUBJECTS = ["astronomy", "elementary_mathematics", "high_school_geography"]


def _raw_rows(split, subject):
    # An independent reading with the csv module's defaults, to check the reader against.
    with open(FIXTURES / split / f"{subject}_{split}.csv", newline="") as f:
        return list(csv.reader(f))


def _write(folder, split, subject, text):
    path = folder / split / f"{subject}_{split}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD_ROW = "What is 1 + 1?,1,2,3,4,B\n"


def test_fixture_subjects_come_from_file_names():
    for split in mmlu.SPLITS:
        assert sorted(mmlu.read_split(FIXTURES, split)) == SUBJECTS


def test_reader_keeps_quoted_commas_and_newlines():
    questions = mmlu.read_split(FIXTURES, "test")
    astronomy = questions["astronomy"]
    assert astronomy[2].question == ('A star\'s parallax angle, in arcseconds, is\n'
                                     '"inversely proportional" to its')
    assert astronomy[0].options[3] == "the changing angle between the Sun, Earth and the Moon"
    assert questions["elementary_mathematics"][2].question == "What is 2,500 divided by 50?"
    for subject in SUBJECTS:
        raw = _raw_rows("test", subject)
        assert [(q.question, *q.options, q.answer) for q in questions[subject]] == \
            [tuple(row) for row in raw]


def test_sources_point_at_the_first_line_of_each_row():
    geography = mmlu.read_csv(FIXTURES / "test" / "high_school_geography_test.csv")
    lines = [int(q.source.rsplit(":", 1)[1]) for q in geography]
    assert lines == [1, 2, 3, 4]
    astronomy = mmlu.read_csv(FIXTURES / "test" / "astronomy_test.csv")
    assert astronomy[2].source.endswith("astronomy_test.csv:3")


def test_five_shot_prompt_layout():
    examples = mmlu.build_examples(FIXTURES, split="test", shots=5)
    assert len(examples) == sum(len(_raw_rows("test", s)) for s in SUBJECTS)
    assert len({e["id"] for e in examples}) == len(examples)
    dev = mmlu.read_split(FIXTURES, "dev")
    test = mmlu.read_split(FIXTURES, "test")
    for example in examples:
        subject, _, index = example["id"].split("/")
        question = test[subject][int(index)]
        prompt = example["inputs"]
        assert prompt.startswith("The following are multiple choice questions (with answers) "
                                 f"about {subject.replace('_', ' ')}.\n\n")
        assert prompt.endswith("\nD. " + question.options[3] + "\nAnswer:")
        answered = re.findall(r"^Answer: ([ABCD])$", prompt, flags=re.MULTILINE)
        assert answered == [q.answer for q in dev[subject]][:5]
        for shot in dev[subject][:5]:
            assert f"{shot.question}\nA. {shot.options[0]}\n" in prompt
        assert question.question not in [q.question for q in dev[subject]]
        assert example["choices"] == [" A", " B", " C", " D"]
        assert example["answer_index"] == question.answer_index
        assert example["subject"] == subject


def test_shot_blocks_are_separated_by_blank_lines():
    example = mmlu.build_examples(FIXTURES, split="val", shots=2, subjects=["astronomy"])[0]
    blocks = example["inputs"].split("\n\n")
    assert len(blocks) == 1 + 2 + 1  # header, two shots, the question
    assert blocks[1] == ("Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Earth\n"
                         "D. Mars\nAnswer: B")


def test_zero_shot_prompt_has_no_answers():
    example = mmlu.build_examples(FIXTURES, split="test", shots=0)[0]
    assert "Answer: " not in example["inputs"]
    assert example["inputs"].count("Answer:") == 1


def test_answer_letters_match_the_raw_files():
    examples = mmlu.build_examples(FIXTURES, split="val", shots=5)
    letters = [row[5] for s in SUBJECTS for row in _raw_rows("val", s)]
    assert ["ABCD"[e["answer_index"]] for e in examples] == letters


def test_subjects_can_be_restricted_and_must_exist():
    examples = mmlu.build_examples(FIXTURES, subjects=["astronomy"])
    assert {e["subject"] for e in examples} == {"astronomy"}
    with pytest.raises(ValueError, match=r"no files for subjects \['botany'\]"):
        mmlu.build_examples(FIXTURES, subjects=["botany"])


def test_choice_rows_feed_group_choice_scores():
    examples = mmlu.build_examples(FIXTURES, split="test", shots=5)
    rows = mmlu.choice_rows(examples)
    assert len(rows) == 4 * len(examples)
    # A fake scorer that prefers the correct continuation for every other question.
    scores = [0.0 if row["is_correct"] == (i % 8 < 4) else -1.0 for i, row in enumerate(rows)]
    answers, grouped = metrics.group_choice_scores(
        [(r["id"], r["choice_index"], r["is_correct"]) for r in rows], scores)
    assert answers == [e["answer_index"] for e in examples]
    hits = metrics.rank_classification_accuracy(answers, grouped)["accuracy"]
    assert hits == pytest.approx(100.0 * sum(i % 2 == 0 for i in range(len(examples))) /
                                 len(examples))


@pytest.mark.parametrize("text, line, message", [
    (GOOD_ROW + '"Two\nlines?",1,2,3,4,A\n' + "Short,1,2,3,B\n", 4, "expected 6 fields"),
    (GOOD_ROW + "Bad answer?,1,2,3,4,E\n", 2, "answer must be one of A, B, C, D, got 'E'"),
    (GOOD_ROW + "Extra?,1,2,3,4,5,A\n", 2, "expected 6 fields"),
    (GOOD_ROW + "\n" + GOOD_ROW, 2, "got 0"),
    (",1,2,3,4,A\n", 1, "question field is empty"),
    (GOOD_ROW + '"Unclosed quote,1,2,3,4,A\n', 2, "malformed CSV"),
])
def test_malformed_rows_name_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path, "test", "botany", text)
    with pytest.raises(ValueError, match=message) as error:
        mmlu.read_csv(path)
    assert f"{path}:{line}:" in str(error.value)


def test_too_few_dev_questions_names_the_dev_file(tmp_path):
    _write(tmp_path, "test", "botany", GOOD_ROW)
    dev = _write(tmp_path, "dev", "botany", GOOD_ROW * 4)
    assert len(mmlu.build_examples(tmp_path, shots=4)) == 1
    with pytest.raises(ValueError, match="4 dev questions, but 5-shot prompts need 5") as error:
        mmlu.build_examples(tmp_path, shots=5)
    assert str(dev) in str(error.value)


def test_missing_dev_file_names_the_subject(tmp_path):
    _write(tmp_path, "test", "botany", GOOD_ROW)
    _write(tmp_path, "dev", "zoology", GOOD_ROW * 5)
    with pytest.raises(FileNotFoundError, match="botany_dev.csv"):
        mmlu.build_examples(tmp_path)


def test_missing_split_folder_and_misnamed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MMLU 'test' folder"):
        mmlu.build_examples(tmp_path)
    _write(tmp_path, "test", "botany", GOOD_ROW)
    (tmp_path / "test" / "botany.csv").write_text(GOOD_ROW)
    with pytest.raises(ValueError, match=r"botany\.csv: a file in the 'test' folder"):
        mmlu.read_split(tmp_path, "test")


def test_argument_errors():
    with pytest.raises(ValueError, match="few-shot pool"):
        mmlu.build_examples(FIXTURES, split="dev", shots=5)
    assert len(mmlu.build_examples(FIXTURES, split="dev", shots=0)) == 15
    with pytest.raises(ValueError, match="unknown MMLU split 'train'"):
        mmlu.build_examples(FIXTURES, split="train")
    with pytest.raises(ValueError, match="shots must be >= 0"):
        mmlu.build_examples(FIXTURES, shots=-1)
