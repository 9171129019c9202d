"""A run killed with SIGKILL and restarted ends bitwise equal to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from arch_compare import optim
from arch_compare.models import build_model, get_preset
from arch_compare.trainer.checkpoints import Checkpoints
from arch_compare.trainer.steps import TrainState

REPO = Path(__file__).resolve().parents[2]
STEPS = 40
SCRIPT = """
import sys
from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train
import arch_compare_tasks.catalogue

model_dir, vocabulary_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = get_preset("gpt2-tiny")
train(build_model(config), vocabulary_for_model(config, vocabulary_path),
      TrainConfig(model_dir=model_dir, train_steps=steps, checkpoint_period=3,
                  data=DataConfig("imitation_sharegpt_fixture", {"inputs": 96, "targets": 48},
                                  batch_size=2, seed=7),
                  optimizer=optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e-3))),
      progress=False)
"""


def start(model_dir, vocabulary_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(model_dir), str(vocabulary_path),
                             str(STEPS)], cwd=REPO, env=env, stderr=subprocess.PIPE)


def logged_steps(model_dir):
    path = Path(model_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def final_state(model_dir):
    model = build_model(get_preset("gpt2-tiny"))
    params = model.abstract_params()
    optimizer = optim.make_optimizer(optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e-3)),
                                     model.logical_axes())
    abstract = TrainState(jax.ShapeDtypeStruct((), np.int32), params,
                          jax.eval_shape(optimizer.init, params))
    checkpoints = Checkpoints(model_dir, get_preset("gpt2-tiny"))
    try:
        return checkpoints.restore(abstract)
    finally:
        checkpoints.close()


def losses(model_dir):
    lines = (Path(model_dir) / "metrics.jsonl").read_text().splitlines()
    return [(json.loads(line)["step"], json.loads(line)["loss"]) for line in lines]


@pytest.mark.scale  # about a minute of wall clock: run by `make test-scale`
def test_sigkill_mid_run_then_restart_matches_an_uninterrupted_run(tmp_path, bpe_tokenizer_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    first = start(killed, bpe_tokenizer_path)
    deadline = time.time() + 120
    while max(logged_steps(killed), default=0) < 5 and first.poll() is None:
        assert time.time() < deadline, "training never reached step 5"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    interrupted_at = max(logged_steps(killed))
    assert first.returncode == -signal.SIGKILL and interrupted_at < STEPS

    for model_dir, process in ((killed, start(killed, bpe_tokenizer_path)),
                               (straight, start(straight, bpe_tokenizer_path))):
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors.decode()[-3000:]

    assert losses(killed) == losses(straight)  # every step, bit for bit
    (killed_state, killed_position), (straight_state, straight_position) = (
        final_state(killed), final_state(straight))
    assert killed_position == straight_position == STEPS
    jax.tree.map(np.testing.assert_array_equal, killed_state, straight_state)
