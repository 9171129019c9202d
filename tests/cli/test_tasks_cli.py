"""`arch-compare tasks` lists every registered task and mixture with splits and features."""

import json

from arch_compare.cli import main


def test_json_lists_tasks_with_splits_features_and_missing_data(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ARCH_COMPARE_DATA_DIR", str(tmp_path))
    assert main(["tasks", "--format", "json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["mmlu_5shot_fixture"]["splits"] == {"validation": 28, "test": 40}
    assert rows["mmlu_5shot_fixture"]["metrics"] == ["mmlu_accuracy"]
    assert rows["imitation_sharegpt_fixture"]["features"][:2] == ["inputs", "targets"]
    assert rows["imitation_sharegpt_fixture_with_pretraining"]["kind"] == "mixture"
    assert {"humaneval", "nq_open_3shot", "pretraining_text_fixture"} <= set(rows)
    assert rows["humaneval"]["splits"] == {"test": 164}
    # the real NQ data is not on this machine: listed, with the reason
    assert "unavailable" in rows["nq_open_3shot"]["splits"]["validation"]


def test_table_and_unknown_name(capsys):
    assert main(["tasks", "nq_open_3shot_fixture"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "kind", "splits"]
    assert "validation=10" in out
    assert main(["tasks", "nq_open_3shot_fixtur"]) == 2
    assert "did you mean nq_open_3shot_fixture" in capsys.readouterr().err
