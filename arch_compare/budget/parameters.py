"""Parameter tensors and counts derived from a `ModelConfig` alone, without building a model.

The tensor list mirrors the model's own parameter tree path for path (tests hold it to
`model.abstract_params()`), so counts and per-tensor memory (Adafactor factors by shape) come from
one place. Counting follows Hugging Face's `num_parameters()`: a tied output head is the token
embedding and is counted once; an untied one is a separate `[d_model, vocab]` matrix.
"""

from __future__ import annotations

import dataclasses
import math

from arch_compare.models.config import ModelConfig

GROUPS = ("embedding", "attention", "mlp", "norm")


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One parameter array: its path in the model's tree, its shape and its accounting group."""

    path: str
    shape: tuple[int, ...]
    group: str
    stacked: int = 0  # leading axes that stack layers
    fan_in: int = 1  # axes after those that a matmul contracts (o's [heads, head_dim]: 2)

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"Tensor {self.path}: group must be one of {GROUPS}, got {self.group!r}")

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def matrix_shape(self) -> tuple[int, ...]:
        """The shape as the matrix a matmul uses: `[*stacked, fan_in, fan_out]`.

        Adafactor factors this (t5x does the same from logical axes); factoring the raw
        `[layers, d, heads, head_dim]` shape would pair d with head_dim and rarely factor at all.
        """
        inner = self.shape[self.stacked:]
        if len(inner) < 2:
            return self.shape
        return (*self.shape[:self.stacked], math.prod(inner[:self.fan_in]),
                math.prod(inner[self.fan_in:]))


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    embedding: int
    attention: int
    mlp: int
    norm: int

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norm

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


def _norm(prefix: str, cfg: ModelConfig, layers: tuple[int, ...]) -> list[Tensor]:
    names = ("scale", "bias") if cfg.norm == "layernorm" else ("scale",)
    return [Tensor(f"{prefix}/{name}", (*layers, cfg.d_model), "norm", len(layers))
            for name in names]


def _attention(prefix: str, cfg: ModelConfig, layers: tuple[int, ...]) -> list[Tensor]:
    d, h, kv, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kernels = {"q": (d, h, e), "k": (d, kv, e), "v": (d, kv, e), "o": (h, e, d)}
    biases = {"q": (h, e), "k": (kv, e), "v": (kv, e), "o": (d,)}
    tensors = [Tensor(f"{prefix}/{name}/kernel", (*layers, *shape), "attention", len(layers),
                      fan_in=2 if name == "o" else 1)
               for name, shape in kernels.items()]
    if cfg.use_bias:
        tensors += [Tensor(f"{prefix}/{name}/bias", (*layers, *shape), "attention", len(layers),
                           fan_in=len(shape))
                    for name, shape in biases.items()]
    return tensors


def _mlp(prefix: str, cfg: ModelConfig, layers: tuple[int, ...]) -> list[Tensor]:
    d, f = cfg.d_model, cfg.d_ff
    up = ("wi_0", "wi_1") if cfg.mlp_gated else ("wi",)
    tensors = [Tensor(f"{prefix}/{name}/kernel", (*layers, d, f), "mlp", len(layers))
               for name in up]
    tensors.append(Tensor(f"{prefix}/wo/kernel", (*layers, f, d), "mlp", len(layers)))
    if cfg.use_bias:
        tensors += [Tensor(f"{prefix}/{name}/bias", (*layers, f), "mlp", len(layers))
                    for name in up]
        tensors.append(Tensor(f"{prefix}/wo/bias", (*layers, d), "mlp", len(layers)))
    return tensors


def _stack(name: str, cfg: ModelConfig, num_layers: int, cross_attention: bool) -> list[Tensor]:
    layers = (num_layers,)  # blocks are stacked on a leading `layers` axis
    blocks = f"{name}/blocks"
    tensors = _norm(f"{blocks}/pre_self_attention_norm", cfg, layers)
    tensors += _attention(f"{blocks}/self_attention", cfg, layers)
    if cross_attention:
        tensors += _norm(f"{blocks}/pre_cross_attention_norm", cfg, layers)
        tensors += _attention(f"{blocks}/cross_attention", cfg, layers)
    tensors += _norm(f"{blocks}/pre_mlp_norm", cfg, layers)
    tensors += _mlp(f"{blocks}/mlp", cfg, layers)
    return tensors + _norm(f"{name}/final_norm", cfg, ())


def parameter_tensors(cfg: ModelConfig) -> tuple[Tensor, ...]:
    """Every parameter tensor of the model `cfg` describes, by path."""
    tensors = [Tensor("token_embed/embedding", (cfg.vocab_size, cfg.d_model), "embedding")]
    if cfg.position == "learned":
        tensors.append(Tensor("position_embed/embedding", (cfg.max_length, cfg.d_model),
                              "embedding"))
    if cfg.position == "relative":
        # T5 keeps one bias table per stack, shared by all of its layers.
        for name in ("encoder_relative_bias", "decoder_relative_bias"):
            tensors.append(Tensor(f"{name}/embedding", (cfg.relative_buckets, cfg.num_heads),
                                  "attention"))
    if cfg.is_encoder_decoder:
        tensors += _stack("encoder", cfg, cfg.num_encoder_layers, cross_attention=False)
    tensors += _stack("decoder", cfg, cfg.num_layers, cross_attention=cfg.is_encoder_decoder)
    if not cfg.tie_embeddings:
        tensors.append(Tensor("output_head/projection/kernel", (cfg.d_model, cfg.vocab_size),
                              "embedding"))
    return tuple(tensors)


def count_parameters(cfg: ModelConfig) -> ParameterCount:
    """Parameters by group; `.total` equals Hugging Face's `num_parameters()`."""
    sums = dict.fromkeys(GROUPS, 0)
    for tensor in parameter_tensors(cfg):
        sums[tensor.group] += tensor.size
    return ParameterCount(**sums)
