"""The trainer side of the fine-tuning recipes: L2-SP's penalty and LoRA's trainable subset."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arch_compare import optim
from arch_compare.budget import memory
from arch_compare.budget import recipes as budget_recipes
from arch_compare.models import build_model, get_preset, lora
from arch_compare.models.hf.checkpoint import CheckpointError
from arch_compare.models.native import save_model
from arch_compare.recipes import LoraConfig, Recipe
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig
from arch_compare.trainer.recipes import (FULL, StepRecipe, join_trees, l2sp_gradient,
                                          l2sp_penalty, split_tree, step_recipe)
from arch_compare.trainer.steps import make_init_state, make_train_step
from tests.multidevice_helpers import run_with_fake_devices
from tests.trainer.conftest import LENGTHS, TASK

ADAMW = optim.OptimizerConfig("adamw", optim.ScheduleConfig(3e-3))


def random_batch(seed: int, batch: int = 4, length: int = 24, vocab: int = 256) -> dict:
    """A decoder-only batch of random tokens, some positions weighted 0 (as prompts are)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (batch, length + 1)).astype(np.int32)
    weights = (rng.random((batch, length)) < 0.7).astype(np.int32)
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": weights}


def recording_optimizer() -> optax.GradientTransformation:
    """Leaves the parameters alone and keeps the step's gradients as its state: what the
    optimizer was handed, exactly."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


@pytest.fixture(scope="module")
def gpt2_tiny():
    model = build_model(get_preset("gpt2-tiny"))
    return model, model.init(jax.random.key(0)), model.init(jax.random.key(1))


# -------------------------------------------------------------------------------------------------
# Trees and the penalty


def test_split_and_join_are_inverse_and_keep_every_leaf_once():
    tree = {"a": {"kernel": 1, "lora_a": 2, "lora_b": 3}, "b": {"scale": 4}, "c": (5, 6)}
    frozen, trained = split_tree(tree, lambda path: path[-1].startswith("lora"))
    assert frozen == {"a": {"kernel": 1}, "b": {"scale": 4}, "c": (5, 6)}
    assert trained == {"a": {"lora_a": 2, "lora_b": 3}}
    assert join_trees(frozen, trained) == tree
    assert FULL.split(tree) == ({}, tree) and FULL.join({}, tree) is tree


def test_penalty_and_gradient_match_numpy(gpt2_tiny):
    _, params, anchor = gpt2_tiny
    weight = 0.37
    expected = weight * sum(np.sum((np.asarray(p, np.float64) - np.asarray(a, np.float64)) ** 2)
                            for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor)))
    assert float(l2sp_penalty(params, anchor, weight)) == pytest.approx(expected, rel=1e-5)
    by_autodiff = jax.grad(lambda p: l2sp_penalty(p, anchor, weight))(params)
    for got, auto, p, a in zip(jax.tree.leaves(l2sp_gradient(params, anchor, weight)),
                               jax.tree.leaves(by_autodiff), jax.tree.leaves(params),
                               jax.tree.leaves(anchor)):
        reference = 2 * weight * (np.asarray(p, np.float64) - np.asarray(a, np.float64))
        np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got, auto, rtol=1e-6, atol=1e-9)


def test_the_step_adds_the_penalty_gradient_after_normalising(gpt2_tiny):
    """The optimizer gets the token loss's gradient plus 2 * weight * (theta - theta_base),
    unscaled by tokens or microbatches; the metric is the penalty itself."""
    model, params, anchor = gpt2_tiny
    microbatches = 2
    optimizer, schedule, weight = recording_optimizer(), optim.make_schedule(ADAMW.schedule), 0.05
    batch = random_batch(0)
    state = make_init_state(optimizer)(params)
    plain = jax.jit(make_train_step(model, optimizer, schedule, microbatches))
    penalised = jax.jit(make_train_step(model, optimizer, schedule, microbatches,
                                        StepRecipe(l2sp_weight=weight)))
    plain_state, plain_metrics = plain(state, batch)
    l2sp_state, l2sp_metrics = penalised(state, batch, anchor)
    for got, token_grad, p, a in zip(*map(jax.tree.leaves, (
            l2sp_state.opt_state, plain_state.opt_state, params, anchor))):
        expected = np.asarray(token_grad, np.float64) + 2 * weight * (
            np.asarray(p, np.float64) - np.asarray(a, np.float64))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert float(l2sp_metrics["loss"]) == float(plain_metrics["loss"])  # the token loss only
    assert float(l2sp_metrics["l2sp_penalty"]) == pytest.approx(
        float(l2sp_penalty(params, anchor, weight)), rel=1e-6)


def test_weight_zero_runs_the_penalty_and_equals_full_fine_tuning():
    """Step for step: the same losses (to 1e-6) and weights (to 1e-6, against moves of 1e-2).
    Not bitwise: with the penalty's add in the program XLA fuses the step's elementwise
    arithmetic differently, and from the second step (the first with nonzero Adam moments)
    weights differ by float32 rounding. LLaMA, not GPT-2: attention's key bias has an exactly
    zero gradient, so Adam amplifies that rounding noise into lr-sized, noise-directed moves of
    that bias (which change no output)."""
    model = build_model(get_preset("llama-tiny"))
    params, anchor = model.init(jax.random.key(0)), model.init(jax.random.key(1))
    optimizer = optim.make_optimizer(ADAMW, model.logical_axes())
    schedule = optim.make_schedule(ADAMW.schedule)
    full = jax.jit(make_train_step(model, optimizer, schedule))
    zero = jax.jit(make_train_step(model, optimizer, schedule, recipe=StepRecipe(l2sp_weight=0.)))
    full_state, zero_state = make_init_state(optimizer)(params), make_init_state(optimizer)(params)
    losses = []
    for step in range(4):
        full_state, full_metrics = full(full_state, random_batch(step))
        zero_state, zero_metrics = zero(zero_state, random_batch(step), anchor)
        assert float(zero_metrics["loss"]) == pytest.approx(float(full_metrics["loss"]), rel=1e-6)
        assert float(zero_metrics["l2sp_penalty"]) == 0.0
        losses.append(float(full_metrics["loss"]))
    jax.tree.map(lambda z, f: np.testing.assert_allclose(z, f, rtol=0, atol=1e-6), zero_state,
                 full_state)
    assert len(set(losses)) == 4 and largest_move(full_state.params, params) > 5e-3  # it trained


def test_step_refuses_a_missing_or_unexpected_anchor(gpt2_tiny):
    model, params, anchor = gpt2_tiny
    optimizer = recording_optimizer()
    state = make_init_state(optimizer)(params)
    step = make_train_step(model, optimizer, optim.make_schedule(ADAMW.schedule))
    with pytest.raises(ValueError, match="anchor exactly when"):
        step(state, random_batch(0), anchor)
    with pytest.raises(ValueError, match="anchor exactly when"):
        make_train_step(model, optimizer, optim.make_schedule(ADAMW.schedule),
                        recipe=StepRecipe(l2sp_weight=1.0))(state, random_batch(0))


# -------------------------------------------------------------------------------------------------
# The config


@pytest.mark.parametrize("fields, message", [
    ({"l2sp_weight": -1.0}, "l2sp_weight must be a finite number >= 0"),
    ({"l2sp_weight": float("nan")}, "l2sp_weight must be a finite number >= 0"),
    ({"l2sp_weight": 0.5}, "l2sp_weight=0.5 needs initial_checkpoint_path"),
    ({"lora": {"rank": 4}}, "lora needs initial_checkpoint_path"),
    ({"lora": {"rank": 4}, "l2sp_weight": 1.0, "initial_checkpoint_path": "x"},
     "separate recipes"),
    ({"lora": {"rnak": 4}, "initial_checkpoint_path": "x"}, "unknown key.*rnak"),
])
def test_recipe_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model_dir="unused", data=DataConfig(TASK, LENGTHS, 4), train_steps=1,
                    optimizer=ADAMW, **fields)


# -------------------------------------------------------------------------------------------------
# Whole runs


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """gpt2-tiny's random weights (seed 5) as a native checkpoint: the base of every run here."""
    model = build_model(get_preset("gpt2-tiny"))
    params = model.init(jax.random.key(5))
    path = tmp_path_factory.mktemp("base") / "gpt2-tiny"
    save_model(path, model, params)
    return str(path), params


