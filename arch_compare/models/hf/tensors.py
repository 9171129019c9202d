"""Tensor-name tables between Hugging Face checkpoints and this project's parameter trees.

Each family is a list of `TensorMap`s: HF tensor names (with `{i}` for a layer index), the parameter
paths they fill, and a `Layout` that converts both ways. Import and export walk the same table, so
they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Protocol, Sequence

import numpy as np

from arch_compare.models.config import ModelConfig

Shape = tuple[int, ...]
Index = tuple[slice, ...]  # one slice(start, stop) per axis: a block of an array


class Slicer(Protocol):
    """One HF tensor, readable a block at a time (safetensors' `get_slice`)."""

    shape: Shape

    def __getitem__(self, index: Index) -> np.ndarray: ...


def full_index(shape: Shape) -> Index:
    return tuple(slice(0, size) for size in shape)


def block_shape(index: Index) -> Shape:
    return tuple(s.stop - s.start for s in index)


def flat_range(index: Index, dims: Shape) -> slice | None:
    """Block `index` of an array shaped `dims` as one range of its row-major flattening, or None
    where the block is not contiguous there (e.g. `[h, e]` heads 2-3 with all of `e`: rows
    2e..4e of the HF `[h*e, d]` matrix; half of `e` would be strided)."""
    sizes = block_shape(index)
    # Contiguous: before the first axis taking more than one element, single elements; after
    # it, whole axes.
    first = next((k for k, size in enumerate(sizes) if size != 1), len(sizes) - 1)
    if any(sizes[k] != dims[k] for k in range(first + 1, len(dims))):
        return None
    start = sum(s.start * math.prod(dims[k + 1:]) for k, s in enumerate(index))
    return slice(start, start + math.prod(sizes))


class Layout:
    """How one or more HF tensors become one or more of our arrays (shapes exclude `layers`)."""

    def read(self, hf: Sequence[Slicer], ours: Sequence[Shape], part: int, index: Index
             ) -> np.ndarray:
        """Block `index` of our array number `part`, reading only the HF block it comes from
        where the layout maps blocks to blocks. This fallback reads the HF tensors whole (one
        map's tensors at a time) and cuts the block from the converted array."""
        whole = [tensor[full_index(tensor.shape)] for tensor in hf]
        return np.ascontiguousarray(self.to_ours(whole, ours)[part][index])

    def hf_shapes(self, ours: Sequence[Shape]) -> list[Shape]:
        raise NotImplementedError

    def to_ours(self, hf: Sequence[np.ndarray], ours: Sequence[Shape]) -> list[np.ndarray]:
        raise NotImplementedError

    def to_hf(self, ours: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class Same(Layout):
    """Identical shape and values (embeddings, norms, biases)."""

    def hf_shapes(self, ours):
        return [ours[0]]

    def read(self, hf, ours, part, index):
        return hf[0][index]

    def to_ours(self, hf, ours):
        return [hf[0]]

    def to_hf(self, ours):
        return [ours[0]]


class Flat(Layout):
    """A 1-D HF tensor <-> ours with head axes: `[h*e]` <-> `[h, e]` (GPT-2's fused q/k/v bias)."""

    def hf_shapes(self, ours):
        return [(math.prod(ours[0]),)]

    def read(self, hf, ours, part, index):
        flat = flat_range(index, ours[0])
        if flat is None:
            return super().read(hf, ours, part, index)
        return hf[0][(flat,)].reshape(block_shape(index))

    def to_ours(self, hf, ours):
        return [hf[0].reshape(ours[0])]

    def to_hf(self, ours):
        return [ours[0].reshape(-1)]


@dataclasses.dataclass(frozen=True)
class Linear(Layout):
    """A 2-D HF matrix <-> our kernel `[*in_dims, *out_dims]` whose first `num_in` axes are inputs.

    `transposed`: the HF matrix is `[out, in]` (torch.nn.Linear); otherwise `[in, out]` (GPT-2's
    Conv1D).
    """

    num_in: int
    transposed: bool = True

    def _matrix_shape(self, shape: Shape) -> Shape:
        rows, cols = math.prod(shape[:self.num_in]), math.prod(shape[self.num_in:])
        return (cols, rows) if self.transposed else (rows, cols)

    def hf_shapes(self, ours):
        return [self._matrix_shape(ours[0])]

    def read(self, hf, ours, part, index):
        shape = ours[0]
        rows = flat_range(index[:self.num_in], shape[:self.num_in])
        cols = flat_range(index[self.num_in:], shape[self.num_in:])
        if rows is None or cols is None:
            return super().read(hf, ours, part, index)
        matrix = hf[0][(cols, rows)].T if self.transposed else hf[0][(rows, cols)]
        return np.ascontiguousarray(matrix.reshape(block_shape(index)))

    def to_ours(self, hf, ours):
        matrix = hf[0].T if self.transposed else hf[0]
        return [matrix.reshape(ours[0])]

    def to_hf(self, ours):
        kernel = ours[0]
        matrix = kernel.reshape(math.prod(kernel.shape[:self.num_in]), -1)
        return [matrix.T if self.transposed else matrix]


@dataclasses.dataclass(frozen=True)
class Fused(Layout):
    """One HF tensor that concatenates several of ours along its last axis (GPT-2's c_attn)."""

    part: Layout

    def hf_shapes(self, ours):
        parts = [self.part.hf_shapes([shape])[0] for shape in ours]
        return [parts[0][:-1] + (sum(p[-1] for p in parts),)]

    def read(self, hf, ours, part, index):
        widths = [self.part.hf_shapes([shape])[0][-1] for shape in ours]
        columns = _Columns(hf[0], sum(widths[:part]), widths[part])
        return self.part.read([columns], [ours[part]], 0, index)

    def to_ours(self, hf, ours):
        pieces = np.split(hf[0], len(ours), axis=-1)
        return [self.part.to_ours([piece], [shape])[0] for piece, shape in zip(pieces, ours)]

    def to_hf(self, ours):
        return [np.concatenate([self.part.to_hf([array])[0] for array in ours], axis=-1)]


@dataclasses.dataclass(frozen=True)
class _Columns:
    """Columns [start, start + width) of an HF tensor, readable as a tensor of their own."""

    tensor: Slicer
    start: int
    width: int

    @property
    def shape(self) -> Shape:
        return tuple(self.tensor.shape[:-1]) + (self.width,)

    def __getitem__(self, index: Index) -> np.ndarray:
        last = index[-1]
        return self.tensor[(*index[:-1], slice(self.start + last.start,
                                               self.start + last.stop))]


@dataclasses.dataclass(frozen=True)
class TensorMap:
    hf_names: tuple[str, ...]
    our_paths: tuple[str, ...]
    layout: Layout

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_names[0]


def _map(hf: str | tuple[str, ...], ours: str | tuple[str, ...], layout: Layout) -> TensorMap:
    as_tuple = lambda x: (x,) if isinstance(x, str) else tuple(x)
    return TensorMap(as_tuple(hf), as_tuple(ours), layout)


SAME = Same()
IN_1 = Linear(num_in=1)  # [out, in] -> [d, ...]
IN_2 = Linear(num_in=2)  # [d, h*e] -> [h, e, d]


def _mlp_maps(cfg: ModelConfig, hf_prefix: str, ours: str, names: dict[str, str],
              layout_in: Layout, layout_out: Layout) -> list[TensorMap]:
    inputs = ("wi_0", "wi_1") if cfg.mlp_gated else ("wi",)
    maps = [_map(f"{hf_prefix}.{names[w]}.weight", f"{ours}/mlp/{w}/kernel", layout_in)
            for w in inputs]
    maps.append(_map(f"{hf_prefix}.{names['wo']}.weight", f"{ours}/mlp/wo/kernel", layout_out))
    return maps


def _attention_maps(hf_prefix: str, ours: str, names=("q", "k", "v", "o")) -> list[TensorMap]:
    q, k, v, o = names
    return [_map(f"{hf_prefix}.{q}.weight", f"{ours}/q/kernel", IN_1),
            _map(f"{hf_prefix}.{k}.weight", f"{ours}/k/kernel", IN_1),
            _map(f"{hf_prefix}.{v}.weight", f"{ours}/v/kernel", IN_1),
            _map(f"{hf_prefix}.{o}.weight", f"{ours}/o/kernel", IN_2)]


def _lm_head(cfg: ModelConfig) -> list[TensorMap]:
    return [] if cfg.tie_embeddings else [
        _map("lm_head.weight", "output_head/projection/kernel", IN_1)]


def gpt2_maps(cfg: ModelConfig) -> list[TensorMap]:
    h, b = "transformer.h.{i}", "decoder/blocks"
    conv = lambda n: Linear(num_in=n, transposed=False)
    attention = f"{b}/self_attention"
    maps = [
        _map("transformer.wte.weight", "token_embed/embedding", SAME),
        _map("transformer.wpe.weight", "position_embed/embedding", SAME),
        _map(f"{h}.attn.c_attn.weight",
             tuple(f"{attention}/{x}/kernel" for x in "qkv"), Fused(conv(1))),
        _map(f"{h}.attn.c_attn.bias", tuple(f"{attention}/{x}/bias" for x in "qkv"),
             Fused(Flat())),
        _map(f"{h}.attn.c_proj.weight", f"{attention}/o/kernel", conv(2)),
        _map(f"{h}.attn.c_proj.bias", f"{attention}/o/bias", SAME),
        _map(f"{h}.mlp.c_fc.weight", f"{b}/mlp/wi/kernel", conv(1)),
        _map(f"{h}.mlp.c_fc.bias", f"{b}/mlp/wi/bias", SAME),
        _map(f"{h}.mlp.c_proj.weight", f"{b}/mlp/wo/kernel", conv(1)),
        _map(f"{h}.mlp.c_proj.bias", f"{b}/mlp/wo/bias", SAME),
    ]
    for hf_norm, norm in (("ln_1", "pre_self_attention_norm"), ("ln_2", "pre_mlp_norm")):
        maps += [_map(f"{h}.{hf_norm}.weight", f"{b}/{norm}/scale", SAME),
                 _map(f"{h}.{hf_norm}.bias", f"{b}/{norm}/bias", SAME)]
    maps += [_map("transformer.ln_f.weight", "decoder/final_norm/scale", SAME),
             _map("transformer.ln_f.bias", "decoder/final_norm/bias", SAME)]
    return maps + _lm_head(cfg)


def llama_maps(cfg: ModelConfig) -> list[TensorMap]:
    h, b = "model.layers.{i}", "decoder/blocks"
    return [
        _map("model.embed_tokens.weight", "token_embed/embedding", SAME),
        _map(f"{h}.input_layernorm.weight", f"{b}/pre_self_attention_norm/scale", SAME),
        *_attention_maps(f"{h}.self_attn", f"{b}/self_attention",
                         ("q_proj", "k_proj", "v_proj", "o_proj")),
        _map(f"{h}.post_attention_layernorm.weight", f"{b}/pre_mlp_norm/scale", SAME),
        *_mlp_maps(cfg, f"{h}.mlp", b, {"wi_0": "gate_proj", "wi_1": "up_proj",
                                        "wo": "down_proj"}, IN_1, IN_1),
        _map("model.norm.weight", "decoder/final_norm/scale", SAME),
    ] + _lm_head(cfg)


def t5_maps(cfg: ModelConfig) -> list[TensorMap]:
    mlp_names = {"wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}
    maps = [_map("shared.weight", "token_embed/embedding", SAME)]
    for stack in ("encoder", "decoder"):
        h, b = f"{stack}.block.{{i}}", f"{stack}/blocks"
        maps += [
            _map(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 f"{stack}_relative_bias/embedding", SAME),
            _map(f"{h}.layer.0.layer_norm.weight", f"{b}/pre_self_attention_norm/scale", SAME),
            *_attention_maps(f"{h}.layer.0.SelfAttention", f"{b}/self_attention"),
            _map(f"{stack}.final_layer_norm.weight", f"{stack}/final_norm/scale", SAME),
        ]
        mlp_layer = 1
        if stack == "decoder":
            maps += [
                _map(f"{h}.layer.1.layer_norm.weight", f"{b}/pre_cross_attention_norm/scale",
                     SAME),
                *_attention_maps(f"{h}.layer.1.EncDecAttention", f"{b}/cross_attention"),
            ]
            mlp_layer = 2
        maps += [_map(f"{h}.layer.{mlp_layer}.layer_norm.weight", f"{b}/pre_mlp_norm/scale",
                      SAME),
                 *_mlp_maps(cfg, f"{h}.layer.{mlp_layer}.DenseReluDense", b, mlp_names,
                            IN_1, IN_1)]
    return maps + _lm_head(cfg)


@dataclasses.dataclass(frozen=True)
class FamilyTensors:
    maps: Callable[[ModelConfig], list[TensorMap]]
    # Checkpoints saved from a bare base model lack this prefix (the original GPT-2 files).
    optional_prefix: str
    # Tensors HF files may carry that hold nothing of ours: tied aliases and cached buffers.
    ignored_suffixes: tuple[str, ...]


FAMILY_TENSORS: dict[str, FamilyTensors] = {
    "gpt2": FamilyTensors(gpt2_maps, "transformer.",
                          (".attn.bias", ".attn.masked_bias", "lm_head.weight")),
    "llama": FamilyTensors(llama_maps, "", ("rotary_emb.inv_freq", "lm_head.weight")),
    "t5": FamilyTensors(t5_maps, "", ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                      "EncDecAttention.relative_attention_bias.weight",
                                      "lm_head.weight")),
}
