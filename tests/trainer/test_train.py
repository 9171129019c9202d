"""Training runs on tiny models: loss goes down, outputs land, bad states are refused."""

import json
import math

import jax
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from arch_compare import optim
from arch_compare.execution import ExecutionConfig
from arch_compare.models import build_model, get_preset
from arch_compare.models.hf import save_hf_checkpoint
from arch_compare.models.hf.checkpoint import CheckpointError
from arch_compare.models.native import save_model
from arch_compare.trainer.loop import TrainingDiverged


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "t5-tiny", "ul2-tiny"])
def test_training_lowers_the_loss_and_writes_everything(tmp_path, run_training, preset):
    result = run_training(tmp_path, preset, steps=8)
    losses = [result.losses[step] for step in range(1, 9)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 8]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 9))
    assert {"loss", "accuracy", "grad_norm", "learning_rate", "tokens_per_second"} <= set(lines[0])
    events = EventAccumulator(str(tmp_path / "tensorboard" / "train"))
    events.Reload()
    scalars = events.Tensors("train/loss")
    assert [event.step for event in scalars] == list(range(1, 9))
    assert float(tf.make_ndarray(scalars[0].tensor_proto)) == pytest.approx(losses[0], rel=1e-5)


def test_microbatches_give_the_same_steps(tmp_path, run_training):
    whole = run_training(tmp_path / "whole", "llama-tiny", steps=3)
    split = run_training(tmp_path / "split", "llama-tiny", steps=3,
                         execution=ExecutionConfig(microbatches=2))
    for step in (1, 2, 3):
        assert split.losses[step] == pytest.approx(whole.losses[step], abs=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 whole.state.params, split.state.params)


def test_resuming_continues_from_the_newest_checkpoint(tmp_path, run_training):
    first = run_training(tmp_path, "t5-tiny", steps=4)
    second = run_training(tmp_path, "t5-tiny", steps=6)
    assert first.resumed_from is None and second.resumed_from == 4
    assert sorted(second.losses) == [5, 6]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 7))


def test_a_corrupt_checkpoint_is_refused_and_left_in_place(tmp_path, run_training):
    run_training(tmp_path, "gpt2-tiny", steps=4)
    state_dir = tmp_path / "checkpoints" / "4" / "state"
    for path in state_dir.rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
            path.write_bytes(b"\0" * path.stat().st_size)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(CheckpointError, match=r"checkpoints/4: cannot restore"):
        run_training(tmp_path, "gpt2-tiny", steps=6)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_another_model_in_the_same_directory_is_refused(tmp_path, run_training):
    run_training(tmp_path, "gpt2-tiny", steps=1, checkpoint_period=1)
    with pytest.raises(CheckpointError, match="different model.*d_model"):
        run_training(tmp_path, "gpt2-tiny", steps=2, overrides={"d_model": 32})


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                            run_training):
    # Adam moves every weight by about the learning rate: 1e30 makes the next logits overflow
    huge = optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e30))
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf).*last good checkpoint") as error:
        run_training(tmp_path, "llama-tiny", steps=20, checkpoint_period=1, optimizer=huge)
    step = int(str(error.value).split("(step ")[1].split(")")[0])
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert kept[-1] == step
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["loss"]) for line in lines)


SAVERS = {"hf": lambda model, params, path: save_hf_checkpoint(model, params, path),
          "native": lambda model, params, path: save_model(path, model, params)}


@pytest.mark.parametrize("kind", list(SAVERS))
def test_training_starts_from_an_initial_checkpoint(tmp_path, run_training, kind):
    model = build_model(get_preset("llama-tiny"))
    start = model.init(jax.random.key(42))
    SAVERS[kind](model, start, tmp_path / "init")
    tiny_steps = optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e-9))
    result = run_training(tmp_path / "run", "llama-tiny", steps=1, optimizer=tiny_steps,
                          initial_checkpoint_path=str(tmp_path / "init"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 result.state.params, start)
    with pytest.raises(CheckpointError, match="do not fit the configured model"):
        run_training(tmp_path / "other", "llama-tiny", steps=1, overrides={"d_ff": 96},
                     initial_checkpoint_path=str(tmp_path / "init"))
