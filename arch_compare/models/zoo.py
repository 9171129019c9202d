"""Named model configurations with the published hyper-parameters.

Sources: the HF `config.json` of each released checkpoint (openai-community/gpt2*, the LLaMA 1/2/3
papers and their HF configs, google-t5/t5-*, google/t5-v1_1-*, google/flan-t5-*, google/ul2).
Flan-T5 shares T5 v1.1's architecture; only the weights differ. The `*-tiny` presets are for tests
and the offline demo.
"""

from __future__ import annotations

import difflib

from arch_compare.models.config import ModelConfig

GPT2_VOCAB = 50257
LLAMA_VOCAB = 32000
LLAMA3_VOCAB = 128256
T5_VOCAB = 32128


def gpt2(d_model: int, num_layers: int, num_heads: int, *, vocab_size: int = GPT2_VOCAB,
         max_length: int = 1024) -> ModelConfig:
    return ModelConfig(
        family="gpt2", arch="decoder_only", vocab_size=vocab_size, d_model=d_model,
        num_heads=num_heads, head_dim=d_model // num_heads, d_ff=4 * d_model,
        num_layers=num_layers, norm="layernorm", norm_eps=1e-5, mlp_activation="gelu_tanh",
        use_bias=True, position="learned", max_length=max_length, tie_embeddings=True,
        pad_id=vocab_size - 1, eos_id=vocab_size - 1, decoder_start_id=vocab_size - 1)


def llama(d_model: int, num_layers: int, num_heads: int, d_ff: int, *, family: str = "llama",
          num_kv_heads: int | None = None, vocab_size: int = LLAMA_VOCAB, norm_eps: float = 1e-6,
          rope_theta: float = 10_000.0, max_length: int = 2048, bos_id: int = 1,
          eos_id: int = 2) -> ModelConfig:
    return ModelConfig(
        family=family, arch="decoder_only", vocab_size=vocab_size, d_model=d_model,
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=d_model // num_heads, d_ff=d_ff,
        num_layers=num_layers, norm="rmsnorm", norm_eps=norm_eps, mlp_activation="silu",
        mlp_gated=True, position="rotary", rope_theta=rope_theta, max_length=max_length,
        tie_embeddings=False, pad_id=0, eos_id=eos_id, decoder_start_id=bos_id)


def t5(d_model: int, num_layers: int, num_heads: int, d_ff: int, *, head_dim: int = 64,
       family: str = "t5", vocab_size: int = T5_VOCAB) -> ModelConfig:
    """T5 v1.0: ReLU MLP, tied embeddings with the decoder output scaled by d_model**-0.5."""
    return ModelConfig(
        family=family, arch="encoder_decoder", vocab_size=vocab_size, d_model=d_model,
        num_heads=num_heads, head_dim=head_dim, d_ff=d_ff, num_layers=num_layers,
        num_encoder_layers=num_layers, norm="rmsnorm", norm_eps=1e-6, mlp_activation="relu",
        position="relative", max_length=512, scale_attention=False, tie_embeddings=True,
        scale_decoder_outputs=True, embedding_init_std=1.0, pad_id=0, eos_id=1,
        decoder_start_id=0)


def t5_v1_1(d_model: int, num_layers: int, num_heads: int, d_ff: int, *, head_dim: int = 64,
            family: str = "t5.1.1", activation: str = "gelu_tanh",
            vocab_size: int = T5_VOCAB) -> ModelConfig:
    """T5 v1.1 / Flan-T5 / UL2: gated MLP, untied output layer, no output scaling."""
    return t5(d_model, num_layers, num_heads, d_ff, head_dim=head_dim, family=family,
              vocab_size=vocab_size).replace(
        mlp_activation=activation, mlp_gated=True, tie_embeddings=False,
        scale_decoder_outputs=False)


T5_V1_1_SHAPES = {  # d_model, layers, heads, d_ff
    "small": (512, 8, 6, 1024), "base": (768, 12, 12, 2048), "large": (1024, 24, 16, 2816),
    "xl": (2048, 24, 32, 5120), "xxl": (4096, 24, 64, 10240)}

PRESETS: dict[str, ModelConfig] = {
    "gpt2-small": gpt2(768, 12, 12),
    "gpt2-medium": gpt2(1024, 24, 16),
    "gpt2-large": gpt2(1280, 36, 20),
    "gpt2-xl": gpt2(1600, 48, 25),
    "llama-7b": llama(4096, 32, 32, 11008),
    "llama-13b": llama(5120, 40, 40, 13824),
    "llama-33b": llama(6656, 60, 52, 17920),
    "llama-65b": llama(8192, 80, 64, 22016),
    "llama2-7b": llama(4096, 32, 32, 11008, family="llama2", norm_eps=1e-5, max_length=4096),
    "llama2-13b": llama(5120, 40, 40, 13824, family="llama2", norm_eps=1e-5, max_length=4096),
    "llama2-70b": llama(8192, 80, 64, 28672, family="llama2", num_kv_heads=8, norm_eps=1e-5,
                        max_length=4096),
    "llama3-8b": llama(4096, 32, 32, 14336, family="llama3", num_kv_heads=8,
                       vocab_size=LLAMA3_VOCAB, norm_eps=1e-5, rope_theta=500_000.0,
                       max_length=8192, bos_id=128000, eos_id=128001),
    "t5-small": t5(512, 6, 8, 2048),
    "t5-base": t5(768, 12, 12, 3072),
    "t5-large": t5(1024, 24, 16, 4096),
    "t5-3b": t5(1024, 24, 32, 16384, head_dim=128),
    "t5-11b": t5(1024, 24, 128, 65536, head_dim=128),
    **{f"t5.1.1-{size}": t5_v1_1(*shape) for size, shape in T5_V1_1_SHAPES.items()},
    **{f"flan-t5-{size}": t5_v1_1(*shape, family="flan-t5")
       for size, shape in T5_V1_1_SHAPES.items()},
    "ul2-20b": t5_v1_1(4096, 32, 16, 16384, head_dim=256, family="ul2", activation="silu"),
    # Tiny presets: small enough to train in seconds on a laptop CPU; same code paths as the real
    # ones (llama-tiny has grouped KV heads, ul2-tiny has head_dim != d_model / num_heads).
    "gpt2-tiny": gpt2(64, 2, 4, vocab_size=512, max_length=256),
    "llama-tiny": llama(64, 2, 4, 128, num_kv_heads=2, vocab_size=512, max_length=256),
    "t5-tiny": t5(64, 2, 4, 128, head_dim=16, vocab_size=512),
    "ul2-tiny": t5_v1_1(64, 2, 4, 128, head_dim=32, family="ul2", activation="silu",
                        vocab_size=512),
}
TINY_PRESETS = tuple(name for name in PRESETS if name.endswith("-tiny"))


def get_preset(name: str, overrides: dict | None = None) -> ModelConfig:
    """The preset `name`, with `overrides` (ModelConfig field -> value) applied and validated."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown preset {name!r}{hint} (arch-compare presets lists them)")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
