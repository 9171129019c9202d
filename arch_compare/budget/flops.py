"""Matmul FLOPs of a forward pass and a training step, one matmul at a time.

Conventions (the usual ones of Kaplan et al. 2020 and the PaLM appendix, made explicit):
- A matmul of [m, k] by [k, n] costs 2*m*k*n FLOPs. Matmuls are what counts: embedding lookups are
  gathers, and norms, activations and rotary are elementwise, a few percent at real sizes. The one
  elementwise term kept is the attention softmax, 3 FLOPs per score as in the Chinchilla paper's
  accounting (Hoffmann et al. 2022, appendix F), because it grows with length squared.
- Attention is costed per matmul from heads x head_dim ("inner"), never from d_model: T5-11B has
  inner 16384 at d_model 1024, and grouped KV heads shrink only the K and V projections.
- Causal self-attention: with `causal="halved"` (the default, what a causal kernel can skip) the
  score and value matmuls cost half of the full square; `causal="full"` counts the whole square,
  which is what a masked dense implementation (this project's models on CPU) executes.
- Decoder-only models run on inputs + targets concatenated (a prefix LM). Encoder-decoder models
  run the encoder on input tokens and the decoder on target tokens; cross-attention projects K and V
  from the encoder states, so those two matmuls scale with the input length.
- A training step is one forward and a backward of twice its cost (gradients for activations and
  for weights); rematerialisation recomputes the forward once more.
- Recipes (`training_flops(..., recipe=)`): `full`, `mix` and `l2sp` train every weight, so a
  token costs the same (mix's extra tokens are extra examples; L2-SP's penalty is per step, see
  `budget/recipes.py`). `lora` freezes the weights: each frozen matmul runs forward and its
  input gradient (2 + 2 per weight per token, no weight gradient), the attention scores keep
  their forward and backward (3x), and each adapter (`x @ A @ B`, 2 x rank x (fan_in + fan_out)
  FLOPs per token forward) adds its forward, input-gradient and weight-gradient matmuls (3x).
  Every frozen matmul's input gradient is counted, the first layer's too (which nothing trained
  below it needs): an overcount of one layer's projections out of the model's.
"""

from __future__ import annotations

import dataclasses

from arch_compare.budget import recipes as recipes_lib
from arch_compare.models.config import ModelConfig
from arch_compare.recipes import FULL, LoraConfig, Recipe

CAUSAL_CONVENTIONS = {"halved": 0.5, "full": 1.0}
SOFTMAX_FLOPS_PER_SCORE = 3


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
    """Forward-pass FLOPs of one example, by kind of matmul."""

    attention_projections: float  # q, k, v, o (self and cross)
    attention_scores: float  # q.k^T, softmax and probabilities.v
    mlp: float
    logits: float

    @property
    def total(self) -> float:
        return self.attention_projections + self.attention_scores + self.mlp + self.logits

    def scaled(self, factor: float) -> "ForwardFlops":
        return ForwardFlops(*(factor * value for value in dataclasses.astuple(self)))

    def __add__(self, other: "ForwardFlops") -> "ForwardFlops":
        return ForwardFlops(*(a + b for a, b in zip(dataclasses.astuple(self),
                                                    dataclasses.astuple(other))))

    def to_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "total": self.total}


def _projections(cfg: ModelConfig, query_tokens: int, key_tokens: int) -> float:
    """q and o run on the attending tokens; k and v on the attended ones (grouped KV heads)."""
    d, h, kv, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return 2 * query_tokens * d * h * e * 2 + 2 * key_tokens * d * kv * e * 2


def _scores(cfg: ModelConfig, query_tokens: int, key_tokens: int, fraction: float) -> float:
    """q.k^T and probabilities.v, each 2 * queries * keys * heads * head_dim, plus the softmax."""
    scores = query_tokens * key_tokens * cfg.num_heads * fraction
    return scores * (2 * 2 * cfg.head_dim + SOFTMAX_FLOPS_PER_SCORE)


def _mlp(cfg: ModelConfig, tokens: int) -> float:
    matrices = 3 if cfg.mlp_gated else 2
    return 2 * tokens * cfg.d_model * cfg.d_ff * matrices


