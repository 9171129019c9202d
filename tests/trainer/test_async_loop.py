"""The asynchronous loop: the same losses as reading each step by hand, divergence caught before a
checkpoint, the batch thread stopped on errors, the memory check made before anything compiles."""

import json
import math
import threading
import time

import jax
import numpy as np
import pytest

from arch_compare import optim
from arch_compare.budget import memory
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.execution import ExecutionConfig, NoMeshFits
from arch_compare.models import build_model, get_preset
from arch_compare.partitioning import MeshConfig
from arch_compare.trainer import loop, placement
from arch_compare.trainer import steps as trainer_steps
from arch_compare.trainer.data import BatchIterator, DataConfig
from arch_compare.trainer.loop import TrainingDiverged
from arch_compare.trainer.prefetch import Prefetcher
from arch_compare.trainer.step_metrics import StepMetrics
from arch_compare.trainer.steps import make_init_state, make_train_step
from arch_compare_tasks.registry import seqio_provider
from tests.trainer.conftest import LENGTHS, TASK


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "batch-prefetch" and t.is_alive()]


def test_losses_equal_the_step_function_read_one_step_at_a_time(tmp_path, run_training,
                                                                 vocabulary_path):
    steps, config = 4, get_preset("gpt2-tiny")
    result = run_training(tmp_path, "gpt2-tiny", steps=steps, checkpoint_period=2)
    # The reference: the same model, optimizer and batches, each loss read before the next step.
    model = build_model(config)
    settings = optim.OptimizerConfig("adamw", optim.ScheduleConfig(3e-3))
    optimizer = optim.make_optimizer(settings, model.logical_axes())
    step = jax.jit(make_train_step(model, optimizer, optim.make_schedule(settings.schedule)))
    state = make_init_state(optimizer)(model.init(jax.random.key(0)))
    vocabulary = vocabulary_for_model(config, vocabulary_path(config))
    batches = BatchIterator(seqio_provider(TASK, vocabulary),
                            model.feature_converter(vocabulary), DataConfig(TASK, LENGTHS, 4))
    by_hand = {}
    for number in range(1, steps + 1):
        state, metrics = step(state, next(batches))
        by_hand[number] = float(metrics["loss"])
    assert result.losses == pytest.approx(by_hand, rel=1e-6, abs=1e-6)
    assert len(set(result.losses.values())) == steps  # different losses, not one repeated
    record = json.loads((tmp_path / "execution.json").read_text())
    assert record == result.execution
    assert record["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and record["devices"] == 1
    assert (record["dtype"], record["remat"], record["microbatches"]) == ("float32", "none", 1)
    assert record["device_memory_bytes"] is None  # CPU: unknown, the check is skipped
    assert record["estimated_bytes_per_device"] > 0
    assert not prefetch_threads()


def test_a_nan_is_caught_before_any_checkpoint_of_its_state(tmp_path, run_training,
                                                            monkeypatch):
    # Poison step 3's loss; checkpoints fall on even steps, so the one at step 4 must not be
    # written although step 4 was dispatched before step 3's loss was read.
    real = trainer_steps.make_train_step

    def poisoned(*args):
        step = real(*args)

        def run(state, batch):
            state, metrics = step(state, batch)
            loss = jax.numpy.where(state.step == 3, jax.numpy.nan, metrics["loss"])
            return state, {**metrics, "loss": loss}
        return run

    for module in (trainer_steps, placement, loop):  # wherever the loop reads it from
        if hasattr(module, "make_train_step"):
            monkeypatch.setattr(module, "make_train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"^step 3: loss is nan; stopping. The last good "
                                               r"checkpoint \(step 2\) is kept in "):
        run_training(tmp_path, "gpt2-tiny", steps=4, checkpoint_period=2)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert not prefetch_threads()  # the batch thread ended with the run


def test_step_metrics_stop_at_the_first_bad_step_and_report_the_good_ones():
    read, make_error = [], lambda step, loss: TrainingDiverged(f"step {step}: loss is {loss}")
    pending = StepMetrics(lambda step, metrics, seconds: read.append((step, metrics["loss"])),
                          make_error)
    for step, loss in enumerate([2.0, 1.5, float("nan"), 1.0], start=1):
        pending.before_dispatch()
        pending.add(step, {"loss": jax.numpy.float32(loss)})
    pending.read_until(1)
    assert read == [(1, 2.0)]
    with pytest.raises(TrainingDiverged, match="step 3: loss is nan"):
        pending.read_until(4)
    assert read == [(1, 2.0), (2, 1.5)]


class Numbers:
    """An endless source that can be told to fail, counting what it produced."""

    def __init__(self, fail_at=None):
        self.produced, self.fail_at = 0, fail_at

    def __next__(self):
        if self.produced == self.fail_at:
            raise OSError(f"disk gone at batch {self.produced}")
        self.produced += 1
        return self.produced


def test_prefetch_counts_what_was_taken_and_raises_the_threads_error():
    source = Numbers(fail_at=5)
    prefetcher = Prefetcher(source, lambda n: n * 10, depth=2, position=7)
    assert [next(prefetcher) for _ in range(3)] == [10, 20, 30]
    deadline = time.time() + 10
    while source.produced < 5 and time.time() < deadline:  # it reads ahead of the consumer
        time.sleep(0.01)
    assert prefetcher.position == 10  # 7 before + 3 taken, however many are queued
    assert [next(prefetcher) for _ in range(2)] == [40, 50]
    with pytest.raises(OSError, match="disk gone at batch 5"):
        next(prefetcher)
    prefetcher.close()
    assert not prefetcher.alive


class SlowAfter(Numbers):
    """Numbers whose reads after the `fast`-th take `seconds` each (a new epoch's shuffle)."""

    def __init__(self, fast, seconds):
        super().__init__()
        self.fast, self.seconds = fast, seconds

    def __next__(self):
        if self.produced >= self.fast:
            time.sleep(self.seconds)
        return super().__next__()


def test_prefetch_reads_no_batch_past_its_limit():
    # The loop takes 3 batches; a thread reading a 4th would make close() wait for it.
    source = SlowAfter(fast=3, seconds=5.0)
    prefetcher = Prefetcher(source, lambda n: n, depth=2, limit=3)
    assert [next(prefetcher) for _ in range(3)] == [1, 2, 3]
    began = time.perf_counter()
    prefetcher.close()
    assert time.perf_counter() - began < 1.0
    assert source.produced == 3 and not prefetcher.alive


def test_prefetch_thread_ends_when_the_consumer_is_interrupted():
    source = Numbers()
    with pytest.raises(KeyboardInterrupt):
        with Prefetcher(source, lambda n: n, depth=1) as prefetcher:
            next(prefetcher)
            time.sleep(0.05)  # the thread is now blocked on a full queue
            raise KeyboardInterrupt
    assert not prefetcher.alive


def test_memory_is_checked_before_anything_compiles(monkeypatch):
    model = build_model(get_preset("llama-tiny"))
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device: 2**20)  # a 1 MiB device
    compiled = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(a) or pytest.fail("jit"))
    with pytest.raises(memory.MemoryShortfall, match=r"per device on mesh 1 device"):
        placement.place(model, ExecutionConfig(), LENGTHS, 4, "adamw")
    with pytest.raises(NoMeshFits, match=r"no mesh over 1 devices fits; 1 device: .* GiB per"):
        placement.place(model, ExecutionConfig(mesh="auto"), LENGTHS, 4, "adamw")
    assert not compiled


