"""The preference step: microbatches and devices do not change it, it learns the preferences of
a fixed pair set, and LoRA trains the adapters only."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import optax
import pytest

from arch_compare import optim
from arch_compare.models import build_model, get_preset, lora
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.recipes import LoraConfig
from arch_compare.trainer.preference_steps import (make_preference_step, pair_sums,
                                                   reference_logps)
from arch_compare.trainer.recipes import FULL, step_recipe
from arch_compare.trainer.steps import make_init_state
from tests.multidevice_helpers import run_with_fake_devices
from tests.preference.token_pairs import make_pairs, pair_batch, random_lengths

ADAMW = optim.OptimizerConfig("adamw", optim.ScheduleConfig(3e-3))
# Parameters are compared after SGD steps: Adam divides by the root of the second moment, so a
# weight whose gradient is 0 in exact arithmetic (GPT-2's key bias: softmax ignores a shift of a
# query's scores) moves by lr * sign(rounding noise), and two summation orders differ by up to
# 2 * lr there while the gradients agree to 1e-9. SGD's update is linear in the gradient.
SGD_LR = 0.1
PRESETS = ("gpt2-tiny", "t5-tiny")
LONGEST = 8  # tokens in a prompt or an answer: every batch has the same shapes (one compile)


@functools.cache
def score(model):
    return jax.jit(lambda params, batch: reference_logps(model, params, batch))


def pairs_with_reference(model, reference_params, count: int, seed: int) -> dict:
    """`count` random pairs with their reference log-probabilities under `reference_params`."""
    vocab = model.config.vocab_size
    batch = pair_batch(make_pairs(vocab, random_lengths(count, seed, LONGEST), seed),
                       model.config.is_encoder_decoder, LONGEST)
    chosen, rejected = score(model)(reference_params, batch)
    return {**batch, "reference_chosen_logps": chosen, "reference_rejected_logps": rejected}


def evaluate(model, config, params, batch) -> dict[str, float]:
    """Loss and metrics (means over pairs) of `params` on `batch`, no update."""
    sums = jax.jit(lambda p, b: pair_sums(model, config, p, b))(params, batch)
    means = {k: float(v) / float(sums["pairs"]) for k, v in sums.items()}
    return {"loss": means.pop("loss_sum"), **means}


def setup(preset: str, recipe=FULL, lora_config=None):
    plain = build_model(get_preset(preset))
    model = plain if lora_config is None else plain.with_lora(lora_config)
    base = plain.init(jax.random.key(0))
    params = base if lora_config is None else lora.join(
        base, lora.init_adapters(model, jax.random.key(1)))
    optimizer = optim.make_optimizer(ADAMW, recipe.split(model.logical_axes())[1])
    return model, base, params, optimizer


@pytest.mark.scale  # an equivalence, like the multi-device ones (46 s for both models)
@pytest.mark.parametrize("preset", PRESETS)
def test_two_microbatches_give_the_same_steps_as_one(preset):
    model, _, params, _ = setup(preset)
    optimizer = optax.sgd(SGD_LR)
    reference = model.init(jax.random.key(7))  # another model: the reference term matters
    config = PreferenceConfig("dpo", beta=0.5, label_smoothing=0.1)
    schedule = optim.make_schedule(ADAMW.schedule)
    batches = [pairs_with_reference(model, reference, 4, seed) for seed in range(3)]
    results = {}
    for microbatches in (1, 2):
        step = jax.jit(make_preference_step(model, optimizer, schedule, config, microbatches))
        state = make_init_state(optimizer)(params)
        history = []
        for batch in batches:
            state, metrics = step(state, batch)
            history.append({k: float(v) for k, v in metrics.items()})
        results[microbatches] = (state, history)
    (whole, whole_history), (split, split_history) = results[1], results[2]
    for a, b in zip(whole_history, split_history):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert whole_history[0]["pairs"] == 4
    differences = jax.tree.leaves(jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), whole, split))
    print(f"{preset}: 1 vs 2 microbatches, max parameter difference after 3 steps "
          f"{max(differences):.2e}; losses {[round(h['loss'], 4) for h in whole_history]}")
    assert max(differences) < 1e-5


def test_padding_rows_change_nothing():
    """Rows with all loss weights 0 (how a data set's last batch is filled) are no pairs: the
    step on 4 pairs + 4 such rows is the step on the 4 pairs."""
    model, _, params, _ = setup("gpt2-tiny")
    reference = model.init(jax.random.key(7))
    optimizer = optax.sgd(SGD_LR)
    step = jax.jit(make_preference_step(model, optimizer, optax.constant_schedule(SGD_LR),
                                        PreferenceConfig("dpo", beta=0.5)))
    full = pairs_with_reference(model, reference, 8, seed=5)
    half = jax.tree.map(lambda x: x[:4], full)
    padding = jax.tree.map(lambda x: np.asarray(x).copy(), full)
    for side in ("chosen", "rejected"):
        padding[side]["decoder_loss_weights"][4:] = 0
    results = []
    for batch in (half, padding):
        state, metrics = step(make_init_state(optimizer)(params), batch)
        results.append((state.params, {k: float(v) for k, v in metrics.items()}))
    (half_params, half_metrics), (padded_params, padded_metrics) = results
    assert padded_metrics["pairs"] == 4
    for key, value in half_metrics.items():
        assert padded_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), padded_params,
                 half_params)


@pytest.mark.parametrize("preset", [PRESETS[0], *[pytest.param(preset, marks=pytest.mark.scale)
                                                    for preset in PRESETS[1:]]])
def test_steps_learn_the_preferences_of_a_fixed_pair_set(preset):
    model, _, params, optimizer = setup(preset)
    config = PreferenceConfig("dpo", beta=0.5)
    batch = pairs_with_reference(model, params, 8, seed=3)  # reference = the starting policy
    before = evaluate(model, config, params, batch)
    # The policy is its reference: every reward is 0 (up to rounding, so which pairs count as
    # won is a coin flip), and the loss is log 2.
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["reward_chosen"] == pytest.approx(0.0, abs=1e-5)
    assert before["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    step = jax.jit(make_preference_step(model, optimizer, optim.make_schedule(ADAMW.schedule),
                                        config))
    state = make_init_state(optimizer)(params)
    for _ in range(10):
        state, _ = step(state, batch)
    after = evaluate(model, config, state.params, batch)
    print(f"{preset}: 10 DPO steps on 8 pairs: loss {before['loss']:.4f} -> {after['loss']:.4f}, "
          f"margin {before['reward_margin']:.3f} -> {after['reward_margin']:.3f}, accuracy "
          f"{before['preference_accuracy']:.2f} -> {after['preference_accuracy']:.2f}, "
          f"chosen logps {before['logps_chosen']:.2f} -> {after['logps_chosen']:.2f}, "
          f"rejected {before['logps_rejected']:.2f} -> {after['logps_rejected']:.2f}")
    assert after["preference_accuracy"] == 1.0
    assert after["reward_margin"] > 1.0
    assert after["loss"] < 0.5 * math.log(2)
    # DPO moves the two answers apart: the rejected ones lose probability.
    assert after["logps_rejected"] < before["logps_rejected"]


def test_lora_recipe_trains_only_the_adapters():
    lora_config = LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "mlp"))
    recipe = step_recipe(lora_config, 0.0, seed=3)
    model, base, params, optimizer = setup("llama-tiny", recipe, lora_config)
    config = PreferenceConfig("ipo", beta=0.5)
    batch = pairs_with_reference(model, params, 8, seed=4)
    before = evaluate(model, config, params, batch)
    step = jax.jit(make_preference_step(model, optimizer, optim.make_schedule(ADAMW.schedule),
                                        config, microbatches=2, recipe=recipe))
    state = make_init_state(optimizer, recipe)(params)
    # Optimizer state exists for the adapters only.
    assert sum(x.size for x in jax.tree.leaves(state.opt_state)) < 3 * lora.adapter_count(model)
    for _ in range(10):
        state, _ = step(state, batch)
    after = evaluate(model, config, state.params, batch)
    frozen, adapters = lora.split(state.params)
    jax.tree.map(np.testing.assert_array_equal, frozen, base)
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                zip(jax.tree.leaves(adapters), jax.tree.leaves(lora.split(params)[1])))
    print(f"LoRA IPO: loss {before['loss']:.4f} -> {after['loss']:.4f}, margin "
          f"{before['reward_margin']:.3f} -> {after['reward_margin']:.3f}, accuracy "
          f"{after['preference_accuracy']:.2f}; largest adapter move {moved:.3f}")
    assert moved > 1e-3
    assert after["loss"] < before["loss"]
    assert after["reward_margin"] > before["reward_margin"]


MULTIDEVICE_SOURCE = """
import json
import jax, numpy as np, optax
from arch_compare import partitioning
from arch_compare.models import build_model, get_preset
from arch_compare.partitioning import MeshConfig, make_mesh, param_shardings
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.trainer.placement import train_state_shardings
from arch_compare.trainer.preference_steps import make_preference_step, reference_logps
from arch_compare.trainer.steps import make_init_state
from tests.preference.token_pairs import make_pairs, pair_batch, random_lengths

model = build_model(get_preset({preset!r}, {overrides!r}))
params = model.init(jax.random.key(0))
reference = model.init(jax.random.key(7))
optimizer = optax.sgd({sgd_lr})  # see SGD_LR
schedule = optax.constant_schedule({sgd_lr})
config = PreferenceConfig("dpo", beta=0.5, label_smoothing=0.1)
batches = []
score = jax.jit(lambda p, b: reference_logps(model, p, b))
for seed in range(3):
    batch = pair_batch(make_pairs(model.config.vocab_size, random_lengths(8, seed), seed),
                       model.config.is_encoder_decoder, 8)
    chosen, rejected = score(reference, batch)
    batches.append({{**batch, "reference_chosen_logps": np.asarray(chosen),
                    "reference_rejected_logps": np.asarray(rejected)}})

def run(mesh_shape, microbatches):
    step = make_preference_step(model, optimizer, schedule, config, microbatches)
    if mesh_shape is None:  # one device, no shardings
        step, state = jax.jit(step), make_init_state(optimizer)(params)
        place = lambda batch: batch
        devices = 1
    else:
        mesh = make_mesh(MeshConfig(*mesh_shape))
        shardings = param_shardings(model.logical_axes(), model.abstract_params(), mesh)
        state_shardings = train_state_shardings(model, optimizer, shardings, mesh)
        batch_sharding = partitioning.batch_sharding(mesh)
        state = jax.jit(make_init_state(optimizer), out_shardings=state_shardings)(
            partitioning.shard_params(params, shardings))
        step = partitioning.on_mesh(mesh, jax.jit(
            step, in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, None)))
        place = lambda batch: jax.tree.map(
            lambda x: partitioning.global_array(x, batch_sharding), batch)
        devices = len(mesh.devices.flat)
    history = []
    for batch in batches:
        state, metrics = step(state, place(batch))
        history.append({{k: float(v) for k, v in metrics.items()}})
    q = state.params["decoder"]["blocks"]["self_attention"]["q"]["kernel"]
    return {{"history": history, "devices": devices,
            "q_shard": list(q.addressable_shards[0].data.shape), "q_global": list(q.shape),
            "params": [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)]}}

