"""Activations ONE device keeps for a training step's backward pass, given how its batch is cut.

Split from `device_memory.py` (which prices the parameters, optimizer state and gathered weights
on the mesh and adds these up): the per-token arrays each layer's backward pass reads, counted from
the layers' code.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from arch_compare.budget.flops import kernel_tokens
from arch_compare.budget.recipes import adapter_tensors, kernel_name
from arch_compare.models.config import DTYPE_BYTES, ModelConfig
from arch_compare.recipes import LoraConfig

if TYPE_CHECKING:
    from arch_compare.budget.device_memory import ParameterShard

FLOAT32_BYTES = 4
PLATFORMS = ("cpu", "gpu", "tpu")


def dtype_bytes(name: str) -> int:
    return DTYPE_BYTES[name]


def split(size: int, ways: int) -> int:
    """`size` over `ways` devices if it divides evenly, else whole (as partitioning does)."""
    return size // ways if size % ways == 0 else size


# -------------------------------------------------------------------------------------------------
# Activations per device
#
# What a step keeps for its backward pass is what JAX's autodiff saves (its residuals), counted
# here per token from the layers' code (and checked against `jax.ad_checkpoint`'s list of saved
# residuals for every family, then against XLA's buffers): every elementwise op whose derivative
# needs its input or output keeps one array, except where `models/fast_paths.py` writes the
# backward pass out (attention keeps its probabilities only; the MLP's activation its input only).

# Arrays of [d_ff] an MLP keeps per token: the activation's input(s) (gate and up, or the one up
# projection; `fast_paths.activate*` recompute the activation from them) and its output, wo's input.
MLP_ARRAYS = {True: 3, False: 2}  # by ModelConfig.mlp_gated
MASK_BYTES = 1  # attention masks and dropout masks are bool
RANDOM_BITS_BYTES = 4  # a dropout mask is drawn from uint32 random bits


@dataclasses.dataclass(frozen=True)
class _Split:
    """How the activations of one device's microbatch are cut."""

    rows: int  # examples per device per microbatch
    tensor: int
    stored: int  # bytes per saved compute-dtype number (see `saved_number_bytes`)

    def heads(self, n: int) -> int:
        return split(n, self.tensor)


