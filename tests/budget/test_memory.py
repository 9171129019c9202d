"""Memory estimates: optimizer state against optax's own state shapes, KV cache, chips that fit."""

import math

import jax
import optax
import pytest

from arch_compare.budget import (kv_cache_bytes, optimizer_state_bytes, parameter_tensors,
                                 training_memory)
from arch_compare.budget.memory import TrainingMemory, activation_bytes, min_chips
from arch_compare.models import PRESETS, get_preset

OPTAX_OPTIMIZERS = {"adamw": lambda: optax.adamw(1e-3),
                    "adafactor": lambda: optax.adafactor(1e-3)}


def optax_state_bytes(name: str, preset: str) -> int:
    """optax's own state for the model's parameters, each kernel seen as its matmul's matrix."""
    params = {tensor.path: jax.ShapeDtypeStruct(tensor.matrix_shape, "float32")
              for tensor in parameter_tensors(PRESETS[preset])}
    state = jax.eval_shape(OPTAX_OPTIMIZERS[name]().init, params)
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))


@pytest.mark.parametrize("preset", ["llama-7b", "t5.1.1-xxl", "gpt2-xl", "llama-tiny"])
@pytest.mark.parametrize("name", list(OPTAX_OPTIMIZERS))
def test_optimizer_state_matches_optax(name, preset):
    ours = optimizer_state_bytes(PRESETS[preset], name)
    # optax also keeps a step counter and one-element placeholders for unused statistics
    assert optax_state_bytes(name, preset) - ours in range(0, 4096)


def test_adafactor_is_far_smaller_than_adam():
    cfg = PRESETS["t5.1.1-xxl"]
    q = next(t for t in parameter_tensors(cfg) if t.path == "encoder/blocks/self_attention/q/kernel")
    assert q.shape == (24, 4096, 64, 64) and q.matrix_shape == (24, 4096, 4096)
    assert optimizer_state_bytes(cfg, "adafactor") < optimizer_state_bytes(cfg, "adamw") / 50


def test_kv_cache_counts_grouped_heads():
    llama2_70b = PRESETS["llama2-70b"]  # 80 layers, 8 KV heads of 128
    assert kv_cache_bytes(llama2_70b.replace(dtype="bfloat16"), 0, 4096, 1) == (
        2 * 80 * 8 * 128 * 4096 * 2)
    t5 = PRESETS["t5-small"]  # decoder self cache over targets + cross cache over inputs
    assert kv_cache_bytes(t5, 512, 128, 4) == 4 * (512 + 128) * 2 * 6 * 8 * 64 * 4


def test_rematerialisation_saves_activations():
    cfg = get_preset("llama-7b", {"dtype": "bfloat16"})
    full = activation_bytes(cfg, 0, 2048, batch_size=1)
    remat = activation_bytes(cfg, 0, 2048, batch_size=1, remat=True)
    assert remat < full / 10
    assert activation_bytes(cfg, 0, 2048, batch_size=4) == 4 * full


def test_fewest_chips_that_fit():
    gib = 2**30
    memory = TrainingMemory(weights=40 * gib, gradients=40 * gib, optimizer_state=80 * gib,
                            activations=64 * gib)
    hbm = 80 * gib / 0.9  # 80 GiB usable per chip
    assert min_chips(memory, hbm, batch_size=32, sharding="fsdp") == 3  # 224 GiB / 80
    assert min_chips(memory, hbm, batch_size=32, sharding="data") is None  # 160 GiB state
    small = TrainingMemory(weights=gib, gradients=gib, optimizer_state=2 * gib,
                           activations=200 * gib)
    assert min_chips(small, hbm, batch_size=32, sharding="data") == 3  # 4 + 200/3 <= 80
    # one example per chip at most: past the batch size only the sharded state shrinks
    wide = TrainingMemory(weights=400 * gib, gradients=400 * gib, optimizer_state=800 * gib,
                          activations=2 * 70 * gib)
    assert min_chips(wide, hbm, batch_size=2, sharding="fsdp") == 160
    with pytest.raises(ValueError, match="sharding"):
        min_chips(memory, hbm, batch_size=2, sharding="tensor")


def test_training_memory_parts():
    memory = training_memory(PRESETS["gpt2-xl"], 0, 1024, batch_size=8, optimizer="adamw")
    params = 1_557_611_200
    assert memory.weights == memory.gradients == 4 * params
    assert memory.optimizer_state == 8 * params
    assert memory.total == memory.state + memory.activations