report = {{"1": run(None, 1), "8x1x1": run((8, 1, 1), 1), "2x2x2": run((2, 2, 2), 1),
          "2x2x2/2": run((2, 2, 2), 2), "1x1x8": run((1, 1, 8), 1)}}
print(json.dumps(report))
"""
MULTIDEVICE_CASES = {"gpt2-tiny": {"num_heads": 8}, "t5-tiny": {"num_heads": 8, "head_dim": 8}}


@pytest.mark.scale
@pytest.mark.parametrize("preset", list(MULTIDEVICE_CASES))
def test_eight_devices_step_like_one(preset):
    report = run_with_fake_devices(MULTIDEVICE_SOURCE.format(
        preset=preset, overrides=MULTIDEVICE_CASES[preset], sgd_lr=SGD_LR))
    single = report.pop("1")
    assert single["devices"] == 1
    for mesh, run in report.items():
        assert run["devices"] == 8, mesh
        for ours, theirs in zip(run["history"], single["history"]):
            for key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=1e-5), (mesh, key)
        worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(run["params"], single["params"]))
        print(f"{preset} {mesh}: losses {[round(h['loss'], 5) for h in run['history']]}, "
              f"max parameter difference from one device after 3 steps {worst:.2e}")
        assert worst < 1e-5, mesh
    # The meshes really shard: q kernel [layers, embed, heads, kv], heads over tensor.
    layers, embed, heads, kv = report["1x1x8"]["q_global"]
    assert report["1x1x8"]["q_shard"] == [layers, embed, heads // 8, kv]
    assert report["2x2x2"]["q_shard"] == [layers, embed // 2, heads // 2, kv]
