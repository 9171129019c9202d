"""What one fine-tuning run costs: FLOPs, memory, chips, hours and dollars.

Each run has a fine-tuning recipe (arch_compare/recipes.py; `full` by default), which sets what
trains (parameters, gradients, optimizer state), the FLOPs of a token (LoRA's frozen weights get
no weight gradients) and of a step (L2-SP's penalty). The examples priced are the run's total,
mixed-in text included (a study multiplies a `mix` run's steps); a `wise` run trains nothing and
is priced by the evaluations its caller adds (`RunEstimate.evaluation_flops`).

Time is FLOPs / (chips x peak x MFU). Model FLOPs utilisation depends on framework, architecture
and chip, so it is a parameter; the defaults below are published figures, each with its source, and
`calibrate` replaces them with what a measured run achieved.
"""

from __future__ import annotations

import dataclasses
import math

from arch_compare.budget import flops as flops_lib
from arch_compare.budget import memory as memory_lib
from arch_compare.budget import recipes as recipes_lib
from arch_compare.budget.hardware import Chip, get_chip
from arch_compare.budget.parameters import count_parameters, parameter_tensors
from arch_compare.models.config import ModelConfig
from arch_compare.models.zoo import get_preset
from arch_compare.recipes import FULL, Recipe


@dataclasses.dataclass(frozen=True)
class Utilisation:
    mfu: float
    source: str


# (platform, architecture) -> default MFU.
DEFAULT_MFU = {
    ("tpu", "decoder_only"): Utilisation(
        0.46, "PaLM 540B on TPU v4: 46.2% MFU (Chowdhery et al. 2022, table 3)"),
    ("gpu", "decoder_only"): Utilisation(
        0.45, "A100/H100 decoder training: MosaicML LLM Foundry reports 40-64% MFU; LLaMA 65B's "
              "380 tokens/s/GPU on A100-80GB (Touvron et al. 2023) implies about 48%"),
    ("gpu", "encoder_decoder"): Utilisation(
        0.16, "T5X T5 v1.1-XXL on A100: about 16% MFU (the figure in the design notes)"),
    ("tpu", "encoder_decoder"): Utilisation(
        0.46, "no published encoder-decoder MFU on TPU found; assumed equal to PaLM's decoder "
              "figure on TPU v4 - calibrate with a measured run"),
}


