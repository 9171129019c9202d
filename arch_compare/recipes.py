"""Fine-tuning recipes: how an imitation run turns a base model into a fine-tuned one.

A study fine-tunes every model the same way (`full`) unless it names recipes for some of its
cells; each recipe is then a run of its own beside the `full` run of the same cell:

- `full`: every weight trained (the default, and the only recipe before recipes existed);
- `mix`: pre-training text mixed into the imitation data, `mix_rate` of the examples seen. The
  imitation examples seen stay those of `full` (same epochs), so a mixed run takes
  `1 / (1 - mix_rate)` times the steps: equal imitation data, more tokens;
- `l2sp`: every weight trained with `l2sp_weight * ||theta - theta_base||^2` added to the mean
  token loss (L2-SP: a penalty toward the pre-trained weights, not toward zero);
- `lora`: the base weights frozen (held in `lora.base_dtype` when given), low-rank adapters
  `W + (alpha / rank) * A @ B` trained on the `lora.targets` projections; merged into the weights
  for evaluation and serving, and exported in PEFT's adapter layout;
- `wise`: no training: the base and the `full` run's weights interpolated,
  `(1 - alpha) * theta_base + alpha * theta_full`, one evaluated run per alpha (WiSE-FT).

Only configuration lives here (no JAX), so plans and budgets read recipes without loading it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from arch_compare.configs import from_fields
from arch_compare.models.config import DTYPES

RECIPE_KINDS = ("full", "mix", "l2sp", "lora", "wise")
# The projections an adapter can sit on, named as the layers name their kernels (layers.py):
# attention q/k/v/o (self- and cross-attention) and the MLP's up (wi, or wi_0/wi_1 when gated)
# and down (wo) projections. "mlp" means every MLP projection the model has.
LORA_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo", "mlp")
DEFAULT_LORA_TARGETS = ("q", "k", "v", "o")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters: `rank`, scale `alpha / rank`, dropout on the adapter's input during
    training, the projections they sit on, and the dtype the frozen base weights are held in
    (None: the run's `param_dtype`)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    base_dtype: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if not _positive_int(self.rank):
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not (isinstance(self.alpha, (int, float))
                                                and self.alpha > 0):
            raise ValueError(f"lora.alpha must be positive, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [name for name in self.targets if name not in LORA_TARGETS]
        if not self.targets or unknown or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"lora.targets: expected distinct names from "
                             f"{', '.join(LORA_TARGETS)}, got {list(self.targets)}")
        if self.base_dtype is not None and self.base_dtype not in DTYPES:
            raise ValueError(f"lora.base_dtype must be one of {', '.join(DTYPES)} or None, got "
                             f"{self.base_dtype!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def targets_kernel(self, name: str) -> bool:
        """Whether a projection named `name` (a layers.Dense's attribute name) gets an adapter."""
        return name in self.targets or ("mlp" in self.targets
                                        and name in ("wi", "wi_0", "wi_1", "wo"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_run_label(name: Any, what: str) -> None:
    """A run label (`<cell>/<label>`): a non-empty string without '/'."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{what} name {name!r}: must be non-empty without '/'")


@dataclasses.dataclass(frozen=True)
class CellSelection:
    """The study cells (random-data imitation runs) a recipe or post-training entry applies to:
    None selects every model, source or amount. Keyword-only, after each kind's own fields."""

    models: tuple[str, ...] | None = dataclasses.field(default=None, kw_only=True)
    sources: tuple[str, ...] | None = dataclasses.field(default=None, kw_only=True)
    amounts: tuple[int, ...] | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        for name in ("models", "sources", "amounts"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    def applies_to(self, model: str, source: str, amount: int) -> bool:
        return ((self.models is None or model in self.models)
                and (self.sources is None or source in self.sources)
                and (self.amounts is None or amount in self.amounts))


@dataclasses.dataclass(frozen=True)
class Recipe(CellSelection):
    """A named recipe and the study cells it applies to (None: every model, source or amount
    of the study; the cells are the random-selection imitation runs)."""

    name: str
    kind: str
    mix_rate: float | None = None  # mix: the fraction of examples that are pre-training text
    mix_task: str | None = None  # mix: that text's task (None: the model's pre-training task)
    l2sp_weight: float | None = None  # l2sp: lambda
    lora: LoraConfig | None = None  # lora: the adapters (None: LoraConfig's defaults)
    wise_alphas: tuple[float, ...] = ()  # wise: the weights of the full run, one run each

    def __post_init__(self):
        super().__post_init__()
        where = f"recipe {self.name!r}"
        check_run_label(self.name, "recipe")
        if self.kind not in RECIPE_KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(RECIPE_KINDS)}, got "
                             f"{self.kind!r}")
        object.__setattr__(self, "wise_alphas", tuple(float(a) for a in self.wise_alphas))
        if self.kind == "lora":
            lora = LoraConfig() if self.lora is None else self.lora
            object.__setattr__(self, "lora", from_fields(lora, LoraConfig, f"{where}.lora"))
        elif self.lora is not None:
            raise ValueError(f"{where}: lora settings belong to kind 'lora', not {self.kind!r}")
        self._check_kind_fields(where)

    def _check_kind_fields(self, where: str) -> None:
        kind = self.kind
        rate = self.mix_rate
        if kind == "mix":
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
                raise ValueError(f"{where}: mix_rate must be in (0, 1), got {rate!r}")
        elif rate is not None or self.mix_task is not None:
            raise ValueError(f"{where}: mix_rate and mix_task belong to kind 'mix', not {kind!r}")
        weight = self.l2sp_weight
        if kind == "l2sp":
            if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                    or not math.isfinite(weight) or weight < 0):
                raise ValueError(f"{where}: l2sp_weight must be a finite number >= 0, got "
                                 f"{weight!r}")
        elif weight is not None:
            raise ValueError(f"{where}: l2sp_weight belongs to kind 'l2sp', not {kind!r}")
        if kind == "wise":
            alphas = self.wise_alphas
            if not alphas or any(not 0 <= a <= 1 for a in alphas) or len(set(alphas)) != len(
                    alphas):
                raise ValueError(f"{where}: wise_alphas must be distinct numbers in [0, 1], got "
                                 f"{list(alphas)}")
        elif self.wise_alphas:
            raise ValueError(f"{where}: wise_alphas belong to kind 'wise', not {kind!r}")

    @property
    def trains(self) -> bool:
        """Whether the recipe trains (wise only interpolates weights a full run trained)."""
        return self.kind != "wise"

    def labels(self) -> tuple[str, ...]:
        """The run label of each run this recipe adds to a cell: its name, or `name@alpha` for
        each alpha of a `wise` recipe."""
        if self.kind == "wise":
            return tuple(f"{self.name}@{alpha:g}" for alpha in self.wise_alphas)
        return (self.name,)

    def steps_factor(self) -> float:
        """Training steps relative to `full` on the same imitation data (mixing adds examples)."""
        return 1.0 / (1.0 - self.mix_rate) if self.kind == "mix" else 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FULL = Recipe("full", "full")


def coerce_recipes(values: Any, where: str = "recipes") -> tuple[Recipe, ...]:
    """Recipes from a list of Recipe or dicts of its fields; names must be distinct, and `full`
    is the implicit default recipe of every cell (naming it is allowed only as kind 'full')."""
    recipes = tuple(from_fields(value, Recipe, f"{where}[{index}]") if isinstance(value, Mapping)
                    else value for index, value in enumerate(values or ()))
    names = [recipe.name for recipe in recipes]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: recipe names repeat: {names}")
    for recipe in recipes:
        if recipe.name == FULL.name and recipe.kind != "full":
            raise ValueError(f"{where}: the name 'full' is the default recipe; give recipe of "
                             f"kind {recipe.kind!r} another name")
    return recipes