def _stack(cfg: ModelConfig, layers: int, tokens: int, self_fraction: float,
           cross_tokens: int = 0) -> ForwardFlops:
    projections = _projections(cfg, tokens, tokens)
    scores = _scores(cfg, tokens, tokens, self_fraction)
    if cross_tokens:
        projections += _projections(cfg, tokens, cross_tokens)
        scores += _scores(cfg, tokens, cross_tokens, 1.0)
    return ForwardFlops(projections, scores, _mlp(cfg, tokens), 0.0).scaled(layers)


def forward_flops(cfg: ModelConfig, input_length: int, target_length: int,
                  causal: str = "halved") -> ForwardFlops:
    """FLOPs of one forward pass over one example of `input_length` + `target_length` tokens."""
    if causal not in CAUSAL_CONVENTIONS:
        raise ValueError(f"causal must be one of {sorted(CAUSAL_CONVENTIONS)}, got {causal!r}")
    if input_length < 0 or target_length <= 0:
        raise ValueError(f"need input_length >= 0 and target_length > 0, got {input_length} "
                         f"and {target_length}")
    fraction = CAUSAL_CONVENTIONS[causal]
    if cfg.is_encoder_decoder:
        encoder = (_stack(cfg, cfg.num_encoder_layers, input_length, 1.0) if input_length
                   else ForwardFlops(0.0, 0.0, 0.0, 0.0))
        decoder = _stack(cfg, cfg.num_layers, target_length, fraction, cross_tokens=input_length)
        decoder_tokens = target_length
        stacks = encoder + decoder
    else:
        decoder_tokens = input_length + target_length
        stacks = _stack(cfg, cfg.num_layers, decoder_tokens, fraction)
    logits = 2 * decoder_tokens * cfg.d_model * cfg.vocab_size
    return stacks + ForwardFlops(0.0, 0.0, 0.0, logits)


def kernel_tokens(cfg: ModelConfig, path: str, input_length: int, target_length: int) -> int:
    """Tokens one layer's copy of the kernel (or LoRA adapter) at `path` multiplies in one
    example: the encoder's on inputs, the decoder's on targets (encoder-decoder: cross-attention's
    k and v on the encoder states, inputs) or on inputs + targets (decoder-only)."""
    if path.startswith("encoder/"):
        return input_length
    if not cfg.is_encoder_decoder:
        return input_length + target_length
    if "/cross_attention/" in path and recipes_lib.kernel_name(path) in ("k", "v"):
        return input_length
    return target_length


def adapter_forward_flops(cfg: ModelConfig, lora: LoraConfig, input_length: int,
                          target_length: int) -> float:
    """Forward FLOPs of LoRA's adapters over one example: `x @ A` then `@ B`, 2 x tokens x size
    for each of `A` and `B` (per layer: 2 x tokens x rank x (fan_in + fan_out))."""
    return float(sum(2 * tensor.size * kernel_tokens(cfg, tensor.path, input_length, target_length)
                     for tensor in recipes_lib.adapter_tensors(cfg, lora)))


def training_flops(cfg: ModelConfig, input_length: int, target_length: int,
                   causal: str = "halved", remat: bool = False, recipe: Recipe = FULL) -> float:
    """FLOPs of forward + backward for one example of a run of `recipe`; `remat` adds one more
    forward. ValueError for a recipe that trains nothing (`wise`: price its evaluations)."""
    forward = forward_flops(cfg, input_length, target_length, causal)
    if not recipe.trains:
        raise ValueError(f"recipe {recipe.name!r} ({recipe.kind}) trains nothing: it has no "
                         f"training FLOPs, only its evaluations' forward passes")
    if recipe.kind != "lora":
        return forward.total * (4 if remat else 3)
    adapters = adapter_forward_flops(cfg, recipe.lora, input_length, target_length)
    weights = forward.total - forward.attention_scores  # projections, MLP and logits: frozen
    train = 3 * forward.attention_scores + 2 * weights + 3 * adapters
    return train + (forward.total + adapters if remat else 0.0)


def inference_flops_per_token(cfg: ModelConfig, input_length: int, target_length: int,
                              causal: str = "halved") -> float:
    """Forward FLOPs per processed token (inputs and targets alike), averaged over the example."""
    return forward_flops(cfg, input_length, target_length, causal).total / (
        input_length + target_length)
