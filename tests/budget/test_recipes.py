"""The budget's price of each fine-tuning recipe: trainable parameters, FLOPs, memory, the CLI.

Counts are checked against hand arithmetic on the tiny presets (gpt2-tiny: d 64, 2 layers, 4 heads
x 16, d_ff 256; llama-tiny: 2 KV heads, gated d_ff 128; t5-tiny: 2 + 2 layers, cross-attention,
d_ff 128), and the adapter layout against the LoRA model's own tree and partition specs.
"""

import json

import pytest

from arch_compare.budget import RunSpec, estimate_run, forward_flops, parameter_tensors
from arch_compare.budget import recipes as budget_recipes
from arch_compare.budget.flops import adapter_forward_flops, kernel_tokens, training_flops
from arch_compare.budget.memory import (optimizer_state_bytes, optimizer_state_numbers,
                                        training_memory)
from arch_compare.cli import main
from arch_compare.models import PRESETS
from arch_compare.recipes import FULL, LoraConfig, Recipe

GPT2, LLAMA, T5 = PRESETS["gpt2-tiny"], PRESETS["llama-tiny"], PRESETS["t5-tiny"]
LORA = Recipe("lora", "lora")  # rank 8, alpha 16, q/k/v/o
L2SP = Recipe("l2sp", "l2sp", l2sp_weight=0.1)
MIX = Recipe("mix", "mix", mix_rate=0.25)
WISE = Recipe("wise", "wise", wise_alphas=(0.25, 0.5))


def lora(**settings) -> Recipe:
    return Recipe("lora", "lora", lora=LoraConfig(**settings))


def params(cfg) -> int:
    return sum(tensor.size for tensor in parameter_tensors(cfg))


# -------------------------------------------------------------------------------------------------
# Trainable parameters


@pytest.mark.parametrize("cfg, recipe, expected", [
    # rank x (fan_in + fan_out) per projection per layer
    (GPT2, LORA, 2 * 4 * 8 * (64 + 64)),  # q, k, v, o: 64 -> 4 x 16 and back
    (GPT2, lora(rank=4, targets=("mlp",)), 2 * 4 * ((64 + 256) + (256 + 64))),  # wi, wo
    # grouped KV heads: k and v project 64 -> 2 x 16
    (LLAMA, LORA, 2 * 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64))),
    (LLAMA, lora(rank=2, targets=("mlp",)), 2 * 2 * 3 * (64 + 128)),  # wi_0, wi_1, wo
    # encoder self-attention, decoder self- and cross-attention
    (T5, LORA, 2 * 4 * 8 * 128 + 2 * 8 * 8 * 128),
    # q and v in each attention, wo in each MLP: encoder 2 x (q, v, wo), decoder 2 x (4 + wo)
    (T5, lora(rank=4, targets=("q", "v", "wo")),
     2 * 4 * (2 * 128 + (128 + 64)) + 2 * 4 * (4 * 128 + (128 + 64))),
])
def test_lora_trains_rank_times_fan_in_plus_fan_out(cfg, recipe, expected):
    assert budget_recipes.trainable_parameters(cfg, recipe) == expected
    assert budget_recipes.frozen_tensors(cfg, recipe) == parameter_tensors(cfg)


@pytest.mark.parametrize("recipe", [FULL, MIX, L2SP])
def test_full_mix_and_l2sp_train_everything_and_wise_nothing(recipe):
    for cfg in (GPT2, LLAMA, T5):
        assert budget_recipes.trainable_parameters(cfg, recipe) == params(cfg)
        assert budget_recipes.frozen_tensors(cfg, recipe) == ()
    assert budget_recipes.trainable_parameters(GPT2, WISE) == 0


def test_a_target_the_model_lacks_is_an_error():
    with pytest.raises(ValueError, match=r"\['wi'\] name no projection of llama .*wi_0, wi_1"):
        budget_recipes.trainable_parameters(LLAMA, lora(targets=("wi",)))


