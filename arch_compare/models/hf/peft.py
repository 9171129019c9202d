"""Export LoRA adapters in PEFT's layout, for `peft.PeftModel.from_pretrained` on the HF base.

A directory with `adapter_config.json` (peft_type LORA, rank, alpha, dropout, the HF modules
targeted) and `adapter_model.safetensors` holding, for every adapted module,
`base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r]. Module names
and the flattening of head axes come from the family's tensor table (`tensors.py`), the same one
the checkpoint exporter walks, so base and adapters cannot disagree on a name or a layout.

GPT-2 fuses q/k/v into one Conv1D `c_attn`, while our adapters are per projection. Separate
adapters on n of the three are exactly one rank-(n*r) adapter on `c_attn`: A stacks the n A's
([n*r, d]) and B is block-diagonal ([3*h*e, n*r], zero blocks for the untargeted outputs), so
`rank_pattern` gives `c_attn` rank n*r and `alpha_pattern` alpha n*alpha, keeping alpha / r.
(PEFT draws one dropout mask for the fused module where we draw one per projection: the same
model at evaluation, a slightly different regulariser if training continues in PEFT.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from arch_compare.models.hf.checkpoint import CheckpointError, _layer_names
from arch_compare.models.hf.configs import HF_MODEL_TYPE, UnsupportedConfigError
from arch_compare.models.hf.tensors import FAMILY_TENSORS, Fused, Linear, TensorMap
from arch_compare.models.lora import is_adapter
from arch_compare.models.model import BaseModel, Params

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
KERNEL = "kernel"


@dataclasses.dataclass(frozen=True)
class _AdaptedModule:
    """One HF module with adapters: its per-layer names, its kernel paths (several when fused)
    and which of them carry adapters, and the Linear layout of each part."""

    tensor_map: TensorMap
    linear: Linear
    adapted: tuple[bool, ...]

    @property
    def module_pattern(self) -> str:  # e.g. "transformer.h.{i}.attn.c_attn"
        return self.tensor_map.hf_names[0].removesuffix(".weight")

    @property
    def target(self) -> str:
        """PEFT's `target_modules` entry: the last two name components (`attn.c_proj`,
        `self_attn.q_proj`, `EncDecAttention.q`): PEFT matches a module whose name ends in
        `.<target>`, and GPT-2's `c_proj` alone would also match the MLP's."""
        return ".".join(self.module_pattern.split(".")[-2:])


def _linear_of(tensor_map: TensorMap) -> tuple[Linear, bool]:
    layout = tensor_map.layout
    fused = isinstance(layout, Fused)
    linear = layout.part if fused else layout
    if not isinstance(linear, Linear):
        raise UnsupportedConfigError(f"adapters on {tensor_map.hf_names[0]}: layout "
                                     f"{type(linear).__name__} is not a linear map")
    if fused and linear.transposed:
        # Fused concatenates along the HF tensor's last axis: outputs only for [in, out].
        raise UnsupportedConfigError(f"{tensor_map.hf_names[0]}: fused inputs are not supported")
    return linear, fused


def _adapted_modules(model: BaseModel) -> list[_AdaptedModule]:
    cfg = model.config
    if cfg.family not in HF_MODEL_TYPE:
        raise UnsupportedConfigError(f"no Hugging Face export for family {cfg.family!r}")
    adapter_paths = {"/".join(path) for path in
                     traverse_util.flatten_dict(model.abstract_params()) if is_adapter(path)}
    modules, covered = [], set()
    for tensor_map in FAMILY_TENSORS[HF_MODEL_TYPE[cfg.family]].maps(cfg):
        if not tensor_map.our_paths[0].endswith("/" + KERNEL):
            continue
        owners = [path.removesuffix(KERNEL) for path in tensor_map.our_paths]
        adapted = tuple(owner + "lora_a" in adapter_paths for owner in owners)
        if any(adapted):
            linear, _ = _linear_of(tensor_map)
            modules.append(_AdaptedModule(tensor_map, linear, adapted))
            covered.update(owner + name for owner, on in zip(owners, adapted) if on
                           for name in ("lora_a", "lora_b"))
    missing = sorted(adapter_paths - covered)
    assert not missing, f"the {cfg.family} tensor table has no module for adapters {missing}"
    return modules


def _check_targets(model: BaseModel, modules: list[_AdaptedModule]) -> None:
    """PEFT picks modules by name suffix: make sure the suffixes select exactly ours."""
    cfg = model.config
    targets = {module.target for module in modules}
    chosen = {module.module_pattern for module in modules}
    for tensor_map in FAMILY_TENSORS[HF_MODEL_TYPE[cfg.family]].maps(cfg):
        pattern = tensor_map.hf_names[0].removesuffix(".weight")
        matched = any(pattern == t or pattern.endswith("." + t) for t in targets)
        if matched != (pattern in chosen):
            raise UnsupportedConfigError(f"PEFT target_modules {sorted(targets)} would "
                                         f"{'also' if matched else 'not'} select {pattern}")


def _peft_pair(module: _AdaptedModule, flat: dict[str, np.ndarray],
               shapes: dict[str, tuple[int, ...]], layer: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(lora_A.weight [R, in], lora_B.weight [out, R]) of one module in one layer; R = r times
    the number of adapted parts (fused modules)."""
    a_matrices, b_blocks, widths = [], [], []
    in_layout = Linear(num_in=module.linear.num_in)  # A [*in, r] -> [r, in], as torch's Linear
    out_layout = Linear(num_in=1)  # B [r, *out] -> [out, r]
    for path, adapted in zip(module.tensor_map.our_paths, module.adapted):
        owner = path.removesuffix(KERNEL)
        kernel_shape = shapes[path][1:] if layer is not None else shapes[path]
        widths.append(math.prod(kernel_shape[module.linear.num_in:]))
        if not adapted:
            b_blocks.append(None)
            continue
        a, b = flat[owner + "lora_a"], flat[owner + "lora_b"]
        if layer is not None:
            a, b = a[layer], b[layer]
        a_matrices.append(in_layout.to_hf([a])[0])
        b_blocks.append(out_layout.to_hf([b])[0])
    rank = a_matrices[0].shape[0]
    lora_a = np.concatenate(a_matrices, axis=0)  # [n*r, in]
    lora_b = np.zeros((sum(widths), rank * len(a_matrices)), lora_a.dtype)  # [out, n*r]
    row, column = 0, 0
    for width, block in zip(widths, b_blocks):
        if block is not None:
            lora_b[row:row + width, column:column + rank] = block
            column += rank
        row += width
    return lora_a, lora_b


