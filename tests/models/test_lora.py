"""LoRA adapters: the adapted model against its base, its merged weights and PEFT.

References: the plain model (B = 0 must change nothing), the merged plain model (W + s A B),
and `peft` 0.21 on transformers' model of the exported HF base (the issue's parity check), whose
trainable parameter count is also the reference for `adapter_count`.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import arch_compare
from arch_compare import partitioning
from arch_compare.models import layers, lora, zoo
from arch_compare.models.hf import CheckpointError
from arch_compare.models.hf.peft import CONFIG_FILE, WEIGHTS_FILE, save_peft_adapters
from arch_compare.recipes import LoraConfig
from tests.models.hf_references import (TOLERANCE, assert_untied_t5, hf_logits,
                                        load_reference_model, make_batch, max_abs_diff,
                                        read_tensors)

MERGE_TOLERANCE = 1e-5
# Each family with targets that include attention and MLP projections; GPT-2 adapts q and v but
# not k, so its fused c_attn export carries a zero block; T5 adapts encoder, decoder self- and
# cross-attention (q/k/v/o name all three) and both gated up projections.
CASES = {
    "gpt2": ("q", "v", "o", "wi", "wo"),
    "llama-gqa": ("q", "k", "v", "o", "mlp"),
    "t5-v1.1": ("q", "k", "v", "o", "wi_0", "wi_1", "wo"),
}
# The same projections as a PEFT user would name them (for the trainable-count reference).
PEFT_TARGETS = {
    "gpt2": (("o", "wi", "wo"), ["c_proj", "c_fc"]),  # c_attn fuses q/k/v: see test below
    "llama-gqa": (("q", "k", "v", "o", "mlp"),
                  ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "t5-v1.1": (("q", "k", "v", "o", "wi_0", "wi_1", "wo"),
                ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]),
}
RANK, ALPHA = 4, 8.0  # scale 2


def random_adapters(model, seed: int, std: float = 0.1, zero_b: bool = False):
    """Adapters with every A (and, unless `zero_b`, every B) nonzero, drawn with numpy: no
    compilation (fresh ones from `init_adapters` have B = 0)."""
    rng = np.random.default_rng(seed)
    draw = lambda path, leaf: (np.zeros(leaf.shape, leaf.dtype)
                               if zero_b and path[-1].key == "lora_b"
                               else (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype))
    return jax.tree_util.tree_map_with_path(draw, lora.split(model.abstract_params())[1])


@pytest.fixture(scope="module", params=list(CASES))
def adapted(request, reference_for):
    """(reference, base model, base params, LoRA model, params with random adapters, batch,
    base logits, LoRA logits): each family's logits computed once for all tests."""
    reference = reference_for(request.param)
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    lora_model = model.with_lora(LoraConfig(rank=RANK, alpha=ALPHA, targets=CASES[request.param]))
    full = lora.join(params, random_adapters(lora_model, 1))
    batch = make_batch(reference.case.encoder_decoder)
    base_logits = np.asarray(model.logits(params, batch))
    lora_logits = np.asarray(lora_model.logits(full, batch))
    assert max_abs_diff(lora_logits, base_logits) > 0.1  # the adapters change the model
    return reference, model, params, lora_model, full, batch, base_logits, lora_logits


def test_zero_b_leaves_the_base_unchanged(adapted):
    _, _, params, lora_model, _, batch, base_logits, _ = adapted
    adapters = random_adapters(lora_model, 2, zero_b=True)
    np.testing.assert_array_equal(np.asarray(lora_model.logits(lora.join(params, adapters),
                                                               batch)), base_logits)


def test_adapted_logits_equal_the_merged_model(adapted):
    reference, model, _, lora_model, full, batch, _, lora_logits = adapted
    merged = lora.merge(lora_model, full)
    assert jax.tree.structure(merged) == jax.tree.structure(model.abstract_params())
    diff = max_abs_diff(lora_logits, np.asarray(model.logits(merged, batch)))
    print(f"{reference.name}: adapted vs merged max |diff| {diff:.2e}")
    assert diff <= MERGE_TOLERANCE


