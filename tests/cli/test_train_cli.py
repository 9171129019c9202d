"""`arch-compare train` with t5x-style gin files: a tiny run, and errors before any compute."""

from pathlib import Path

import pytest

from arch_compare.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = str(ROOT / "gin_configs" / "models" / "llama" / "tiny.gin")
RUN = str(ROOT / "gin_configs" / "runs" / "finetune.gin")


def flags(model_dir, vocabulary, **extra):
    values = {"MODEL_DIR": f"'{model_dir}'", "MIXTURE_OR_TASK_NAME": "'imitation_hc3_fixture'",
              "TASK_FEATURE_LENGTHS": "{'inputs': 64, 'targets': 32}", "TRAIN_STEPS": "2",
              "BATCH_SIZE": "2", "VOCABULARY_PATH": f"'{vocabulary}'", "CHECKPOINT_PERIOD": "2",
              **extra}
    return [f"--gin.{name}={value}" for name, value in values.items()]


def test_train_runs_and_writes_the_resolved_config(tmp_path, capsys, sentencepiece_model_path):
    code = main(["train", f"--gin_file={MODEL}", f"--gin_file={RUN}",
                 *flags(tmp_path / "run", sentencepiece_model_path)])
    assert code == 0, capsys.readouterr().err
    config = (tmp_path / "run" / "config.gin").read_text()
    assert "MIXTURE_OR_TASK_NAME = 'imitation_hc3_fixture'" in config
    assert "MODEL_PRESET = 'llama-tiny'" in config
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    assert "'step': 2" in capsys.readouterr().out


def test_a_missing_required_macro_names_it_and_its_file(tmp_path, capsys,
                                                        sentencepiece_model_path):
    argv = [f for f in flags(tmp_path, sentencepiece_model_path) if "BATCH_SIZE" not in f]
    assert main(["train", f"--gin_file={MODEL}", f"--gin_file={RUN}", *argv]) == 2
    err = capsys.readouterr().err
    assert "BATCH_SIZE is required" in err and "runs/finetune.gin" in err
    assert not (tmp_path / "checkpoints").exists()


def test_an_unknown_binding_names_the_file_and_line(tmp_path, capsys, sentencepiece_model_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("arch_compare.trainer.loop.TrainConfig.train_stpes = 3\n")
    assert main(["train", f"--gin_file={MODEL}", f"--gin_file={RUN}", f"--gin_file={bad}",
                 *flags(tmp_path / "run", sentencepiece_model_path)]) == 2
    err = capsys.readouterr().err
    assert "train_stpes" in err and "bad.gin" in err


def test_an_unknown_task_suggests_close_names(tmp_path, capsys, sentencepiece_model_path):
    argv = flags(tmp_path / "run", sentencepiece_model_path,
                 MIXTURE_OR_TASK_NAME="'imitation_hc3_fixtur'")
    assert main(["train", f"--gin_file={MODEL}", f"--gin_file={RUN}", *argv]) == 2
    assert "did you mean imitation_hc3_fixture" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