def largest_move(params, base) -> float:
    return max(float(np.max(np.abs(np.asarray(p) - np.asarray(b))))
               for p, b in zip(jax.tree.leaves(params), jax.tree.leaves(base)))


@pytest.mark.scale  # two 8-step runs and a resume: make test-scale
def test_a_large_l2sp_weight_keeps_every_weight_near_the_base_and_resumes_exactly(
        tmp_path, run_training, base_checkpoint):
    path, base = base_checkpoint
    steps = 8
    free = run_training(tmp_path / "free", "gpt2-tiny", steps=steps,
                        initial_checkpoint_path=path)
    held = run_training(tmp_path / "held", "gpt2-tiny", steps=steps, l2sp_weight=1e4,
                        initial_checkpoint_path=path)
    # Adam moves a weight by about the learning rate (3e-3) per step, so the free run drifts by
    # up to steps x lr; the penalty's gradient (2e4 per unit of drift) swamps the token loss's
    # after a step and pulls every weight back toward its base.
    free_move, held_move = largest_move(free.state.params, base), largest_move(held.state.params,
                                                                               base)
    print(f"largest move from the base: l2sp {held_move:.2e}, free {free_move:.2e}")
    assert held_move < 4e-3 and free_move > 5 * held_move, (held_move, free_move)
    lines = [json.loads(line) for line in (tmp_path / "held" / "metrics.jsonl").read_text()
             .splitlines()]
    assert all(line["l2sp_penalty"] >= 0 for line in lines) and lines[0]["l2sp_penalty"] == 0.0
    record = json.loads((tmp_path / "held" / "execution.json").read_text())["recipe"]
    count = sum(leaf.size for leaf in jax.tree.leaves(base))
    assert record["l2sp_weight"] == 1e4 and record["lora"] is None
    assert record["trainable_params"] == held.trainable_params == count == record["params"]
    # The memory check priced the anchor and the penalty's gradient, which XLA holds beside the
    # loss's backward pass: two more float32 copies of the weights (one device).
    assert (held.execution["estimated_bytes_per_device"]
            - free.execution["estimated_bytes_per_device"]) == 8 * count

    # Stopped at step 4 and resumed: the anchor is read again, the steps are the same bits.
    run_training(tmp_path / "resumed", "gpt2-tiny", steps=4, l2sp_weight=1e4,
                 initial_checkpoint_path=path)
    resumed = run_training(tmp_path / "resumed", "gpt2-tiny", steps=steps, l2sp_weight=1e4,
                           initial_checkpoint_path=path)
    assert resumed.resumed_from == 4
    assert [resumed.losses[s] for s in range(5, steps + 1)] == [
        held.losses[s] for s in range(5, steps + 1)]
    jax.tree.map(np.testing.assert_array_equal, resumed.state, held.state)
    with pytest.raises(CheckpointError, match=r"another recipe \(l2sp_weight: 10000.0 there, 1.0"):
        run_training(tmp_path / "resumed", "gpt2-tiny", steps=steps + 1, l2sp_weight=1.0,
                     initial_checkpoint_path=path)