def test_an_auto_mesh_needs_a_batch_that_splits(monkeypatch):
    model = build_model(get_preset("llama-tiny"))
    with pytest.raises(ValueError, match=r"microbatch.*does not split into 3 microbatches"):
        placement.place(model, ExecutionConfig(mesh=MeshConfig(), microbatches=3),
                        LENGTHS, 4, "adamw")
    with pytest.raises(NoMeshFits, match=r"batch 4 does not split over data x fsdp x "
                                         r"microbatches = 3"):
        placement.place(model, ExecutionConfig(mesh="auto", microbatches=3), LENGTHS, 4,
                        "adamw")


def test_execution_settings_rebuild_the_model_and_warn_when_they_replace_its_own(caplog):
    model = build_model(get_preset("llama-tiny", {"remat": "block"}))
    same = placement.model_for(model, ExecutionConfig(remat="block"))
    assert same is model
    changed = placement.model_for(model, ExecutionConfig(dtype="bfloat16"))
    assert (changed.config.dtype, changed.config.remat) == ("bfloat16", "none")
    assert "remat='block' is replaced by the execution settings' 'none'" in caplog.text


def test_opt_state_is_laid_out_like_its_parameters():
    model = build_model(get_preset("llama-tiny"))
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"))
    params = model.abstract_params()
    shardings = jax.tree.map(lambda x: jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("fsdp", *[None] * (len(x.shape) - 1))), params)
    laid = {}
    for name in ("adamw", "adafactor"):
        optimizer = optim.make_optimizer(optim.OptimizerConfig(name, optim.ScheduleConfig(1e-3)),
                                         model.logical_axes())
        state = jax.eval_shape(optimizer.init, params)
        laid[name] = [(jax.tree_util.keystr(path), leaf.shape, sharding.spec)
                      for (path, leaf), sharding in zip(
                          jax.tree_util.tree_flatten_with_path(state)[0],
                          jax.tree.leaves(placement.opt_state_shardings(state, params, shardings,
                                                                        mesh)))]
    # AdamW: mu and nu shard like their parameters, the step count is replicated.
    sharded = [shape for path, shape, spec in laid["adamw"] if spec and spec[0] == "fsdp"]
    assert sorted(sharded) == sorted([x.shape for x in jax.tree.leaves(params)] * 2)
    assert all(spec == jax.sharding.PartitionSpec() for path, shape, spec in laid["adamw"]
               if "count" in path)
    # Adafactor: an unfactored second moment of a parameter's shape shards like it.
    wo = [spec for path, shape, spec in laid["adafactor"] if "['mlp']['wo']" in path
          and path.endswith(".v")]
    assert wo and wo[0][0] == "fsdp"