def test_peft_loads_the_export_with_the_same_logits(adapted, tmp_path):
    """The issue's parity check: HF base export + PEFT adapters, loaded by peft, agree."""
    reference, model, params, lora_model, full, batch, _, lora_logits = adapted
    base = arch_compare.save_hf_checkpoint(model, params, tmp_path / "base")
    directory = save_peft_adapters(lora_model, lora.split(full)[1], tmp_path / "adapter",
                                   base_model_name_or_path=str(base))
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(base)
    hf_model = load_reference_model(base, reference.case.encoder_decoder)
    if reference.case.encoder_decoder and not reference.case.tied:
        assert_untied_t5(hf_model, base)
    peft_model = peft.PeftModel.from_pretrained(hf_model, directory).eval()
    # PEFT adapted exactly the modules we wrote, and read every tensor of the file.
    loaded = peft.get_peft_model_state_dict(peft_model)
    written = read_tensors(directory)
    assert loaded.keys() == written.keys()
    for name, value in written.items():
        np.testing.assert_array_equal(loaded[name].numpy(), value, err_msg=name)
    diff = max_abs_diff(lora_logits, hf_logits(peft_model, batch))
    print(f"{reference.name}: LoRA vs peft max |diff| {diff:.2e}")
    assert diff <= TOLERANCE


def test_gpt2_fused_qkv_export_is_block_diagonal(reference_for, tmp_path):
    """q and v adapted, k not: c_attn gets rank 2r, alpha 2 alpha, B zero on k's outputs; PEFT
    counts those zero blocks as trainable, ours does not."""
    reference = reference_for("gpt2")
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    lora_model = model.with_lora(LoraConfig(rank=RANK, alpha=ALPHA, targets=CASES["gpt2"]))
    adapters = random_adapters(lora_model, 2)
    directory = save_peft_adapters(lora_model, adapters, tmp_path / "adapter")
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["fan_in_fan_out"] is True
    assert config["rank_pattern"] == {"attn.c_attn": 2 * RANK}
    assert config["alpha_pattern"] == {"attn.c_attn": 2 * ALPHA}
    assert sorted(config["target_modules"]) == ["attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                "mlp.c_proj"]
    d = model.config.d_model
    tensors = read_tensors(directory)
    a = tensors["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"]
    b = tensors["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"]
    attention = adapters["decoder"]["blocks"]["self_attention"]
    np.testing.assert_array_equal(a[:RANK], np.asarray(attention["q"]["lora_a"][1]).T)
    np.testing.assert_array_equal(a[RANK:], np.asarray(attention["v"]["lora_a"][1]).T)
    assert b.shape == (3 * d, 2 * RANK)
    np.testing.assert_array_equal(b[:d, :RANK],
                                  np.asarray(attention["q"]["lora_b"][1]).reshape(RANK, d).T)
    np.testing.assert_array_equal(b[2 * d:, RANK:],
                                  np.asarray(attention["v"]["lora_b"][1]).reshape(RANK, d).T)
    assert not b[d:2 * d].any() and not b[:d, RANK:].any() and not b[2 * d:, :RANK].any()
    peft_model = peft.PeftModel.from_pretrained(
        load_reference_model(reference.directory, encoder_decoder=False), directory,
        is_trainable=True)
    zero_blocks = model.config.num_layers * (3 * d * 2 * RANK - 2 * d * RANK)
    assert peft_model.get_nb_trainable_parameters()[0] == (lora.adapter_count(lora_model)
                                                           + zero_blocks)


@pytest.mark.parametrize("name", list(PEFT_TARGETS))
def test_adapter_count_equals_peft_trainable_parameters(name, reference_for):
    ours, theirs = PEFT_TARGETS[name]
    reference = reference_for(name)
    model = arch_compare.load_hf_checkpoint(reference.directory)[0]
    lora_model = model.with_lora(LoraConfig(rank=RANK, alpha=ALPHA, targets=ours))
    hf_model = load_reference_model(reference.directory, reference.case.encoder_decoder)
    peft_model = peft.get_peft_model(hf_model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA,
                                                                target_modules=theirs))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert lora.adapter_count(lora_model) == trainable
    assert lora_model.param_count() == model.param_count() + trainable


# Model-level behaviour, on the tiny T5 v1.1 reference (encoder, decoder self- and
# cross-attention, gated MLP): its parameters load without compiling anything.