# -------------------------------------------------------------------------------------------------
# LoRA

LORA = LoraConfig(rank=4, alpha=8.0, dropout=0.1, targets=("q", "v", "mlp"),
                  base_dtype="bfloat16")
LORA_ADAMW = optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e-2), weight_decay=0.01)


def test_lora_trains_only_the_adapters_holds_the_base_in_bfloat16_and_resumes_exactly(
        tmp_path, run_training, base_checkpoint):
    path, base = base_checkpoint
    steps = 8
    straight = run_training(tmp_path / "straight", "gpt2-tiny", steps=steps, lora=LORA,
                            optimizer=LORA_ADAMW, initial_checkpoint_path=path)
    model = build_model(get_preset("gpt2-tiny")).with_lora(LORA)
    frozen, adapters = lora.split(straight.state.params)
    # The base weights: frozen, held in bfloat16, bitwise the checkpoint's rounded to it.
    jax.tree.map(lambda got, want: np.testing.assert_array_equal(
        got, np.asarray(jnp.asarray(want).astype(jnp.bfloat16))), frozen, base)
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(frozen)} == {"bfloat16"}
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(adapters)} == {"float32"}
    # The adapters trained: every B left zero, the loss went down.
    assert all(float(jnp.max(jnp.abs(b))) > 0 for b in jax.tree.leaves(adapters)
               if b.shape[-1] != LORA.rank)
    losses = [straight.losses[s] for s in range(1, steps + 1)]
    print("lora losses", [round(loss, 3) for loss in losses])
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses  # measured: 6.18 -> 6.00
    # Optimizer state for the adapters only: AdamW's mu and nu, each adapter-shaped.
    count = lora.adapter_count(model)
    assert straight.trainable_params == count == sum(leaf.size for leaf in
                                                     jax.tree.leaves(adapters))
    moments = [leaf for leaf in jax.tree.leaves(straight.state.opt_state) if leaf.ndim > 0]
    assert sum(leaf.size for leaf in moments) == 2 * count
    # ... and exactly the budget's figures for this recipe (issue 16).
    priced = Recipe("lora", "lora", lora=LORA)
    assert budget_recipes.trainable_parameters(model.config, priced) == count
    assert memory.optimizer_state_numbers(model.config, "adamw", priced) == 2 * count
    assert sorted(leaf.shape for leaf in moments) == sorted(
        2 * [leaf.shape for leaf in jax.tree.leaves(adapters)])
    record = json.loads((tmp_path / "straight" / "execution.json").read_text())["recipe"]
    assert LoraConfig(**record["lora"]) == LORA and record["trainable_params"] == count
    assert record["frozen_dtypes"] == ["bfloat16"]
    assert record["frozen_params"] == sum(leaf.size for leaf in jax.tree.leaves(base))

    # Stopped at step 4 and resumed: the same dropout keys and steps, to the bit.
    run_training(tmp_path / "resumed", "gpt2-tiny", steps=4, lora=LORA, optimizer=LORA_ADAMW,
                 initial_checkpoint_path=path)
    resumed = run_training(tmp_path / "resumed", "gpt2-tiny", steps=steps, lora=LORA,
                           optimizer=LORA_ADAMW, initial_checkpoint_path=path)
    assert resumed.resumed_from == 4
    assert [resumed.losses[s] for s in range(5, steps + 1)] == losses[4:]
    jax.tree.map(np.testing.assert_array_equal, resumed.state, straight.state)
    with pytest.raises(CheckpointError, match=r"another recipe \(lora: \{'rank': 4.* None now"):
        run_training(tmp_path / "resumed", "gpt2-tiny", steps=steps + 1,
                     initial_checkpoint_path=path)


