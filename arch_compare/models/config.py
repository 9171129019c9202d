"""Model configuration: one frozen dataclass describes every family.

GPT-2, LLaMA 1/2/3, T5 v1.0, T5 v1.1 / Flan-T5 and UL2 differ only in the values below; the layers
that read them exist once (`layers.py`). A config is validated when it is built, so a bad value fails
where it was written, naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import jax.numpy as jnp

Architecture = Literal["decoder_only", "encoder_decoder"]

ARCHITECTURES = ("decoder_only", "encoder_decoder")
NORMS = ("layernorm", "rmsnorm")
# "gelu_tanh" is GPT-2's and T5 v1.1's "gelu_new"; "gelu" is the exact erf form.
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
POSITIONS = ("learned", "rotary", "relative")
POSITIONS_BY_ARCH = {"decoder_only": ("learned", "rotary"),
                     "encoder_decoder": ("relative", "rotary")}
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # what a budget needs of a dtype
# Rematerialisation of each block in the backward pass, by what it keeps (the policies themselves
# are in `transformer.REMAT_POLICIES`): "none" keeps every activation, "block" only each block's
# input, "dots_saveable" the matmul outputs, "dots_with_no_batch_dims_saveable" the weight matmuls.
REMAT_CHOICES = ("none", "block", "dots_saveable", "dots_with_no_batch_dims_saveable")
# Fields that say how a model runs, not what it computes: checkpoints are shared across them.
EXECUTION_FIELDS = ("dtype", "param_dtype", "remat", "scan_layers")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only or encoder-decoder Transformer.

    For encoder-decoder models `num_layers` is the decoder depth and `num_encoder_layers` the
    encoder depth; decoder-only models leave `num_encoder_layers` at 0.
    """

    family: str
    arch: Architecture
    vocab_size: int
    d_model: int
    num_heads: int
    head_dim: int
    d_ff: int
    num_layers: int
    num_encoder_layers: int = 0
    num_kv_heads: int | None = None  # None: as many as query heads (no grouping)
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    mlp_activation: str = "relu"
    mlp_gated: bool = False
    use_bias: bool = False  # biases on every dense layer (GPT-2)
    position: str = "relative"
    max_length: int = 0  # learned-position table size; informational for rotary/relative
    rope_theta: float = 10_000.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    scale_attention: bool = True  # divide scores by sqrt(head_dim); T5 folds this into its init
    tie_embeddings: bool = True
    scale_decoder_outputs: bool = False  # T5 v1.0: multiply by d_model**-0.5 before the tied head
    embedding_init_std: float = 0.02
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0  # first decoder input (T5: pad; GPT-2/LLaMA: BOS)
    scan_layers: bool = True  # False unrolls the layer loop (one compiled copy per layer)
    remat: str = "none"  # one of REMAT_CHOICES
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        _check_choice("arch", self.arch, ARCHITECTURES)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("mlp_activation", self.mlp_activation, ACTIVATIONS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("param_dtype", self.param_dtype, DTYPES)
        _check_choice("remat", self.remat, REMAT_CHOICES)
        for name in ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_layers",
                     "num_kv_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        if self.arch == "encoder_decoder" and self.num_encoder_layers <= 0:
            raise ValueError("ModelConfig.num_encoder_layers must be positive for encoder_decoder")
        if self.arch == "decoder_only" and self.num_encoder_layers:
            raise ValueError("ModelConfig.num_encoder_layers must be 0 for decoder_only")
        allowed = POSITIONS_BY_ARCH[self.arch]
        if self.position not in allowed:
            raise ValueError(f"ModelConfig.position={self.position!r} is not supported for "
                             f"{self.arch}; use one of {', '.join(allowed)}")
        if self.position == "learned" and self.max_length <= 0:
            raise ValueError("ModelConfig.max_length must be positive with learned positions")
        if self.position == "rotary" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for rotary, got {self.head_dim}")
        if self.position == "relative" and not (
                0 < self.relative_buckets and 0 < self.relative_max_distance):
            raise ValueError("ModelConfig.relative_buckets and relative_max_distance must be positive")
        if self.scale_decoder_outputs and not self.tie_embeddings:
            raise ValueError("ModelConfig.scale_decoder_outputs applies to tied embeddings only")
        if self.norm_eps <= 0:
            raise ValueError(f"ModelConfig.norm_eps must be positive, got {self.norm_eps}")

    @property
    def is_encoder_decoder(self) -> bool:
        return self.arch == "encoder_decoder"

    @property
    def compute_dtype(self) -> jnp.dtype:
        import jax.numpy as jnp  # only models ask; a config is read (priced, listed) without JAX
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        import jax.numpy as jnp
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def architecture_dict(self) -> dict:
        """`to_dict` without the execution fields: what a checkpoint must agree with."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        values = dict(values)
        if "remat_layers" in values:  # directories written before remat policies had names
            values["remat"] = "block" if values.pop("remat_layers") else "none"
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
        return cls(**values)


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"ModelConfig.{field}={value!r} is not one of {', '.join(choices)}")

