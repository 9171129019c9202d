"""What a fine-tuning recipe (arch_compare/recipes.py) changes in a run's price, from a
`ModelConfig` alone (no model built, no JAX):

- which parameters train: every one for `full`, `mix` and `l2sp`; for `lora` only the adapters,
  `A: [fan_in, rank]` and `B: [rank, fan_out]` per targeted projection per layer, so
  `rank x (fan_in + fan_out)` each (q/k/v/o in every attention, T5's cross-attention included;
  the MLP's wi / wi_0 / wi_1 / wo as `LoraConfig.targets_kernel` says); none for `wise`, which
  only interpolates weights a `full` run trained;
- which parameters are held frozen (LoRA's base weights, in `lora.base_dtype` when given);
- L2-SP's penalty `lambda * ||theta - theta_base||^2`, elementwise work per step (below), and its
  anchor (a copy of the base weights) when lambda > 0.

The adapter tensors mirror the parameter tensors of `parameters.py`: a kernel's stacked layer axes
lead, its input axes (`Tensor.fan_in`) go to `A`, its output axes to `B`, so Adafactor and the
per-device split see the same fan-in / fan-out as the kernel's.
"""

from __future__ import annotations

from arch_compare.budget.parameters import Tensor, parameter_tensors
from arch_compare.models.config import ModelConfig
from arch_compare.recipes import FULL, LORA_TARGETS, LoraConfig, Recipe

# L2-SP per step and parameter: theta - theta_base, its square and the sum (3), and the gradient
# 2 * lambda * (theta - theta_base) added to the loss's (2). Against ~6 FLOPs per parameter per
# token of the step itself that is under 1e-4 of a step of 10k tokens, but it is counted.
L2SP_FLOPS_PER_PARAMETER = 5
ADAPTER_NAMES = ("lora_a", "lora_b")


def kernel_name(path: str) -> str | None:
    """The projection a kernel's or an adapter's path names
    (`decoder/blocks/self_attention/q/kernel` or `.../q/lora_a` -> `q`), None for any other
    parameter."""
    parts = path.split("/")
    return parts[-2] if len(parts) >= 2 and parts[-1] in ("kernel", *ADAPTER_NAMES) else None


def adapter_tensors(cfg: ModelConfig, lora: LoraConfig) -> tuple[Tensor, ...]:
    """LoRA's `A` and `B` for every projection `lora` targets in the model `cfg` describes.
    ValueError when a named target is no projection of this model (`wi` on a gated MLP)."""
    tensors, seen = [], set()
    for kernel in parameter_tensors(cfg):
        name = kernel_name(kernel.path)
        if name is None or not kernel.path.endswith("/kernel") or not lora.targets_kernel(name):
            continue
        seen.add(name)
        layers = kernel.shape[:kernel.stacked]
        inner = kernel.shape[kernel.stacked:]
        fan_in, fan_out = inner[:kernel.fan_in], inner[kernel.fan_in:]
        prefix = kernel.path.rsplit("/", 1)[0]
        tensors.append(Tensor(f"{prefix}/lora_a", (*layers, *fan_in, lora.rank), kernel.group,
                              kernel.stacked, fan_in=len(fan_in)))
        tensors.append(Tensor(f"{prefix}/lora_b", (*layers, lora.rank, *fan_out), kernel.group,
                              kernel.stacked, fan_in=1))
    missing = [name for name in lora.targets if name != "mlp" and name not in seen]
    if missing:
        kernels = sorted({kernel_name(t.path) for t in parameter_tensors(cfg)}
                         & set(LORA_TARGETS))
        raise ValueError(f"lora.targets {list(missing)} name no projection of {cfg.family} "
                         f"(its projections: {', '.join(kernels)})")
    return tuple(tensors)


def adapted_kernel_path(adapter: Tensor) -> str:
    """The kernel an adapter tensor belongs to (`.../q/lora_a` -> `.../q/kernel`)."""
    return adapter.path.rsplit("/", 1)[0] + "/kernel"


def trainable_tensors(cfg: ModelConfig, recipe: Recipe = FULL) -> tuple[Tensor, ...]:
    """The tensors a run of `recipe` differentiates and updates (the optimizer's state is theirs)."""
    if recipe.kind == "lora":
        return adapter_tensors(cfg, recipe.lora)
    if not recipe.trains:
        return ()
    return parameter_tensors(cfg)


def frozen_tensors(cfg: ModelConfig, recipe: Recipe = FULL) -> tuple[Tensor, ...]:
    """The tensors a run of `recipe` holds without training them (LoRA's base weights)."""
    return parameter_tensors(cfg) if recipe.kind == "lora" else ()


def trainable_parameters(cfg: ModelConfig, recipe: Recipe = FULL) -> int:
    """Parameters a run of `recipe` trains: all (`full`, `mix`, `l2sp`), the adapters' (`lora`),
    none (`wise`)."""
    return sum(tensor.size for tensor in trainable_tensors(cfg, recipe))


def frozen_dtype(cfg: ModelConfig, recipe: Recipe, master_dtype: str) -> str:
    """The dtype LoRA's frozen base weights are held in: `lora.base_dtype`, else `master_dtype`
    (the dtype trained weights are held in)."""
    if recipe.kind == "lora" and recipe.lora.base_dtype is not None:
        return recipe.lora.base_dtype
    return master_dtype


def has_anchor(recipe: Recipe) -> bool:
    """Whether a run of `recipe` holds the base weights beside its own: L2-SP with a weight
    above 0 (the trainer runs lambda 0 as full fine-tuning, without the anchor)."""
    return recipe.kind == "l2sp" and recipe.l2sp_weight > 0


def penalty_flops_per_step(cfg: ModelConfig, recipe: Recipe = FULL) -> float:
    """L2-SP's elementwise work per optimizer step (0 for every other recipe)."""
    if not has_anchor(recipe):
        return 0.0
    return float(L2SP_FLOPS_PER_PARAMETER * sum(t.size for t in parameter_tensors(cfg)))


def mixed_examples(recipe: Recipe, examples: float) -> float:
    """Examples a run of `recipe` trains on given `examples` imitation examples: `mix` adds
    pre-training text, `examples / (1 - mix_rate)` in all; the others train on the examples."""
    return examples * recipe.steps_factor()