def lora_step_setup(config: LoraConfig):
    """llama-tiny with adapters: the step recipe, its optimizer and a fresh state."""
    plain = build_model(get_preset("llama-tiny"))
    model = plain.with_lora(config)
    base = plain.init(jax.random.key(0))
    recipe = step_recipe(config, 0.0, seed=3)
    optimizer = optim.make_optimizer(ADAMW, recipe.split(model.logical_axes())[1])
    params = lora.join(base, lora.init_adapters(model, jax.random.key(1)))
    return model, recipe, optimizer, base, lambda: make_init_state(optimizer, recipe)(params)


def test_lora_microbatches_give_the_same_steps_and_dropout_keys_depend_on_seed_and_step():
    model, recipe, optimizer, base, fresh = lora_step_setup(
        LoraConfig(rank=4, targets=("q", "v", "mlp")))
    schedule = optim.make_schedule(ADAMW.schedule)
    results = {}
    for microbatches in (1, 2):
        step = jax.jit(make_train_step(model, optimizer, schedule, microbatches, recipe))
        state = fresh()
        losses = []
        for number in range(3):
            state, metrics = step(state, random_batch(number))
            losses.append(float(metrics["loss"]))
        results[microbatches] = (state, losses)
    (whole, whole_losses), (split, split_losses) = results[1], results[2]
    assert split_losses == pytest.approx(whole_losses, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), split, whole)
    jax.tree.map(np.testing.assert_array_equal, lora.split(split.params)[0], base)
    assert largest_move(lora.split(whole.params)[1],
                        lora.split(fresh().params)[1]) > 1e-3  # the adapters moved

    # Dropout: a key from the seed and the step (and the microbatch), nothing else.
    model, recipe, optimizer, _, fresh = lora_step_setup(
        LoraConfig(rank=4, targets=("q", "v", "mlp"), dropout=0.5))
    assert recipe.dropout_seed == 3
    step = jax.jit(make_train_step(model, optimizer, schedule, 2, recipe))
    trained = step(step(fresh(), random_batch(0))[0], random_batch(1))
    again = step(step(fresh(), random_batch(0))[0], random_batch(1))
    jax.tree.map(np.testing.assert_array_equal, trained, again)
    assert float(trained[1]["loss"]) != pytest.approx(split_losses[1], rel=1e-4)