ALL_TARGETS = ("q", "k", "v", "o", "mlp")


@pytest.fixture(scope="module")
def t5(reference_for):
    """(plain model, its params, a batch)."""
    reference = reference_for("t5-v1.1")
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    return model, params, make_batch(encoder_decoder=True)


def test_init_structure_axes_and_dtypes(t5):
    model, params, batch = t5
    lora_model = model.with_lora(LoraConfig(rank=3, targets=("q", "wi_1"), base_dtype="bfloat16"))
    abstract, axes = lora_model.abstract_params(), lora_model.logical_axes()
    d, h, e = model.config.d_model, model.config.num_heads, model.config.head_dim
    cross = abstract["decoder"]["blocks"]["cross_attention"]["q"]
    assert cross["kernel"].shape == (2, d, h, e) and cross["kernel"].dtype == jnp.bfloat16
    assert cross["lora_a"].shape == (2, d, 3) and cross["lora_a"].dtype == jnp.float32
    assert cross["lora_b"].shape == (2, 3, h, e)
    q_axes = axes["encoder"]["blocks"]["self_attention"]["q"]
    assert q_axes["lora_a"] == ("layers", "embed", "lora_rank")
    assert q_axes["lora_b"] == ("layers", "lora_rank", "heads", "kv")
    assert "lora_a" not in abstract["decoder"]["blocks"]["self_attention"]["k"]
    assert set(abstract["decoder"]["blocks"]["mlp"]["wi_1"]) == {"kernel", "lora_a", "lora_b"}
    assert model.lora is None and lora_model.lora.rank == 3
    # The one rule table shards adapters: lora_b follows its kernel's heads onto `tensor`.
    mesh = jax.sharding.AbstractMesh((1, 2, 2), partitioning.MESH_AXES)
    specs = partitioning.param_partition_specs(axes, abstract, mesh)["encoder"]["blocks"]
    assert specs["self_attention"]["q"]["lora_b"] == P(None, None, "tensor", None)
    assert specs["self_attention"]["q"]["lora_a"] == P(None, "fsdp", None)
    # init_adapters on the adapters half's shardings: A random, B zero, so the adapted model
    # (frozen weights cast to bfloat16, as base_dtype asks) equals the plain one of those weights.
    device_mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
    shardings = partitioning.param_shardings(lora.split(axes)[1], lora.split(abstract)[1],
                                             device_mesh)
    adapters = lora.init_adapters(lora_model, jax.random.key(0), shardings)
    assert jax.tree.structure(adapters) == jax.tree.structure(lora.split(abstract)[1])
    assert lora.adapter_count(lora_model) == sum(a.size for a in jax.tree.leaves(adapters))
    for path, leaf in jax.tree_util.tree_leaves_with_path(adapters):
        assert leaf.dtype == jnp.float32, path
        assert (np.any(leaf != 0) if path[-1].key == "lora_a" else not np.any(leaf)), path
    bf16 = jax.tree.map(lambda a: np.asarray(a).astype(jnp.bfloat16), params)
    ours = lora_model.logits(lora.join(bf16, adapters), batch)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(model.logits(bf16, batch)))


