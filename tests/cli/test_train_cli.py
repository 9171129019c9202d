"""`arch-compare train` with t5x-style gin files: a tiny run, and errors before any compute."""

import json
from pathlib import Path


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
    # In words, with the loss the run logged for its last step.
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    loss = next(row["loss"] for row in reversed(logged)
                if row["step"] == 2 and row["kind"] == "train")
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"trained llama-tiny to step 2 in {tmp_path / 'run'}: loss {loss:.4g} at the last step "
        "(float32, 1 device)")


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


EVAL = str(ROOT / "gin_configs" / "runs" / "eval.gin")
INFER = str(ROOT / "gin_configs" / "runs" / "infer.gin")


def inference_flags(checkpoint, output, vocabulary, **extra):
    values = {"CHECKPOINT_PATH": f"'{checkpoint}'", "OUTPUT_PATH": f"'{output}'",
              "TASK_FEATURE_LENGTHS": "{'inputs': 256, 'targets': 16}", "BATCH_SIZE": "4",
              "VOCABULARY_PATH": f"'{vocabulary}'", "MAX_DECODE_LENGTH": "8", **extra}
    return [f"--gin.{name}={value}" for name, value in values.items()]


def test_eval_and_infer_read_the_training_directory(tmp_path, capsys, sentencepiece_model_path):
    run = tmp_path / "run"
    assert main(["train", f"--gin_file={MODEL}", f"--gin_file={RUN}",
                 *flags(run, sentencepiece_model_path)]) == 0
    code = main(["eval", f"--gin_file={MODEL}", f"--gin_file={EVAL}",
                 *inference_flags(run, tmp_path / "eval", sentencepiece_model_path,
                                  EVAL_TASKS="['nq_open_3shot_fixture', 'mmlu_5shot_fixture']",
                                  EVAL_SPLIT="'validation'")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    printed = capsys.readouterr().out.strip().splitlines()
    start = printed.index(f"eval: metrics in {tmp_path / 'eval' / 'metrics.json'}")
    assert printed[start + 1:] == [f"  {task}  {name} {value:.4g}"
                                   for task, values in metrics.items()
                                   for name, value in values.items()]
    assert 0.0 <= metrics["nq_open_3shot_fixture"]["exact_match"] <= 100.0
    assert 0.0 <= metrics["mmlu_5shot_fixture"]["accuracy_micro"] <= 100.0
    assert (tmp_path / "eval" / "config.gin").is_file()

    code = main(["infer", f"--gin_file={MODEL}", f"--gin_file={INFER}",
                 *inference_flags(run, tmp_path / "infer", sentencepiece_model_path,
                                  MIXTURE_OR_TASK_NAME="'imitation_hc3_fixture'",
                                  DECODE_METHOD="'beam'", NUM_BEAMS="2")])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in
            (tmp_path / "infer" / "predictions.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == [0]  # the fixture's one validation example
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"infer: predictions in {tmp_path / 'infer' / 'predictions.jsonl'} (1 example)")
    assert rows[0]["inputs"].endswith("Assistant:") and isinstance(rows[0]["prediction"], str)