def default_utilisation(chip: Chip, cfg: ModelConfig) -> Utilisation:
    return DEFAULT_MFU[(chip.platform, cfg.arch)]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run to price: a model, an amount of data and the hardware it runs on.

    Give `tokens` (input plus target tokens, split in the ratio of the lengths) or `examples`:
    every example trained on (a `mix` run's mixed-in text included). `chips=None` picks the
    fewest chips that hold the run, rounded up to a power of two. `recipe`: how it fine-tunes
    (`wise`: no training; its FLOPs are the evaluations the caller adds).
    """

    model: str | ModelConfig
    tokens: float | None = None
    examples: float | None = None
    input_length: int = 0
    target_length: int = 2048
    hardware: str = "a100-80gb"
    chips: int | None = None
    mfu: float | None = None
    optimizer: str = "adamw"
    batch_size: int = 32
    remat: bool = False
    sharding: str = "fsdp"
    epochs: float = 1.0
    activation_dtype: str = "bfloat16"  # mixed-precision training's compute dtype
    recipe: Recipe = FULL

    def __post_init__(self):
        if not isinstance(self.recipe, Recipe):
            raise ValueError(f"recipe must be an arch_compare.recipes.Recipe, got "
                             f"{self.recipe!r}")
        if (self.tokens is None) == (self.examples is None):
            raise ValueError("give exactly one of tokens or examples")
        amount = self.tokens if self.tokens is not None else self.examples
        if amount <= 0:
            raise ValueError(f"the amount of data must be positive, got {amount}")
        if self.input_length < 0 or self.target_length <= 0:
            raise ValueError(f"need input_length >= 0 and target_length > 0, got "
                             f"{self.input_length} and {self.target_length}")
        if self.chips is not None and self.chips <= 0:
            raise ValueError(f"chips must be positive, got {self.chips}")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise ValueError(f"mfu must be in (0, 1], got {self.mfu}")
        if self.optimizer not in memory_lib.OPTIMIZER_STATE:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: "
                             f"{', '.join(memory_lib.OPTIMIZER_STATE)}")
        if self.sharding not in memory_lib.SHARDINGS:
            raise ValueError(f"unknown sharding {self.sharding!r}; known: "
                             f"{', '.join(memory_lib.SHARDINGS)}")
        if self.batch_size <= 0 or self.epochs <= 0:
            raise ValueError("batch_size and epochs must be positive")

    @property
    def config(self) -> ModelConfig:
        config = get_preset(self.model) if isinstance(self.model, str) else self.model
        return config.replace(dtype=self.activation_dtype)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.family

    @property
    def num_examples(self) -> float:
        if self.examples is not None:
            return self.examples
        return self.tokens / (self.input_length + self.target_length)


@dataclasses.dataclass(frozen=True)
class RunEstimate:
    spec: RunSpec
    chip: Chip
    params: dict[str, int]
    forward_flops_per_example: dict[str, float]
    train_flops: float
    inference_flops_per_token: float
    memory_bytes: dict[str, int]
    min_chips: int | None
    chips: int
    mfu: float
    mfu_source: str
    evaluation_flops: float = 0.0  # forward passes of the evaluations that follow the run
    trainable_params: int = 0  # what the recipe trains (optimizer state is theirs alone)
    penalty_flops: float = 0.0  # l2sp's elementwise work, included in train_flops

    @property
    def total_flops(self) -> float:
        return self.train_flops + self.evaluation_flops

    @property
    def chip_hours(self) -> float:
        return self.total_flops / (self.chip.peak_flops_per_second * self.mfu) / 3600

    @property
    def hours(self) -> float:
        return self.chip_hours / self.chips

    @property
    def cost_usd(self) -> float | None:
        price = self.chip.usd_per_chip_hour
        return None if price is None else self.chip_hours * price

    @property
    def per_chip_bytes(self) -> int:
        """Memory one chip holds on `chips` chips: the state split over them (fsdp) or whole on
        each (data), and the batch split down to one example per chip."""
        memory = self.memory_bytes
        state = memory["total"] - memory["activations"]
        batch_ways = min(self.chips, self.spec.batch_size)
        return math.ceil((state / self.chips if self.spec.sharding == "fsdp" else state)
                         + memory["activations"] / batch_ways)

    @property
    def fits(self) -> bool:
        return self.min_chips is not None and self.chips >= self.min_chips

    def to_dict(self) -> dict:
        spec = self.spec
        return {
            "model": spec.model_name, "arch": spec.config.arch, "recipe": spec.recipe.name,
            "recipe_kind": spec.recipe.kind, "params": self.params["total"],
            "params_by_group": self.params, "trainable_params": self.trainable_params,
            "tokens": (spec.num_examples * (spec.input_length + spec.target_length) * spec.epochs
                       if spec.recipe.trains else 0.0),
            "examples": spec.num_examples, "epochs": spec.epochs,
            "input_length": spec.input_length, "target_length": spec.target_length,
            "train_flops": self.train_flops, "evaluation_flops": self.evaluation_flops,
            "penalty_flops": self.penalty_flops, "per_chip_bytes": self.per_chip_bytes,
            "forward_flops_per_example": self.forward_flops_per_example,
            "inference_flops_per_token": self.inference_flops_per_token,
            "memory_bytes": self.memory_bytes, "optimizer": spec.optimizer,
            "batch_size": spec.batch_size, "remat": spec.remat, "sharding": spec.sharding,
            "hardware": self.chip.name, "chips": self.chips, "min_chips": self.min_chips,
            "fits": self.fits, "hours": self.hours, "chip_hours": self.chip_hours,
            "cost_usd": self.cost_usd, "usd_per_chip_hour": self.chip.usd_per_chip_hour,
            "mfu": self.mfu, "mfu_source": self.mfu_source,
        }


def _wise_memory(cfg: ModelConfig) -> memory_lib.TrainingMemory:
    """A `wise` run interpolates two float32 copies of the weights (base and fine-tuned)."""
    params = sum(t.size for t in parameter_tensors(cfg))
    return memory_lib.TrainingMemory(weights=2 * params * memory_lib.FLOAT32_BYTES, gradients=0,
                                     optimizer_state=0, activations=0)


def estimate_run(spec: RunSpec, catalogue: dict[str, Chip] | None = None) -> RunEstimate:
    cfg, recipe = spec.config, spec.recipe
    chip = get_chip(spec.hardware, catalogue)
    forward = flops_lib.forward_flops(cfg, spec.input_length, spec.target_length)
    if recipe.trains:
        per_example = flops_lib.training_flops(cfg, spec.input_length, spec.target_length,
                                               remat=spec.remat, recipe=recipe)
        train_memory = memory_lib.training_memory(cfg, spec.input_length, spec.target_length,
                                                  spec.batch_size, spec.optimizer, spec.remat,
                                                  recipe)
    else:
        per_example, train_memory = 0.0, _wise_memory(cfg)
    steps = math.ceil(spec.num_examples * spec.epochs / spec.batch_size)
    penalty = recipes_lib.penalty_flops_per_step(cfg, recipe) * steps
    needed = memory_lib.min_chips(train_memory, chip.hbm_bytes, spec.batch_size, spec.sharding)
    chips = spec.chips or (2 ** math.ceil(math.log2(needed)) if needed else 1)
    utilisation = (Utilisation(spec.mfu, "given") if spec.mfu is not None
                   else default_utilisation(chip, cfg))
    memory = {**train_memory.to_dict(),
              "kv_cache": memory_lib.kv_cache_bytes(cfg, spec.input_length, spec.target_length,
                                                    spec.batch_size),
              "inference_weights": memory_lib.inference_weight_bytes(cfg)}
    return RunEstimate(
        spec=spec, chip=chip, params=count_parameters(cfg).to_dict(),
        forward_flops_per_example=forward.to_dict(),
        train_flops=per_example * spec.num_examples * spec.epochs + penalty,
        inference_flops_per_token=forward.total / (spec.input_length + spec.target_length),
        memory_bytes=memory, min_chips=needed, chips=chips,
        mfu=utilisation.mfu, mfu_source=utilisation.source,
        trainable_params=recipes_lib.trainable_parameters(cfg, recipe), penalty_flops=penalty)


def realised_mfu(cfg: ModelConfig, tokens_per_second: float, input_length: int,
                 target_length: int, chip: Chip, chips: int, remat: bool = False,
                 recipe: Recipe = FULL) -> float:
    """The MFU a measured run achieved: its model FLOPs per second over the chips' peak."""
    if tokens_per_second <= 0 or chips <= 0:
        raise ValueError("tokens_per_second and chips must be positive")
    flops_per_token = flops_lib.training_flops(cfg, input_length, target_length, remat=remat,
                                               recipe=recipe) / (input_length + target_length)
    return tokens_per_second * flops_per_token / (chips * chip.peak_flops_per_second)