MULTIDEVICE_SOURCE = """
import json
import jax, numpy as np
from arch_compare import optim
from arch_compare.budget import memory
from arch_compare.budget import recipes as budget_recipes
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.execution import ExecutionConfig
from arch_compare.models import build_model, get_preset, lora
from arch_compare.models.hf.checkpoint import CheckpointError
from arch_compare.models.native import save_model
from arch_compare.partitioning import MeshConfig
from arch_compare.recipes import LoraConfig, Recipe
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train
import arch_compare_tasks.catalogue

root, vocabulary_path = {root!r}, {vocabulary!r}
config = get_preset("llama-tiny", {{"num_heads": 8, "head_dim": 8, "num_kv_heads": 8}})
model = build_model(config)
save_model(f"{{root}}/base", model, model.init(jax.random.key(5)))
report, adapters = {{}}, {{}}
for mesh in [(1, 1, 1), (2, 2, 2)]:
    name = "x".join(map(str, mesh))
    result = train(model, vocabulary_for_model(config, vocabulary_path), TrainConfig(
        model_dir=f"{{root}}/{{name}}", train_steps=3, checkpoint_period=3,
        data=DataConfig("imitation_sharegpt_fixture", {{"inputs": 64, "targets": 32}},
                        batch_size=8),
        optimizer=optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e-2)),
        execution=ExecutionConfig(mesh=MeshConfig(*mesh), microbatches=2),
        initial_checkpoint_path=f"{{root}}/base",
        lora=LoraConfig(rank=4, dropout=0.1, targets=("q", "v", "mlp"))), progress=False)
    trained = lora.split(result.state.params)[1]
    adapters[name] = jax.tree.map(np.asarray, trained)
    q_b = trained["decoder"]["blocks"]["self_attention"]["q"]["lora_b"]
    mu = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(result.state.opt_state)[0]
          if "mu" in jax.tree_util.keystr(path) and "['q']['lora_b']" in jax.tree_util.keystr(path)]
    report[name] = {{"losses": [result.losses[s] for s in (1, 2, 3)],
                    "q_b_global": list(q_b.shape),
                    "q_b_shard": list(q_b.addressable_shards[0].data.shape),
                    "mu_q_b_shard": list(mu[0].addressable_shards[0].data.shape),
                    "devices": len(q_b.sharding.device_set)}}
report["largest_adapter_difference"] = max(
    float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(adapters["1x1x1"]),
                                                   jax.tree.leaves(adapters["2x2x2"])))
print(json.dumps(report))
"""


@pytest.mark.scale  # two LoRA runs on 8 fake devices: 102 s on 2 cores at load 6 (others)
def test_a_lora_run_on_eight_devices_equals_one_device(tmp_path, sentencepiece_model_path):
    """Adapters sharded by the same rules (q's B [layers, rank, heads, kv]: heads over tensor),
    dropout masks the same on any mesh (JAX's partitionable threefry), microbatches on."""
    report = run_with_fake_devices(MULTIDEVICE_SOURCE.format(
        root=str(tmp_path), vocabulary=str(sentencepiece_model_path)))
    single, sharded = report["1x1x1"], report["2x2x2"]
    print(f"losses {single['losses']} (1 device) {sharded['losses']} (8); adapters differ by "
          f"at most {report['largest_adapter_difference']:.1e}")
    assert sharded["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert report["largest_adapter_difference"] < 1e-5
    assert single["losses"][-1] < single["losses"][0]
    layers, rank, heads, kv = sharded["q_b_global"]
    assert sharded["devices"] == 8 and single["devices"] == 1
    assert sharded["q_b_shard"] == [layers, rank, heads // 2, kv]
    assert sharded["mu_q_b_shard"] == sharded["q_b_shard"]