def test_adapters_match_the_lora_models_tree_and_partition_specs():
    from flax import traverse_util

    from arch_compare import partitioning
    from arch_compare.budget.device_memory import adapter_shards, abstract_mesh
    from arch_compare.mesh_config import MeshConfig
    from arch_compare.models import build_model
    mesh = MeshConfig(fsdp=2, tensor=2)
    for cfg, recipe in ((LLAMA, lora(targets=("q", "k", "v", "o", "mlp"))), (T5, LORA)):
        model = build_model(cfg, recipe.lora)
        tree = traverse_util.flatten_dict(model.abstract_params(), sep="/")
        ours = {t.path: t.shape for t in budget_recipes.adapter_tensors(cfg, recipe.lora)}
        assert ours == {path: leaf.shape for path, leaf in tree.items()
                        if path.endswith(("/lora_a", "/lora_b"))}
        specs = traverse_util.flatten_dict(partitioning.param_partition_specs(
            model.logical_axes(), model.abstract_params(), abstract_mesh(mesh)), sep="/")
        for shard in adapter_shards(cfg, mesh, recipe.lora):
            ways = [1 if entry is None else mesh.shape[MESH_INDEX[entry]] if isinstance(
                entry, str) else 0 for entry in specs[shard.path]]
            assert tuple(size // way for size, way in zip(shard.shape, ways)) == \
                shard.shard_shape, shard.path


MESH_INDEX = {"data": 0, "fsdp": 1, "tensor": 2}


# -------------------------------------------------------------------------------------------------
# FLOPs


@pytest.mark.parametrize("cfg", [GPT2, LLAMA, T5, PRESETS["ul2-tiny"]])
def test_kernel_tokens_reproduce_the_forward_matmuls(cfg):
    """Each weight's matmul, 2 x tokens x size, summed, is forward_flops' weight matmuls: the
    tokens each kernel runs on (cross-attention k/v on inputs) are the forward pass's."""
    forward = forward_flops(cfg, 8, 24)
    total = 0
    for tensor in parameter_tensors(cfg):
        if tensor.path.endswith("/kernel") or (cfg.tie_embeddings
                                               and tensor.path == "token_embed/embedding"):
            total += 2 * tensor.size * kernel_tokens(cfg, tensor.path, 8, 24)
    assert total == forward.attention_projections + forward.mlp + forward.logits


def test_lora_flops_follow_the_formula_by_hand():
    # gpt2-tiny, 8 + 24 tokens, all four projections on all 32: 2 x tokens x adapter params
    assert adapter_forward_flops(GPT2, LORA.lora, 8, 24) == 2 * 32 * 8192
    # t5-tiny: encoder (8 tokens) 2 x 4 x 1024 adapter params; decoder self (24 tokens)
    # likewise; cross q and o on the 24 targets, k and v on the 8 encoder states
    r = 8 * 128  # one projection's adapter parameters
    by_hand = 2 * (2 * 8 * 4 * r + 2 * 24 * 4 * r + 2 * 24 * 2 * r + 2 * 8 * 2 * r)
    assert adapter_forward_flops(T5, LORA.lora, 8, 24) == by_hand
    for cfg in (GPT2, LLAMA, T5):
        forward = forward_flops(cfg, 8, 24)
        scores, weights = forward.attention_scores, forward.total - forward.attention_scores
        adapters = adapter_forward_flops(cfg, LORA.lora, 8, 24)
        lora_flops = training_flops(cfg, 8, 24, recipe=LORA)
        # frozen weights: forward + input gradient; scores: 3x; adapters: 3x
        assert lora_flops == pytest.approx(3 * scores + 2 * weights + 3 * adapters, rel=1e-12)
        assert lora_flops < training_flops(cfg, 8, 24)
        assert training_flops(cfg, 8, 24, remat=True, recipe=LORA) == pytest.approx(
            lora_flops + forward.total + adapters, rel=1e-12)
        for recipe in (MIX, L2SP):  # per token: the same as full
            assert training_flops(cfg, 8, 24, recipe=recipe) == training_flops(cfg, 8, 24)
    with pytest.raises(ValueError, match="trains nothing"):
        training_flops(GPT2, 8, 24, recipe=WISE)


def test_run_estimates_by_recipe():
    def run(recipe, **kwargs):
        return estimate_run(RunSpec(LLAMA, examples=1000, input_length=8, target_length=24,
                                    batch_size=10, recipe=recipe, **kwargs))
    full, adapted, l2sp, wise = run(FULL), run(LORA), run(L2SP), run(WISE)
    per_example = training_flops(LLAMA.replace(dtype="bfloat16"), 8, 24)
    assert full.train_flops == pytest.approx(1000 * per_example)
    assert adapted.train_flops < full.train_flops
    assert adapted.trainable_params == 7168 and full.trainable_params == params(LLAMA)
    # L2-SP: 5 FLOPs per parameter per step, 100 steps
    assert l2sp.penalty_flops == 5 * params(LLAMA) * 100
    assert l2sp.train_flops == pytest.approx(full.train_flops + l2sp.penalty_flops)
    assert wise.train_flops == 0 and wise.to_dict()["tokens"] == 0
    row = adapted.to_dict()
    assert row["recipe"] == "lora" and row["trainable_params"] == 7168
    assert row["memory_bytes"]["optimizer_state"] == 2 * 7168 * 4
    with pytest.raises(ValueError, match="Recipe"):
        RunSpec("gpt2-tiny", examples=10, recipe="lora")


# -------------------------------------------------------------------------------------------------
# Memory


def test_whole_batch_memory_by_recipe():
    full = training_memory(LLAMA, 8, 24, 4)
    adapted = training_memory(LLAMA, 8, 24, 4, recipe=lora(base_dtype="bfloat16"))
    assert adapted.weights == 2 * params(LLAMA) + 4 * 7168  # frozen bfloat16, adapters float32
    assert adapted.gradients == 4 * 7168
    assert optimizer_state_numbers(LLAMA, "adamw", LORA) == 2 * 7168
    assert adapted.optimizer_state == optimizer_state_bytes(LLAMA, "adamw", LORA) == 8 * 7168
    # the adapters keep x @ A (rank 8 numbers, float32) per projection, token, layer, example
    assert adapted.activations - full.activations == 4 * 32 * 4 * 2 * 8 * 4
    l2sp = training_memory(LLAMA, 8, 24, 4, recipe=L2SP)
    assert l2sp.anchor == l2sp.penalty_gradient == l2sp.weights == full.weights
    assert l2sp.total == full.total + 2 * l2sp.anchor
    # lambda 0 runs as full fine-tuning (the trainer's choice): no anchor
    assert training_memory(LLAMA, 8, 24, 4, recipe=Recipe("l", "l2sp", l2sp_weight=0)) == full
    assert training_memory(LLAMA, 8, 24, 4, recipe=MIX) == full


def test_per_device_memory_by_recipe():
    from arch_compare.budget.memory import per_device_training_memory
    from arch_compare.mesh_config import MeshConfig

    def device(recipe, cfg=LLAMA, mesh=MeshConfig(), **kwargs):
        return per_device_training_memory(cfg, mesh, 8, 24, 4, recipe=recipe, **kwargs)
    full = device(FULL)
    adapted = device(LORA)
    assert adapted.weights == 4 * (params(LLAMA) + 7168)
    assert adapted.gradients == 4 * 7168 and adapted.optimizer_state == 8 * 7168
    # Per token (4 examples x 32), float32: each layer adds x @ A (4 projections x rank 8) and
    # drops what only frozen weights' gradients read: two norms' normalised inputs [d], the MLP
    # norm's output [d] (no adapter on wi_0/wi_1), wo's input [f]; the final norm drops its
    # normalised input and its output (the frozen output projection's input).
    per_layer = 4 * 8 - 2 * 64 - 64 - 128
    assert adapted.activations - full.activations == 4 * 32 * 4 * (2 * per_layer - 2 * 64)
    narrow = device(lora(base_dtype="bfloat16"))
    assert narrow.weights == 2 * params(LLAMA) + 4 * 7168
    # a bfloat16 base under a float32 compute dtype: each kernel's float32 cast is kept
    assert narrow.activations > adapted.activations
    assert device(L2SP).anchor == device(L2SP).penalty_gradient == full.weights
    assert device(L2SP).total == full.total + 2 * full.weights
    assert device(MIX) == full
    # fsdp splits the adapters with their kernels; the frozen base is gathered without gradients
    # (full training's output projection has its gradient whole beside it when microbatched)
    fsdp = MeshConfig(fsdp=2)
    full_fsdp, lora_fsdp = (device(recipe, mesh=fsdp, microbatches=2) for recipe in (FULL, LORA))
    assert lora_fsdp.gradients < adapted.gradients
    assert lora_fsdp.gathered_output * 2 == full_fsdp.gathered_output
    assert lora_fsdp.gathered_layer * 2 == full_fsdp.gathered_layer
    assert device(LORA, microbatches=2).accumulated_gradients == adapted.gradients
    with pytest.raises(ValueError, match="trains nothing"):
        device(WISE)


# -------------------------------------------------------------------------------------------------
# The command


def budget(capsys, *argv):
    code = main(["budget", "--model", "llama-7b", "--examples", "1000", "--input-length",
                 "256", "--target-length", "256", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prices_each_recipe(capsys):
    code, out, _ = budget(capsys, "--recipe", "lora", "--lora-rank", "16", "--lora-targets",
                          "q,v", "--lora-base-dtype", "bfloat16", "--format", "json")
    assert code == 0
    row = json.loads(out)[0]
    # llama-7b: 32 layers of q and v, 4096 -> 4096, rank 16
    assert row["recipe"] == "lora" and row["trainable_params"] == 32 * 2 * 16 * (4096 + 4096)
    assert row["memory_bytes"]["optimizer_state"] == 8 * row["trainable_params"]
    assert row["memory_bytes"]["weights"] == 2 * row["params"] + 4 * row["trainable_params"]
    code, full, _ = budget(capsys, "--format", "json")
    assert json.loads(full)[0]["train_flops"] > row["train_flops"]

    code, out, _ = budget(capsys, "--recipe", "mix", "--mix-rate", "0.2")
    assert code == 0
    header = out.splitlines()[0].split()
    assert {"recipe", "trainable", "opt_state", "mem/chip"} <= set(header)
    # 1000 imitation examples of 512 tokens at rate 0.2: 250 more examples, 128,000 tokens
    assert ("the extra tokens of mixing: 128,000 tokens (250 examples of 256 + 256)"
            in out)
    code, out, _ = budget(capsys, "--recipe", "mix", "--mix-rate", "0.2", "--format", "json")
    assert json.loads(out)[0]["examples"] == pytest.approx(1250)

    code, out, _ = budget(capsys, "--recipe", "wise", "--wise-alphas", "0.25,0.5",
                          "--format", "json")
    rows = json.loads(out)
    assert [row["recipe"] for row in rows] == ["wise@0.25", "wise@0.5"]
    forward = forward_flops(PRESETS["llama-7b"].replace(dtype="bfloat16"), 256, 256).total
    assert all(row["train_flops"] == 0 and row["evaluation_flops"] == pytest.approx(
        1000 * forward) for row in rows)


@pytest.mark.parametrize("argv, message", [
    (["--lora-rank", "4"], "--lora-rank set(s) a recipe of kind lora: give --recipe lora"),
    (["--recipe", "lora", "--mix-rate", "0.1"], "give --recipe mix"),
    (["--recipe", "l2sp"], "--recipe l2sp needs --l2sp-weight"),
    (["--recipe", "mix"], "--recipe mix needs --mix-rate"),
    (["--recipe", "mix", "--mix-rate", "1.5"], "mix_rate must be in (0, 1)"),
    (["--recipe", "wise"], "--recipe wise needs --wise-alphas"),
    (["--recipe", "wise", "--wise-alphas", "a,b"], "--wise-alphas: expected comma-separated"),
    (["--recipe", "lora", "--lora-targets", "q,x"], "lora.targets"),
    (["--recipe", "lora", "--lora-rank", "0"], "lora.rank must be a positive integer"),
])
def test_cli_recipe_errors_are_clear(capsys, argv, message):
    code, _, err = budget(capsys, *argv)
    assert code == 2 and message in err, err


# -------------------------------------------------------------------------------------------------
# Against the LoRA model and PEFT


# Our targets and PEFT's target_modules for the same projections of the Hugging Face model
# (GPT-2's q/k/v are one fused c_attn in HF, so its PEFT check adapts o and the MLP).
PEFT_TARGETS = {
    "gpt2-tiny": (("o", "mlp"), ["attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
    "llama-tiny": (("q", "k", "v", "o", "mlp"),
                   ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "t5-tiny": (("q", "k", "v", "o", "wo"), ["q", "k", "v", "o", "DenseReluDense.wo"]),
}


@pytest.mark.parametrize("preset", list(PEFT_TARGETS))
def test_trainable_count_equals_the_lora_model_and_peft(preset):
    import peft
    import transformers

    from arch_compare.models import build_model
    from arch_compare.models import lora as lora_lib
    from arch_compare.models.hf.configs import config_to_hf
    cfg = PRESETS[preset]
    ours, theirs = PEFT_TARGETS[preset]
    recipe = lora(rank=4, targets=ours)
    priced = budget_recipes.trainable_parameters(cfg, recipe)
    assert priced == lora_lib.adapter_count(build_model(cfg, recipe.lora))
    # with the default targets too (GPT-2's separate q, k and v adapters)
    assert budget_recipes.trainable_parameters(cfg, LORA) == lora_lib.adapter_count(
        build_model(cfg, LORA.lora))
    hf = config_to_hf(cfg)
    config = transformers.AutoConfig.for_model(**hf)
    auto = (transformers.AutoModelForSeq2SeqLM if cfg.is_encoder_decoder
            else transformers.AutoModelForCausalLM)
    model = peft.get_peft_model(auto.from_config(config),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules=theirs,
                                                fan_in_fan_out=cfg.family == "gpt2"))
    trainable, _ = model.get_nb_trainable_parameters()
    assert priced == trainable


# -------------------------------------------------------------------------------------------------
# Per-device memory against XLA's analysis of the trainer's compiled step


XLA_CASES = {
    "lora-qv": ("llama", lora(rank=16, targets=("q", "v")), "float32", "none"),
    # XLA:CPU's float32 copies of bfloat16 kernels, recomputed dropout masks
    "lora-bf16-base-dropout": ("t5.1.1", lora(dropout=0.1, base_dtype="bfloat16",
                                              targets=("q", "k", "v", "o", "mlp")),
                               "bfloat16", "block"),
    "l2sp": ("gpt2", L2SP, "float32", "none"),
}


@pytest.mark.parametrize("name", list(XLA_CASES))
def test_recipe_estimate_within_20_percent_of_xla(name):
    from tests.budget import xla_recipes
    family, recipe, dtype, remat = XLA_CASES[name]
    result = xla_recipes.compare(xla_recipes.Case(family, recipe, dtype=dtype, remat=remat))
    assert 0.8 <= result["ratio"] <= 1.2, result


SHARDED_SOURCE = """
import json
from arch_compare.mesh_config import MeshConfig
from arch_compare.recipes import LoraConfig, Recipe
from tests.budget import xla_recipes

recipes = [Recipe("lora", "lora", lora=LoraConfig(rank=8, targets=("q", "k", "v", "o", "mlp"))),
           Recipe("l2sp", "l2sp", l2sp_weight=0.1)]
meshes = [(MeshConfig(fsdp=4), "float32", "none"), (MeshConfig(fsdp=2, tensor=2), "bfloat16", "block")]
# each family on both meshes, each mesh with both recipes (~20 s a compile on 2 loaded cores)
rows = [xla_recipes.compare(xla_recipes.Case(family, recipe, *meshes[(i + j) % 2]))
        for i, family in enumerate(xla_recipes.PRESETS) for j, recipe in enumerate(recipes)]
print(json.dumps(rows))
"""


@pytest.mark.scale
def test_sharded_recipe_estimates_within_20_percent_of_xla():
    """Every family, LoRA (adapters split with their kernels, the frozen base gathered without
    gradients) and L2-SP (the anchor split like the weights) on fsdp 4 and fsdp 2 x tensor 2."""
    from tests.multidevice_helpers import run_with_fake_devices
    rows = run_with_fake_devices(SHARDED_SOURCE, num_devices=4, timeout=900)
    assert len(rows) == 4 * 2
    assert {(row["recipe"], tuple(row["mesh"])) for row in rows} == {
        (recipe, mesh) for recipe in ("lora", "l2sp") for mesh in ((1, 4, 1), (1, 2, 2))}
    off = [row for row in rows if not 0.8 <= row["ratio"] <= 1.2]
    assert not off, off
