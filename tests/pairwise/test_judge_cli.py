"""`arch-compare pairwise judge`: an items file judged in both orders by a target, replies cached,
statistics printed; a rerun asks the judge nothing new."""

import json
import re

from arch_compare.cli import main

CALLS = []


def prefer_longer(turns) -> str:
    """A judge that is consistent (the longer answer wins) whichever order it is shown."""
    CALLS.append(turns)
    text = turns[-1].text
    first = re.search(r"\[Answer A\]\n(.*)\n\[End of answer A\]", text, re.S).group(1)
    second = re.search(r"\[Answer B\]\n(.*)\n\[End of answer B\]", text, re.S).group(1)
    return "The longer one is better.\nVerdict: " + ("A" if len(first) > len(second) else "B")


def always_first(turns) -> str:
    CALLS.append(turns)
    return "Verdict: A"


def _items(path):
    rows = [{"id": f"q{n}", "prompt": f"Question {n}?", "model_a": "imitation",
             "output_a": "short", "model_b": "target", "output_b": "a much longer answer"}
            for n in range(4)]
    rows[0]["output_a"] = "an answer longer than the target's answer"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _judge(tmp_path, capsys, function, name):
    spec = json.dumps({"kind": "function", "name": name,
                       "function": f"tests.pairwise.test_judge_cli:{function}"})
    output = tmp_path / f"{name}.jsonl"
    assert main(["pairwise", "judge", str(_items(tmp_path / "items.jsonl")), "--judge", spec,
                 "--output", str(output)]) == 0
    return json.loads(capsys.readouterr().out), output


def test_a_consistent_judge_decides_every_item_and_is_cached(tmp_path, capsys):
    CALLS.clear()
    report, output = _judge(tmp_path, capsys, "prefer_longer", "longer")
    assert len(CALLS) == 8  # four items, both orders
    assert report["items"]["consistent"] == 4
    assert report["win_rates"]["target"]["rate"] == 0.75
    assert report["win_rates"]["imitation"]["rate"] == 0.25
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["verdict"] for r in records] == ["A", "B", "B", "B"]
    CALLS.clear()
    again, _ = _judge(tmp_path, capsys, "prefer_longer", "longer")
    assert CALLS == [] and again == report  # every reply came from the cache


def test_a_judge_that_always_picks_the_first_answer_ties_everything(tmp_path, capsys):
    report, _ = _judge(tmp_path, capsys, "always_first", "first")
    assert report["items"]["inconsistent"] == 4
    assert report["win_rates"]["target"]["rate"] == 0.5
    assert report["position_bias"]["left_rate"] == 1.0