def test_split_join_and_errors(t5, tmp_path):
    model, params, _ = t5
    lora_model = model.with_lora(LoraConfig(rank=2))
    full = lora.join(params, random_adapters(lora_model, 0))
    frozen, adapters = lora.split(full)
    assert jax.tree.structure(frozen) == jax.tree.structure(params)
    assert jax.tree.structure(lora.join(frozen, adapters)) == jax.tree.structure(full)
    assert len(jax.tree.leaves(frozen)) + len(jax.tree.leaves(adapters)) == len(
        jax.tree.leaves(full))
    with pytest.raises(ValueError, match="both halves"):
        lora.join(full, adapters)
    with pytest.raises(ValueError, match="already has LoRA"):
        lora_model.with_lora(LoraConfig())
    for call in (lambda: lora.merge(model, full), lambda: lora.adapter_count(model),
                 lambda: save_peft_adapters(model, full, tmp_path / "plain")):
        with pytest.raises(ValueError, match="with_lora"):
            call()
    with pytest.raises(ValueError, match="lack"):
        save_peft_adapters(lora_model, frozen, tmp_path / "no-adapters")
    save_peft_adapters(lora_model, full, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_peft_adapters(lora_model, full, tmp_path / "adapter")
    assert (tmp_path / "adapter" / WEIGHTS_FILE).exists()


def test_dropout_per_layer_and_projection(t5, monkeypatch):
    """With a key and rate 0.5 the logits change, deterministically per key; without a key, or
    with rate 0, they do not. Every adapter of one forward pass (2 + 2 layers; q, k, v, o of
    self- and cross-attention; wi_0, wi_1, wo) draws its mask with a key of its own."""
    model, params, batch = t5
    seen = []
    original = layers.Dense.add_adapter

    def recording(self, y, x, dropout_key):
        if self.adapter is not None and dropout_key is not None and self.adapter.dropout > 0:
            jax.debug.callback(lambda data: seen.append(np.asarray(data).tobytes()),
                               jax.random.key_data(dropout_key))
        return original(self, y, x, dropout_key)

    monkeypatch.setattr(layers.Dense, "add_adapter", recording)
    dropped = model.with_lora(LoraConfig(rank=2, dropout=0.5, targets=ALL_TARGETS))
    full = lora.join(params, random_adapters(dropped, 3, std=0.3))
    with_key = jax.jit(lambda p, k: dropped.logits(p, batch, dropout_rng=k))
    once = np.asarray(with_key(full, jax.random.key(7)))
    expected = 2 * (4 + 3) + 2 * (4 + 4 + 3)  # encoder layers, decoder layers
    assert len(seen) == expected and len(set(seen)) == expected
    np.testing.assert_array_equal(once, np.asarray(with_key(full, jax.random.key(7))))
    assert max_abs_diff(once, np.asarray(with_key(full, jax.random.key(8)))) > 1e-2
    plain = np.asarray(jax.jit(dropped.logits)(full, batch))
    assert max_abs_diff(once, plain) > 1e-2
    no_rate = model.with_lora(LoraConfig(rank=2, dropout=0.0, targets=ALL_TARGETS))
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda p, k: no_rate.logits(p, batch, dropout_rng=k))(
            full, jax.random.key(7))), plain)


def test_dropout_is_unbiased_on_average():
    """Inverted dropout: over many keys, a layer's mean adapter output is the undropped one
    (the adapter term is linear in the mask); within 5 standard errors of the mean."""
    cfg = zoo.llama(16, 1, 2, 24, vocab_size=32)
    adapter = layers.Adapter(rank=3, scale=2.0, dropout=0.5, dtype="float32")
    dense = layers.Dense((16,), (8,), ("embed",), ("mlp",), cfg, rngs=nnx.Rngs(0),
                         adapter=adapter)
    dense.lora_b[...] = jax.random.normal(jax.random.key(1), dense.lora_b.shape)
    x = jax.random.normal(jax.random.key(2), (4, 16))
    keys = jax.random.split(jax.random.key(3), 4000)
    samples = np.asarray(jax.jit(jax.vmap(lambda k: dense(x, k)))(keys))  # [n, 4, 8]
    expected = np.asarray(dense(x))
    standard_error = samples.std(axis=0) / np.sqrt(len(keys))
    assert np.all(np.abs(samples.mean(axis=0) - expected) <= 5 * standard_error + 1e-6)
    assert np.all(samples.std(axis=0) > 0)  # the masks did vary


def test_adapter_gradients_at_init(t5):
    """Training differentiates the adapters half only: at init (B = 0) every B gets a finite,
    nonzero gradient and every A exactly zero (its effect goes through B)."""
    model, params, batch = t5
    lora_model = model.with_lora(LoraConfig(rank=2, dropout=0.1, targets=ALL_TARGETS))
    adapters = random_adapters(lora_model, 4, zero_b=True)

    def loss(adapters):
        logits = lora_model.logits(lora.join(params, adapters), batch,
                                   dropout_rng=jax.random.key(4))
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])

    grads = jax.jit(jax.grad(loss))(adapters)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)), path
        if path[-1].key == "lora_b":
            assert np.any(grad != 0), path
        else:
            assert not np.any(grad), path
