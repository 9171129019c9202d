"""Memory estimates: optimizer state against optax's own state shapes, KV cache, chips that fit."""

import math

import jax
import optax
import pytest

from arch_compare.budget import (kv_cache_bytes, optimizer_state_bytes, parameter_tensors,
                                 training_memory)
from arch_compare.budget.memory import TrainingMemory, activation_bytes, min_chips
from arch_compare.models import PRESETS, build_model, get_preset

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


# -------------------------------------------------------------------------------------------------
# Per device, on a mesh

from arch_compare.budget.memory import (  # noqa: E402
    GIB, USABLE_HBM_FRACTION, MemoryShortfall, check_training_fits, device_memory_bytes,
    per_device_inference_memory, per_device_training_memory, training_fits)
from arch_compare.budget.device_memory import parameter_shards  # noqa: E402
from arch_compare.execution import ExecutionConfig, resolve_mesh  # noqa: E402
from arch_compare.partitioning import MeshConfig  # noqa: E402

GPT2_SMALL = get_preset("gpt2-small")


def test_fsdp_divides_the_state_and_the_batch():
    one = per_device_training_memory(GPT2_SMALL, MeshConfig(), 0, 512, 16)
    eight = per_device_training_memory(GPT2_SMALL, MeshConfig(fsdp=8), 0, 512, 16)
    # fsdp splits each weight on its embed axis (768 = 8 x 96); the biases of the heads and
    # the MLP ([layers, heads, kv], [layers, mlp]) have none and stay whole on every device
    model = build_model(GPT2_SMALL)
    axes = jax.tree.leaves(model.logical_axes(), is_leaf=lambda n: isinstance(n, tuple))
    sizes = [math.prod(leaf.shape) for leaf in jax.tree.leaves(model.abstract_params())]
    expected = sum(size // 8 if "embed" in names else size for names, size in zip(axes, sizes))
    assert eight.weights == 4 * expected < one.weights / 7.9
    assert one.weights == 4 * count_parameters_of(GPT2_SMALL)
    assert eight.optimizer_state == 2 * eight.weights and eight.gradients == eight.weights
    assert eight.activations * 8 == one.activations and eight.logits * 8 == one.logits


def count_parameters_of(cfg) -> int:
    return sum(t.size for t in parameter_tensors(cfg))


def test_data_parallel_replicates_the_state():
    one = per_device_training_memory(GPT2_SMALL, MeshConfig(), 0, 512, 16)
    data = per_device_training_memory(GPT2_SMALL, MeshConfig(data=8), 0, 512, 16)
    assert data.state == one.state and data.activations * 8 == one.activations


def test_an_odd_vocabulary_stays_whole_under_tensor_parallelism():
    shards = {s.path: s for s in parameter_shards(GPT2_SMALL, MeshConfig(tensor=2))}
    embed = shards["token_embed/embedding"]  # [50257, 768]: 50257 is odd
    assert embed.shard_shape == embed.shape == (50257, 768)
    q = shards["decoder/blocks/self_attention/q/kernel"]  # [layers, embed, heads, kv]
    assert q.shard_shape == (12, 768, 6, 64)
    padded = GPT2_SMALL.replace(vocab_size=50304)
    shards = {s.path: s for s in parameter_shards(padded, MeshConfig(tensor=2))}
    assert shards["token_embed/embedding"].shard_shape == (25152, 768)
    # the logits follow the vocabulary: whole when it does not divide, halved when it does
    odd = per_device_training_memory(GPT2_SMALL, MeshConfig(tensor=2), 0, 512, 8)
    even = per_device_training_memory(padded, MeshConfig(tensor=2), 0, 512, 8)
    assert odd.logits == per_device_training_memory(GPT2_SMALL, MeshConfig(), 0, 512, 8).logits
    assert even.logits * 2 == per_device_training_memory(padded, MeshConfig(), 0, 512, 8).logits


def test_fsdp_gathers_the_output_projection_and_one_layer_whole():
    # GPT-2 projects with its tied [50257, 768] embedding. Of a block, fsdp splits (on embed)
    # the 12 x 768^2 kernel numbers and 6 x 768 more (the o and MLP-out biases, two norms' scales
    # and biases); the q/k/v and MLP-in biases have no embed axis and are whole already.
    vocab, d, layers = 50257, 768, 12
    layer = sum(s.size for s in parameter_shards(GPT2_SMALL, MeshConfig())
                if s.path.startswith("decoder/blocks/") and "embed" in s.axes) // layers
    assert layer == 12 * d * d + 6 * d
    fsdp = per_device_training_memory(GPT2_SMALL, MeshConfig(fsdp=8), 0, 512, 16)
    assert fsdp.gathered_output == vocab * d * 4  # the weight, float32 compute
    assert fsdp.gathered_layer == 2 * layer * 4  # weights and gradients
    # microbatched, the step's scan holds the output projection's gradient whole too
    micro = per_device_training_memory(GPT2_SMALL, MeshConfig(fsdp=8), 0, 512, 16,
                                       microbatches=2)
    assert micro.gathered_output == 2 * vocab * d * 4
    assert fsdp.accumulated_gradients == 0
    assert fsdp.total == fsdp.state + fsdp.activations + max(
        fsdp.logits + fsdp.gathered_output, fsdp.rematerialised + fsdp.gathered_layer)
    # bfloat16 compute gathers the cast copies
    bf16 = per_device_training_memory(GPT2_SMALL.replace(dtype="bfloat16"), MeshConfig(fsdp=8),
                                      0, 512, 16)
    assert bf16.gathered_output * 2 == fsdp.gathered_output
    # a tensor split stays cut: an even vocabulary's projection gathers half per device
    padded = GPT2_SMALL.replace(vocab_size=50304)
    whole = per_device_training_memory(padded, MeshConfig(fsdp=8), 0, 512, 16)
    halved = per_device_training_memory(padded, MeshConfig(fsdp=4, tensor=2), 0, 512, 16)
    assert halved.gathered_output * 2 == whole.gathered_output == 50304 * d * 4
    # nothing is gathered where no weight is split over fsdp
    for mesh in (MeshConfig(), MeshConfig(data=8), MeshConfig(tensor=2)):
        memory = per_device_training_memory(GPT2_SMALL, mesh, 0, 512, 16)
        assert memory.gathered_output == memory.gathered_layer == 0


def test_microbatches_divide_activations_not_state():
    whole = per_device_training_memory(GPT2_SMALL, MeshConfig(fsdp=2), 0, 512, 16)
    quarter = per_device_training_memory(GPT2_SMALL, MeshConfig(fsdp=2), 0, 512, 16,
                                         microbatches=4)
    assert quarter.activations * 4 == whole.activations
    assert quarter.weights == whole.weights and quarter.optimizer_state == whole.optimizer_state
    # the step sums the microbatches' gradients in a carry shaped like them
    assert quarter.accumulated_gradients == whole.gradients and whole.accumulated_gradients == 0
    with pytest.raises(ValueError, match="per-device batch of 8 .* 3 microbatches"):
        per_device_training_memory(GPT2_SMALL, MeshConfig(fsdp=2), 0, 512, 16, microbatches=3)
    with pytest.raises(ValueError, match="batch size 12 does not split over data 1 x fsdp 8"):
        per_device_training_memory(GPT2_SMALL, MeshConfig(fsdp=8), 0, 512, 12)


def test_bfloat16_params_halve_the_state_and_adafactor_shrinks_it():
    f32 = per_device_training_memory(GPT2_SMALL, MeshConfig(), 0, 512, 8)
    bf16 = per_device_training_memory(GPT2_SMALL.replace(param_dtype="bfloat16"), MeshConfig(),
                                      0, 512, 8)
    assert bf16.weights * 2 == f32.weights and bf16.optimizer_state * 2 == f32.optimizer_state
    adafactor = per_device_training_memory(GPT2_SMALL, MeshConfig(), 0, 512, 8, "adafactor")
    assert adafactor.optimizer_state < f32.optimizer_state / 10


def test_remat_policies_keep_less():
    cfg = get_preset("llama-7b", {"dtype": "bfloat16"})
    none = per_device_training_memory(cfg, MeshConfig(fsdp=8), 0, 2048, 8)
    block = per_device_training_memory(cfg.replace(remat="block"), MeshConfig(fsdp=8), 0, 2048, 8)
    assert block.activations < none.activations / 10 and block.rematerialised > 0
    assert block.total < none.total


LLAMA_7B = get_preset("llama-7b", {"dtype": "bfloat16", "remat": "block"})
H100 = 80 * GIB


def test_shortfall_names_the_numbers_and_a_fit_that_really_fits():
    args = dict(input_length=0, target_length=2048, batch_size=64, optimizer="adamw")
    mesh = MeshConfig(data=8)
    estimate = per_device_training_memory(LLAMA_7B, mesh, **args)
    assert estimate.total > USABLE_HBM_FRACTION * H100  # replicated AdamW state: 100 GiB
    with pytest.raises(MemoryShortfall) as caught:
        check_training_fits(LLAMA_7B, mesh, microbatches=1, device_bytes=H100, **args)
    message = str(caught.value)
    assert f"{estimate.total / GIB:.2f} GiB per device" in message
    assert f"{USABLE_HBM_FRACTION * H100 / GIB:.2f} GiB is usable" in message
    assert f"optimizer_state {estimate.optimizer_state / GIB:.2f} GiB" in message
    suggestion = message.split("would fit: ")[1].split(";")[0]  # "mesh fsdp 8 with 1 microbatch"
    words = suggestion.split(" with ")[0].removeprefix("mesh ").split(" x ")
    suggested = MeshConfig(**{axis: int(size) for axis, size in (w.split() for w in words)})
    micro = int(suggestion.split(" with ")[1].split()[0])
    assert suggested.num_devices == 8
    fits = check_training_fits(LLAMA_7B, suggested, microbatches=micro, device_bytes=H100, **args)
    assert fits.total <= USABLE_HBM_FRACTION * H100
    assert training_fits(LLAMA_7B, suggested, microbatches=micro, device_bytes=H100, **args)


def test_shortfall_says_when_nothing_fits():
    with pytest.raises(MemoryShortfall, match="no mesh over 2 devices and no microbatch count"):
        check_training_fits(get_preset("llama-65b"), MeshConfig(fsdp=2), 0, 2048, 2,
                            device_bytes=H100)


def test_training_fits_drives_auto_mesh():
    args = dict(input_length=0, target_length=2048, batch_size=64, optimizer="adamw",
                microbatches=1, device_bytes=H100)
    mesh = resolve_mesh(ExecutionConfig(mesh="auto"), 8,
                        lambda m: training_fits(LLAMA_7B, m, **args), lambda: "too big")
    assert mesh.fsdp > 1 and training_fits(LLAMA_7B, mesh, **args)
    assert not training_fits(LLAMA_7B, MeshConfig(data=8), **args)
    assert not training_fits(LLAMA_7B, MeshConfig(data=3), **args)  # 64 rows do not split
    assert training_fits(LLAMA_7B, MeshConfig(data=8), **{**args, "device_bytes": None})


def test_device_memory_bytes():
    class Chip:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert device_memory_bytes(Chip({"bytes_limit": 80 * GIB, "bytes_in_use": 0})) == 80 * GIB
    assert device_memory_bytes(Chip(None)) is None
    assert device_memory_bytes(jax.devices("cpu")[0]) is None


def test_inference_memory():
    cfg = get_preset("llama2-70b", {"dtype": "bfloat16", "param_dtype": "bfloat16"})
    one = per_device_inference_memory(cfg, MeshConfig(), 512, 512, 8)
    assert one.weights == 2 * count_parameters_of(cfg)
    assert one.kv_cache == kv_cache_bytes(cfg, 512, 512, 8)
    tensor = per_device_inference_memory(cfg, MeshConfig(tensor=8), 512, 512, 8)
    assert tensor.kv_cache * 8 == one.kv_cache  # 8 KV heads over 8 devices
    assert tensor.weights < one.weights / 7
    assert one.total == one.weights + one.kv_cache + one.activations