def _host(value) -> np.ndarray:
    array = np.asarray(value)
    # safetensors' numpy writer has no bfloat16; float32 holds every bfloat16 value exactly.
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array


def peft_tensors(model: BaseModel, params: Params) -> tuple[dict[str, np.ndarray], dict]:
    """(PEFT tensor name -> array, adapter_config.json contents) for `model`'s adapters in
    `params` (the whole tree, or only its adapters half from `models.lora.split`)."""
    lora = getattr(model, "lora", None)
    if lora is None:
        raise ValueError(f"save_peft_adapters needs a model with LoRA adapters "
                         f"(BaseModel.with_lora); got {model!r}")
    flat = {"/".join(path): _host(value)
            for path, value in traverse_util.flatten_dict(params).items()}
    expected = {"/".join(path): leaf for path, leaf in
                traverse_util.flatten_dict(model.abstract_params()).items()}
    modules = _adapted_modules(model)
    needed = [owner.removesuffix(KERNEL) + name for module in modules
              for owner, on in zip(module.tensor_map.our_paths, module.adapted) if on
              for name in ("lora_a", "lora_b")]
    missing = [path for path in needed if path not in flat]
    if missing:
        raise ValueError(f"save_peft_adapters: params lack {len(missing)} adapter arrays of "
                         f"{model!r}, e.g. {missing[0]}")
    for path in needed:
        if flat[path].shape != expected[path].shape:
            raise ValueError(f"save_peft_adapters: {path} has shape {flat[path].shape}, "
                             f"{model!r} expects {expected[path].shape}")
    _check_targets(model, modules)
    # Kernel shapes (the widths of a fused module's outputs) come from the model: `params`
    # may hold the adapters only.
    shapes = {path: tuple(leaf.shape) for path, leaf in expected.items()}

    tensors, rank_pattern, alpha_pattern = {}, {}, {}
    for module in modules:
        stacked = module.tensor_map.per_layer
        depth = expected[module.tensor_map.our_paths[0]].shape[0] if stacked else 0
        for layer, names in _layer_names(module.tensor_map, depth):
            name = PEFT_PREFIX + names[0].removesuffix(".weight")
            lora_a, lora_b = _peft_pair(module, flat, shapes, layer)
            tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(lora_a)
            tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(lora_b)
        parts = sum(module.adapted)
        if parts > 1:  # a fused module: one adapter of rank parts * r, same alpha / r
            rank_pattern[module.target] = parts * lora.rank
            alpha_pattern[module.target] = parts * lora.alpha
    conv1d = {not module.linear.transposed for module in modules}
    if len(conv1d) > 1:
        raise UnsupportedConfigError("adapters on both Conv1D and Linear modules: PEFT's "
                                     "fan_in_fan_out is one setting for all")
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM",
        "base_model_name_or_path": "",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted({module.target for module in modules}),
        "fan_in_fan_out": conv1d.pop(),  # GPT-2's Conv1D holds its weight as [in, out]
        "bias": "none",
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    return tensors, config


def save_peft_adapters(model: BaseModel, params: Params, directory: str | os.PathLike,
                       base_model_name_or_path: str = "") -> Path:
    """Write `model`'s adapters (from `params`, whole or the adapters half) as a PEFT adapter
    directory; `base_model_name_or_path` goes into its config (e.g. the HF base export beside
    it). Refuses a directory that already holds an adapter."""
    directory = Path(directory)
    existing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if (directory / name).exists()]
    if existing:
        raise CheckpointError(f"{directory}: already holds {', '.join(existing)}; refusing to "
                              "overwrite")
    tensors, config = peft_tensors(model, params)
    config["base_model_name_or_path"] = str(base_model_name_or_path)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory
