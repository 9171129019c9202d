"""Hugging Face `config.json` <-> `ModelConfig`, one reader and one writer per `model_type`.

Readers refuse settings the shared layers do not implement (rather than load a model that computes
something else) and name the offending key.
"""

from __future__ import annotations

from typing import Any, Callable

from arch_compare.models.config import ModelConfig

HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu", "swish": "silu"}
ACTIVATION_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}
T5_FAMILY_BY_PROJ = {"relu": "t5", "gated-gelu": "t5.1.1", "gated-silu": "ul2"}


class UnsupportedConfigError(ValueError):
    pass


def _activation(name: str, key: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise UnsupportedConfigError(f"config.json: {key}={name!r} is not supported "
                                     f"(known: {', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


def _require_value(hf: dict, key: str, allowed, default) -> None:
    if hf.get(key, default) not in allowed:
        raise UnsupportedConfigError(f"config.json: {key}={hf[key]!r} is not supported")


def _first(token_id):  # LLaMA 3.x lists several EOS ids
    return token_id[0] if isinstance(token_id, list) else token_id


def gpt2_from_hf(hf: dict) -> ModelConfig:
    _require_value(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
    d_model = hf["n_embd"]
    eos = hf.get("eos_token_id", 50256)
    return ModelConfig(
        family="gpt2", arch="decoder_only", vocab_size=hf["vocab_size"], d_model=d_model,
        num_heads=hf["n_head"], head_dim=d_model // hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d_model, num_layers=hf["n_layer"], norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp_activation=_activation(hf.get("activation_function", "gelu_new"),
                                   "activation_function"),
        use_bias=True, position="learned", max_length=hf["n_positions"],
        scale_attention=hf.get("scale_attn_weights", True),
        tie_embeddings=hf.get("tie_word_embeddings", True), pad_id=eos, eos_id=eos,
        decoder_start_id=hf.get("bos_token_id", eos))


def gpt2_to_hf(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_embd": cfg.d_model, "n_head": cfg.num_heads,
        "n_inner": cfg.d_ff, "n_layer": cfg.num_layers, "n_positions": cfg.max_length,
        "layer_norm_epsilon": cfg.norm_eps, "activation_function": ACTIVATION_TO_HF[cfg.mlp_activation],
        "scale_attn_weights": cfg.scale_attention, "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.decoder_start_id, "eos_token_id": cfg.eos_id,
    }


def _rope_theta(hf: dict) -> float:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedConfigError(
            f"config.json: rope type {rope_type!r} is not supported (only unscaled rotary)")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def llama_from_hf(hf: dict) -> ModelConfig:
    for key in ("attention_bias", "mlp_bias"):
        _require_value(hf, key, (False,), False)
    num_heads = hf["num_attention_heads"]
    # The family name is descriptive only (every LLaMA generation runs the same code).
    family = ("llama3" if hf["vocab_size"] >= 128000 else
              "llama2" if hf.get("rms_norm_eps", 1e-6) == 1e-5 else "llama")
    return ModelConfig(
        family=family, arch="decoder_only", vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"], num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        d_ff=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), mlp_activation=_activation(
            hf.get("hidden_act", "silu"), "hidden_act"), mlp_gated=True, position="rotary",
        rope_theta=_rope_theta(hf), max_length=hf.get("max_position_embeddings", 2048),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        pad_id=hf.get("pad_token_id") or 0, eos_id=_first(hf.get("eos_token_id", 2)),
        decoder_start_id=hf.get("bos_token_id", 1))


def llama_to_hf(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "rms_norm_eps": cfg.norm_eps,
        "hidden_act": ACTIVATION_TO_HF[cfg.mlp_activation],
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": cfg.max_length, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": cfg.decoder_start_id,
        "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id,
    }


def t5_from_hf(hf: dict) -> ModelConfig:
    projection = hf.get("feed_forward_proj", "relu")
    gated = projection.startswith("gated-")
    activation = projection.removeprefix("gated-")
    if activation == "gelu" and gated:
        activation = "gelu_new"  # HF maps "gated-gelu" to the tanh approximation
    # transformers 5.x rewrites `tie_word_embeddings` to True on load and keeps the T5 v1.0
    # output scaling in `scale_decoder_outputs`; real T5 v1.1 checkpoints say False and ship
    # a separate `lm_head.weight`. Read the raw file values.
    tied = hf.get("tie_word_embeddings", True) is not False
    return ModelConfig(
        family=T5_FAMILY_BY_PROJ.get(projection, "t5"), arch="encoder_decoder",
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], num_heads=hf["num_heads"],
        head_dim=hf["d_kv"], d_ff=hf["d_ff"],
        num_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        num_encoder_layers=hf["num_layers"], norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        mlp_activation=_activation(activation, "feed_forward_proj"), mlp_gated=gated,
        position="relative", max_length=hf.get("n_positions", 512),
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        scale_attention=False, tie_embeddings=tied,
        scale_decoder_outputs=tied and hf.get("scale_decoder_outputs", True),
        embedding_init_std=1.0, pad_id=hf.get("pad_token_id", 0),
        eos_id=hf.get("eos_token_id", 1), decoder_start_id=hf.get("decoder_start_token_id", 0))


def t5_to_hf(cfg: ModelConfig) -> dict:
    activation = ACTIVATION_TO_HF[cfg.mlp_activation]
    if cfg.mlp_gated:
        if cfg.mlp_activation == "gelu":
            raise UnsupportedConfigError(
                "HF T5 reads 'gated-gelu' as tanh GELU; a gated exact GELU has no T5 spelling")
        activation = "gated-" + ("gelu" if activation == "gelu_new" else activation)
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.head_dim,
        "d_ff": cfg.d_ff, "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_layers, "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": activation,
        "tie_word_embeddings": cfg.tie_embeddings,
        "scale_decoder_outputs": cfg.scale_decoder_outputs, "is_encoder_decoder": True,
        "pad_token_id": cfg.pad_id, "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
    }


CONFIG_READERS: dict[str, Callable[[dict], ModelConfig]] = {
    "gpt2": gpt2_from_hf, "llama": llama_from_hf, "t5": t5_from_hf}
# Our family names -> the HF model_type whose writer exports them.
HF_MODEL_TYPE = {"gpt2": "gpt2", "llama": "llama", "llama2": "llama", "llama3": "llama",
                 "t5": "t5", "t5.1.1": "t5", "flan-t5": "t5", "ul2": "t5"}
CONFIG_WRITERS: dict[str, Callable[[ModelConfig], dict]] = {
    "gpt2": gpt2_to_hf, "llama": llama_to_hf, "t5": t5_to_hf}


def model_type_of(hf: dict[str, Any], source: str) -> str:
    model_type = hf.get("model_type")
    if model_type not in CONFIG_READERS:
        raise UnsupportedConfigError(
            f"{source}: model_type {model_type!r} is not supported; this project reads "
            f"{', '.join(sorted(CONFIG_READERS))}")
    return model_type


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    model_type = model_type_of(hf, source)
    try:
        return CONFIG_READERS[model_type](hf)
    except KeyError as missing:
        raise UnsupportedConfigError(f"{source}: missing key {missing} for {model_type}") from None


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.family not in HF_MODEL_TYPE:
        raise UnsupportedConfigError(f"no Hugging Face export for family {cfg.family!r}")
    return CONFIG_WRITERS[HF_MODEL_TYPE[cfg.family]](cfg)
