"""Tiny random Hugging Face reference models, written to disk the way real checkpoints are.

Shared by the parity and export tests. Each case is a transformers PyTorch model with every weight
randomised (norm scales and biases included, so a swapped or dropped tensor changes the logits),
saved as a model directory, then loaded back with `from_pretrained`: the reference is what
transformers itself reads from that directory, which is exactly what `load_hf_checkpoint` reads.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from flax import traverse_util
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, T5Config, T5ForConditionalGeneration)

from arch_compare.models.model import BaseModel, Params

VOCAB = 128
LENGTH = 30  # > relative_attention_max_distance, so T5's logarithmic far buckets are used
PAD_TAIL = 7  # padding tokens at the end of the second encoder row
TOLERANCE = 1e-4
# Tensors transformers writes for tied T5 embeddings; real untied checkpoints omit them.
T5_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
LM_HEAD = "lm_head.weight"


def _gpt2() -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64, tie_word_embeddings=True))


def _llama() -> torch.nn.Module:
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=False))


def _t5(feed_forward_proj: str, tied: bool, **dims) -> Callable[[], torch.nn.Module]:
    def build():
        config = T5Config(
            vocab_size=VOCAB, d_model=32, d_ff=64, num_heads=4, feed_forward_proj=feed_forward_proj,
            relative_attention_num_buckets=8, relative_attention_max_distance=20,
            tie_word_embeddings=tied, **{"d_kv": 8, "num_layers": 2, **dims})
        return T5ForConditionalGeneration(config)
    return build


@dataclasses.dataclass(frozen=True)
class Case:
    build: Callable[[], torch.nn.Module]
    encoder_decoder: bool
    tied: bool
    # T5 does not divide attention scores by sqrt(d_kv), so at 0.3 its float32 scores get large
    # enough that transformers' own float32 logits are 2-4e-4 from its float64 ones (measured):
    # parity at 1e-4 would then test rounding, not the mapping. 0.15 keeps that error ~1e-5.
    weight_std: float = 0.3


T5_STD = 0.15
CASES = {
    "gpt2": Case(_gpt2, encoder_decoder=False, tied=True),
    "llama-gqa": Case(_llama, encoder_decoder=False, tied=False),
    "t5-v1.0": Case(_t5("relu", tied=True), encoder_decoder=True, tied=True, weight_std=T5_STD),
    "t5-v1.1": Case(_t5("gated-gelu", tied=False), encoder_decoder=True, tied=False,
                    weight_std=T5_STD),
    # d_kv * num_heads != d_model, and a deeper decoder than encoder.
    "ul2": Case(_t5("gated-silu", tied=False, d_kv=16, num_decoder_layers=3),
                encoder_decoder=True, tied=False, weight_std=T5_STD),
}


@dataclasses.dataclass(frozen=True)
class Reference:
    name: str
    case: Case
    directory: Path
    model: torch.nn.Module  # loaded back from `directory`, in eval mode


def _randomize(model: torch.nn.Module, std: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # 1-D `.weight`s are norm scales: keep them near 1 so activations stay O(1).
            mean = 1.0 if param.ndim == 1 and name.endswith("weight") else 0.0
            param.copy_(mean + std * torch.randn(param.shape, generator=generator))


def _save_untied_t5(model: torch.nn.Module, directory: Path) -> None:
    """Write the real T5 v1.1 / UL2 layout; `save_pretrained` in transformers 5.x cannot.

    `T5Config` forces `tie_word_embeddings=True` in memory, so `save_pretrained` would record a
    tied model. Real checkpoints say False in config.json and ship a separate lm_head.weight.
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().clone().contiguous()
             for name, tensor in model.state_dict().items() if name not in T5_EMBEDDING_ALIASES}
    safetensors.torch.save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("scale_decoder_outputs", None)
    config["tie_word_embeddings"] = False
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def load_reference_model(directory: Path, encoder_decoder: bool) -> torch.nn.Module:
    auto = T5ForConditionalGeneration if encoder_decoder else AutoModelForCausalLM
    # eval(): dropout is active in a freshly built model; eager: the plain reference math.
    return auto.from_pretrained(directory, attn_implementation="eager").eval()


def build_reference(name: str, directory: Path, seed: int = 0) -> Reference:
    case = CASES[name]
    torch.manual_seed(seed)
    model = case.build()
    untied_t5 = case.encoder_decoder and not case.tied
    if untied_t5:  # a head of its own, not an alias of the shared embedding
        model.lm_head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=False)
    _randomize(model, case.weight_std, seed)
    if untied_t5:
        _save_untied_t5(model, directory)
    else:
        model.save_pretrained(directory)
    return Reference(name, case, directory, load_reference_model(directory, case.encoder_decoder))


def make_batch(encoder_decoder: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """seqio features, 2 rows of LENGTH tokens in [1, VOCAB); 0 is padding and decoder start."""
    rng = np.random.default_rng(seed)
    tokens = lambda: rng.integers(1, VOCAB, size=(2, LENGTH), dtype=np.int32)
    if not encoder_decoder:
        return {"decoder_input_tokens": tokens()}
    inputs, targets = tokens(), tokens()
    inputs[1, -PAD_TAIL:] = 0
    targets[:, 0] = 0  # decoder_start_token_id
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": targets}


def hf_logits(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> np.ndarray:
    as_torch = lambda name: torch.from_numpy(batch[name].astype(np.int64))
    with torch.no_grad():
        if "encoder_input_tokens" not in batch:
            return model(input_ids=as_torch("decoder_input_tokens")).logits.numpy()
        inputs = as_torch("encoder_input_tokens")
        return model(input_ids=inputs, attention_mask=(inputs != 0).long(),
                     decoder_input_ids=as_torch("decoder_input_tokens")).logits.numpy()


def our_logits(model: BaseModel, params: Params, batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(model.logits(params, batch))


def flat_params(params: Params) -> dict[str, np.ndarray]:
    """{"a/b/kernel": array}: the same slash paths as the library's tensor tables."""
    return {path: np.asarray(value)
            for path, value in traverse_util.flatten_dict(params, sep="/").items()}


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor in a model directory, whether one file or several shards."""
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(safetensors.numpy.load_file(file))
    return tensors


def assert_untied_t5(model: torch.nn.Module, directory: Path) -> None:
    """`model` (from `from_pretrained(directory)`) keeps its own head: the file's lm_head.weight."""
    head, embedding = model.lm_head.weight, model.shared.weight
    assert head.untyped_storage().data_ptr() != embedding.untyped_storage().data_ptr()
    assert not torch.equal(head, embedding)
    assert np.array_equal(head.detach().numpy(), read_tensors(directory)[LM_HEAD])
    # No d_model**-0.5 output scaling: that belongs to tied T5 v1.0 only.
    assert model.config.scale_decoder_outputs is False