def saved_number_bytes(cfg: ModelConfig, platform: str) -> int:
    """Bytes of one saved compute-dtype number. XLA's CPU backend has no bfloat16 arithmetic: it
    computes bfloat16 ops in float32 and keeps the float32 results that the backward pass reads
    (measured: a bfloat16 step without remat held its block residuals at 4 bytes), so on CPU a
    narrow compute dtype saves no activation memory. Accelerators keep them narrow."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")
    c = dtype_bytes(cfg.dtype)
    return max(c, FLOAT32_BYTES) if platform == "cpu" else c


@dataclasses.dataclass(frozen=True)
class _Kept:
    """Which arrays the backward pass reads only for a weight's gradient, so a frozen weight does
    not keep them (autodiff saves no residual for a gradient nobody asks for): a norm's
    normalised input (its scale's gradient) and a projection's input (its kernel's). Full
    training keeps all; LoRA keeps a kernel's input only where an adapter reads it (its A's
    gradient) and no norm's normalised input. Checked against `jax.ad_checkpoint`'s saved
    residuals of a LoRA model (q, v adapters on LLaMA: eight [d]-sized arrays fewer per token
    and layer)."""

    norm_scales: bool = True
    kernels: frozenset | None = None  # projection names whose inputs are kept (None: all)
    head: bool = True  # the output projection trains

    def kernel(self, *names: str) -> bool:
        return self.kernels is None or any(name in self.kernels for name in names)


KEEP_ALL = _Kept()
UP_PROJECTIONS = ("wi", "wi_0", "wi_1")


def _norm_bytes(cfg: ModelConfig, stored: int, kept: _Kept = KEEP_ALL,
                output: bool = True) -> int:
    """Per token: the norm runs in float32 and keeps its float32 input, centred/scaled copies
    (three [d]; one is the normalised input only its scale's gradient reads) and two per-token
    statistics, plus its output cast to the compute dtype (`output`: a consumer's weight
    gradient reads it)."""
    copies = 3 if kept.norm_scales else 2
    return (copies * cfg.d_model * FLOAT32_BYTES + 2 * FLOAT32_BYTES
            + (cfg.d_model * stored if output else 0))


def _attention_bytes(cfg: ModelConfig, cut: _Split, queries: int, keys: int,
                     kept: _Kept = KEEP_ALL) -> int:
    """One attention layer: queries and outputs [h, e] per query (the outputs for o's gradient),
    keys and values [g, e] per key, and the probabilities in float32 [h, keys] per query (the one
    score-sized array `fast_paths.attention_core` keeps)."""
    c = cut.stored
    h, g, e = cut.heads(cfg.num_heads), cut.heads(cfg.num_kv_heads), cfg.head_dim
    vectors = 2 if kept.kernel("o") else 1
    per_query = vectors * h * e * c + h * keys * FLOAT32_BYTES
    return queries * per_query + keys * 2 * g * e * c


def _mlp_bytes(cfg: ModelConfig, cut: _Split, kept: _Kept = KEEP_ALL) -> int:
    """The MLP's [d_ff] arrays; the last (the activation's output) is wo's input, kept for wo's
    gradient only."""
    arrays = MLP_ARRAYS[cfg.mlp_gated] - (0 if kept.kernel("wo") else 1)
    return split(cfg.d_ff, cut.tensor) * arrays * cut.stored


def _block_bytes(cfg: ModelConfig, cut: _Split, queries: int, cross_keys: int,
                 kept: _Kept = KEEP_ALL) -> int:
    """Bytes one block keeps per example for its backward pass (no rematerialisation). The
    self-attention norm feeds q, k and v; the cross-attention norm q only (k and v read the
    encoder's output); the MLP norm the up projections."""
    norm = lambda *readers: _norm_bytes(cfg, cut.stored, kept, kept.kernel(*readers))
    norms = norm("q", "k", "v") + norm(*UP_PROJECTIONS) + (norm("q") if cross_keys else 0)
    total = queries * (norms + _mlp_bytes(cfg, cut, kept))
    total += _attention_bytes(cfg, cut, queries, queries, kept)
    if cross_keys:
        total += _attention_bytes(cfg, cut, queries, cross_keys, kept)
    return total


def _stacks(cfg: ModelConfig, input_length: int, target_length: int):
    """(layers, queries, cross keys) per stack, and the tokens that get logits."""
    if cfg.is_encoder_decoder:
        return [(cfg.num_encoder_layers, input_length, 0),
                (cfg.num_layers, target_length, input_length)], target_length
    length = input_length + target_length
    return [(cfg.num_layers, length, 0)], length


def _kernel_bytes(shards: tuple[ParameterShard, ...], cfg: ModelConfig, stacked: bool) -> int:
    """The compute-dtype copies of this device's kernels (matrices, stacked or not)."""
    from arch_compare.optim import MatrixView
    total = 0
    for shard in shards:
        view = MatrixView.from_axes(shard.path, shard.axes)
        if view.is_matrix and (view.stacked > 0) == stacked:
            total += shard.shard_size
    return total * dtype_bytes(cfg.dtype)


@dataclasses.dataclass(frozen=True)
class _Activations:
    saved: int  # kept from the forward pass until the backward pass uses it
    working: int  # one rematerialised block's residuals, live while its backward runs


def _activations(cfg: ModelConfig, cut: _Split, shards: tuple[ParameterShard, ...],
                 input_length: int, target_length: int,
                 kernel_dtype: str | None = None, kept: _Kept = KEEP_ALL) -> _Activations:
    """`kernel_dtype`: the dtype the kernels are held in (None: `param_dtype`; LoRA's frozen
    base may differ); `kept`: what frozen weights spare (see `_Kept`)."""
    c = dtype_bytes(cfg.dtype)
    stacks, tokens = _stacks(cfg, input_length, target_length)
    remat = cfg.remat != "none"
    saved = working = 0
    for index, (layers, queries, cross_keys) in enumerate(stacks):
        if not queries:
            continue
        block = _block_bytes(cfg, cut, queries, cross_keys, kept)
        h = cut.heads(cfg.num_heads)
        attentions = [queries] + ([cross_keys] if cross_keys else [])
        if remat:  # each block's input, and one block recomputed at a time
            saved += layers * queries * cfg.d_model * c
            working = max(working, block)
            # masks: [q, k] bools, broadcast over heads inside the recomputed block
            saved += sum(queries * keys * MASK_BYTES for keys in attentions)
        else:
            saved += layers * block
            # masks broadcast over heads once, outside the layer scan: bool and float32 bias
            saved += sum(h * queries * keys * (FLOAT32_BYTES + MASK_BYTES) for keys in attentions)
        # the stack's final norm: the decoder's feeds the output projection, an encoder's the
        # cross-attention's k and v
        output = kept.head if index == len(stacks) - 1 else kept.kernel("k", "v")
        saved += queries * _norm_bytes(cfg, cut.stored, kept, output)
    saved *= cut.rows
    working *= cut.rows
    if cfg.dtype != (kernel_dtype or cfg.param_dtype):
        # Dense casts each kernel to the compute dtype; the backward pass reads the cast copy,
        # so without remat the scan keeps every layer's copies (the output head's always).
        saved += _kernel_bytes(shards, cfg, stacked=False)
        if not remat:
            saved += _kernel_bytes(shards, cfg, stacked=True)
        else:
            working += _kernel_bytes(shards, cfg, stacked=True) // max(
                1, cfg.num_layers + cfg.num_encoder_layers)
    return _Activations(saved, working)


def _adapter_activations(cfg: ModelConfig, lora: LoraConfig, cut: _Split, input_length: int,
                         target_length: int) -> int:
    """What LoRA's unmerged adapters keep beyond full training's activations: per targeted
    projection and token `x @ A` (rank numbers, unsplit: B's gradient reads it), and with dropout
    the dropped input and its mask (the input is split by `tensor` where the kernel's input is
    the heads or the MLP's hidden units: o, wo). Rematerialised: one layer's (with the random bits
    the recomputed dropout masks are drawn from), live at both of the step's peak moments, not
    only while the layer recomputes: measured against XLA (t5.1.1, bfloat16, remat block), dropout
    0.1 raises the peak by 16 MiB (118.5 -> 134.6) while the logits' moment sets it."""
    per_layer: dict[str, int] = {}  # stack -> bytes per example of one layer's adapters
    layers_of: dict[str, int] = {}
    for tensor in adapter_tensors(cfg, lora):
        if not tensor.path.endswith("/lora_a"):
            continue
        tokens = kernel_tokens(cfg, tensor.path, input_length, target_length)
        fan_in = tensor.matrix_shape[-2]
        if kernel_name(tensor.path) in ("o", "wo"):
            fan_in = split(fan_in, cut.tensor)
        per_token = lora.rank * cut.stored
        if lora.dropout:
            per_token += fan_in * (cut.stored + MASK_BYTES)
            if cfg.remat != "none":  # recomputing the mask draws its uint32 random bits again
                per_token += fan_in * RANDOM_BITS_BYTES
        stack = tensor.path.split("/")[0]
        per_layer[stack] = per_layer.get(stack, 0) + tokens * per_token
        layers_of[stack] = tensor.shape[0] if tensor.stacked else 1
    if cfg.remat != "none":
        return cut.rows * max(per_layer.values(), default=0)
    return cut.rows * sum(layers_of[s] * b for s, b in per_layer.items())


def _logits_bytes(cfg: ModelConfig, cut: _Split, input_length: int, target_length: int,
                  kept: _Kept = KEEP_ALL) -> int:
    """The loss takes the logits in float32: the softmax's saved exponentials and the logits
    (then their gradient) are live together; in a narrower compute dtype the matmul's own
    output comes first, unless the output projection is frozen (measured against XLA for LoRA:
    then one bfloat16 logits array fewer)."""
    _, tokens = _stacks(cfg, input_length, target_length)
    c = dtype_bytes(cfg.dtype)
    per_number = 2 * FLOAT32_BYTES + (c if c != FLOAT32_BYTES and kept.head else 0)
    return cut.rows * tokens * split(cfg.vocab_size, cut.tensor) * per_number
