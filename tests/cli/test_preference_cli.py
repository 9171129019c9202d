"""`arch-compare train` with gin_configs/runs/preference.gin: DPO from an ordinary run's checkpoint
on a pairs file, its summary line and metrics, and the mistakes that stop it in one line."""

import json
import math
from pathlib import Path

import pytest

from arch_compare.cli import main
from arch_compare.preference.pairs import PreferencePair, write_pairs
from arch_compare.trainer.preference_data import REFERENCE_FILE
from tests.cli.test_expected_failures import one_error_line

ROOT = Path(__file__).resolve().parents[2]
MODEL = str(ROOT / "gin_configs" / "models" / "gpt2" / "tiny.gin")
FINETUNE = str(ROOT / "gin_configs" / "runs" / "finetune.gin")
PREFERENCE = str(ROOT / "gin_configs" / "runs" / "preference.gin")
LENGTHS = "{'inputs': 64, 'targets': 64}"
SUBJECTS = ("the old librarian", "every decoder", "this dataset", "each experiment",
            "the blue notebook")
# A prompt far over 64 tokens in any vocabulary: dropped whole, never cut.
TOO_LONG = PreferencePair("Tell me about " + "the very long history of the library, " * 30,
                          "It is long.", "No.")


def pairs() -> list[PreferencePair]:
    return [PreferencePair(f"Tell me something about {subject}.",
                           f"{subject.capitalize()} reads with care.",
                           "No.") for subject in SUBJECTS] + [TOO_LONG]


def as_flags(**values) -> list[str]:
    return [f"--gin.{name}={value}" for name, value in values.items()]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, bpe_tokenizer_path):
    """A two-step ordinary run: the policy's start and the reference."""
    run = tmp_path_factory.mktemp("base") / "run"
    code = main(["train", f"--gin_file={MODEL}", f"--gin_file={FINETUNE}", *as_flags(
        MODEL_DIR=f"'{run}'", MIXTURE_OR_TASK_NAME="'imitation_hc3_fixture'",
        TASK_FEATURE_LENGTHS=LENGTHS, TRAIN_STEPS=2, BATCH_SIZE=2,
        VOCABULARY_PATH=f"'{bpe_tokenizer_path}'", CHECKPOINT_PERIOD=2)])
    assert code == 0
    assert (run / "checkpoints" / "2").is_dir()
    return run


def preference_flags(model_dir, pairs_path, base, vocabulary, **extra) -> list[str]:
    return as_flags(**{"MODEL_DIR": f"'{model_dir}'", "PREFERENCE_PAIRS": f"'{pairs_path}'",
                       "INITIAL_CHECKPOINT_PATH": f"'{base}'", "TASK_FEATURE_LENGTHS": LENGTHS,
                       "TRAIN_STEPS": 3, "BATCH_SIZE": 2, "VOCABULARY_PATH": f"'{vocabulary}'",
                       **extra})


def test_dpo_runs_from_a_checkpoint_and_says_what_it_did(tmp_path, capsys, base_run,
                                                         bpe_tokenizer_path):
    pairs_path = tmp_path / "pairs.jsonl"
    assert write_pairs(pairs_path, pairs()) == len(SUBJECTS) + 1
    run = tmp_path / "dpo"
    capsys.readouterr()
    code = main(["train", f"--gin_file={MODEL}", f"--gin_file={PREFERENCE}",
                 *preference_flags(run, pairs_path, base_run, bpe_tokenizer_path,
                                   BETA=0.2, LEARNING_RATE=1e-3)])
    assert code == 0, capsys.readouterr().err
    assert (run / REFERENCE_FILE).is_file()
    assert (run / "checkpoints" / "3").is_dir()
    # The macros reached the run: the recipe it recorded.
    recorded = json.loads((run / "execution.json").read_text())["recipe"]["preference"]
    assert (recorded["loss"], recorded["beta"], recorded["label_smoothing"]) == ("dpo", 0.2, 0.0)
    assert recorded["pairs"] == str(pairs_path) and recorded["reference"] == str(base_run)

    logged = {row["step"]: row for row in map(json.loads, (run / "metrics.jsonl").open())
              if row["kind"] == "train"}
    assert sorted(logged) == [1, 2, 3]
    # Step 1 scores the reference's own weights: every reward is 0, so DPO's loss is log 2.
    assert logged[1]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert logged[1]["loss"] == pytest.approx(math.log(2.0), abs=1e-5)
    assert all(0.0 <= row["preference_accuracy"] <= 1.0 for row in logged.values())
    last = logged[3]
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"trained gpt2-tiny with dpo to step 3 in {run}: loss {last['loss']:.4g}, reward margin "
        f"{last['reward_margin']:.4g}, preference accuracy {last['preference_accuracy']:.4g} at "
        f"the last step; {len(SUBJECTS)} of {len(SUBJECTS) + 1} pairs kept (dropped: prompt "
        f"longer than the inputs length 1) (float32, 1 device)")


def test_a_missing_pairs_file_macro_is_named(tmp_path, capsys, bpe_tokenizer_path):
    argv = [flag for flag in preference_flags(tmp_path / "run", "unused", "/no/checkpoint",
                                              bpe_tokenizer_path)
            if not flag.startswith("--gin.PREFERENCE_PAIRS=")]
    assert main(["train", f"--gin_file={MODEL}", f"--gin_file={PREFERENCE}", *argv]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "PREFERENCE_PAIRS is required" in line and "runs/preference.gin" in line
    assert not (tmp_path / "run").exists()


def test_a_bad_line_in_the_pairs_file_is_one_line_naming_it(tmp_path, capsys, base_run,
                                                            bpe_tokenizer_path, monkeypatch):
    monkeypatch.delenv("ARCH_COMPARE_TRACEBACK", raising=False)
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, pairs()[:2])
    with pairs_path.open("a") as file:
        file.write('{"prompt": "Hello", "chosen": "Hi."\n')  # cut short
    run = tmp_path / "dpo"
    code = main(["train", f"--gin_file={MODEL}", f"--gin_file={PREFERENCE}",
                 *preference_flags(run, pairs_path, base_run, bpe_tokenizer_path)])
    assert code == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert line.startswith(f"arch-compare train: error: {pairs_path}:3: not JSON"), line
    assert not (run / REFERENCE_FILE).exists()
    assert not list((run / "checkpoints").glob("*"))  # no step was saved
