"""What a fine-tuning recipe changes in the training step: which weights train, what is added to
the loss, and the adapters' dropout key (`arch_compare.recipes` names the recipes; this is their
JAX side, so `steps.py` and `loop.py` stay recipe-agnostic).

- Trainable subset. `StepRecipe.trainable(path)` says which parameter leaves train; `split`
  cuts a parameter-shaped tree (parameters, their shardings, their logical axes) into
  `(frozen, trainable)` nested dicts and `join` puts them back. Gradients, the optimizer and its
  state see only the trainable part; the `TrainState` keeps the whole tree, so checkpoints and
  resuming are those of a full run. Full fine-tuning trains everything: `split` is then
  `({}, tree)` and the step's program is exactly the one without recipes.
- L2-SP (Li et al. 2018): `l2sp_weight * sum((theta - theta_base) ** 2)` over the trainable
  weights, added to the mean token loss. Its gradient `2 * l2sp_weight * (theta - theta_base)`
  is added after the token loss is normalised by the batch's weighted tokens, so microbatches
  and devices do not change it. `theta_base` (the anchor) is a second copy of the base weights
  held on the devices with the parameters' own shardings: per device it is one more parameter
  copy divided over the fsdp (and tensor) axes, which a memory estimate must count. It is not
  checkpointed: a resumed run reads it again from `initial_checkpoint_path`.
- LoRA: only the adapters (`models.lora.is_adapter`) train; the base weights stay frozen, in
  `lora.base_dtype` when given. Adapter dropout draws from `dropout_key(step)`, a function of
  the run's seed and the step only: the same on every device and process, and the same after a
  resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from arch_compare.models import lora as lora_lib
from arch_compare.models.lora import join_trees, split_tree  # noqa: F401 (the trainer's split)
from arch_compare.models.hf.checkpoint import CheckpointError
from arch_compare.recipes import FULL as FULL_RECIPE
from arch_compare.recipes import Recipe

KeyPath = tuple[str, ...]
# Folded into the run's seed for the adapters' dropout, so its stream is not the
# parameter initialisation's (which uses the seed's key itself).
DROPOUT_STREAM = 0x10AA


def _train_everything(path: KeyPath) -> bool:
    return True


def element_count(tree: Any) -> int:
    """Elements of every array (or ShapeDtypeStruct) leaf of `tree`."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def l2sp_penalty(params: Any, anchor: Any, weight: float) -> jax.Array:
    """`weight * sum((params - anchor) ** 2)` over every leaf, in float32 ([] scalar)."""
    squares = [jnp.sum(jnp.square(p.astype(jnp.float32) - a.astype(jnp.float32)))
               for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor))]
    return weight * sum(squares, jnp.zeros((), jnp.float32))


def l2sp_gradient(params: Any, anchor: Any, weight: float) -> Any:
    """The penalty's exact gradient `2 * weight * (params - anchor)`, in the params' dtypes."""
    return jax.tree.map(
        lambda p, a: (2.0 * weight * (p.astype(jnp.float32) - a.astype(jnp.float32))
                      ).astype(p.dtype), params, anchor)


@dataclasses.dataclass(frozen=True)
class StepRecipe:
    """The recipe-specific parts of one training step.

    trainable: which parameter leaves train (by path, e.g. ("decoder", "blocks", ...)); the
      default trains every leaf.
    l2sp_weight: None for no penalty (the step then takes no anchor); a number >= 0 adds the
      L2-SP penalty toward the anchor the step is given (0 runs the penalty's code with no
      effect: the same steps as no penalty, which the tests check).
    dropout_seed: the run's seed when the model applies dropout (LoRA's), else None (no key).
    """

    trainable: Callable[[KeyPath], bool] = _train_everything
    l2sp_weight: float | None = None
    dropout_seed: int | None = None

    def __post_init__(self):
        weight = self.l2sp_weight
        if weight is not None and not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"StepRecipe.l2sp_weight must be a finite number >= 0 or None, "
                             f"got {weight!r}")

    @property
    def trains_everything(self) -> bool:
        return self.trainable is _train_everything

    @property
    def has_anchor(self) -> bool:
        return self.l2sp_weight is not None

    def split(self, tree: Any) -> tuple[Any, Any]:
        """`(frozen, trainable)` parts of a parameter-shaped tree."""
        if self.trains_everything:
            return {}, tree
        return split_tree(tree, self.trainable)

    def join(self, frozen: Any, trainable: Any) -> Any:
        if self.trains_everything:
            return trainable
        return join_trees(frozen, trainable)

    def dropout_key(self, step: jax.Array) -> jax.Array | None:
        """The step's dropout key: a function of the seed and the step only."""
        if self.dropout_seed is None:
            return None
        return jax.random.fold_in(
            jax.random.fold_in(jax.random.key(self.dropout_seed), DROPOUT_STREAM), step)


FULL = StepRecipe()


# -------------------------------------------------------------------------------------------------
# A run's recipe, from its TrainConfig fields (`lora`, `l2sp_weight`, `seed`)


def step_recipe(lora, l2sp_weight: float, seed: int) -> StepRecipe:
    """The step recipe of a run: LoRA trains the adapters only (dropout keys from `seed` when
    `lora.dropout > 0`); `l2sp_weight > 0` adds the penalty; neither: full fine-tuning."""
    if lora is not None:
        return StepRecipe(trainable=lora_lib.is_adapter,
                          dropout_seed=seed if lora.dropout > 0 else None)
    if l2sp_weight > 0:
        return StepRecipe(l2sp_weight=float(l2sp_weight))
    return FULL


def budget_recipe(lora, l2sp_weight: float) -> Recipe:
    """The `arch_compare.recipes.Recipe` the budget prices a run of these settings as (the
    memory check before it starts)."""
    if lora is not None:
        return Recipe("lora", "lora", lora=lora)
    if l2sp_weight > 0:
        return Recipe("l2sp", "l2sp", l2sp_weight=float(l2sp_weight))
    return FULL_RECIPE


def run_record(lora, l2sp_weight: float, recipe: StepRecipe, abstract_params: Any,
               preference: dict | None = None) -> dict:
    """What MODEL_DIR/execution.json says about the recipe: what trained, in which dtypes, and
    the preference settings of a preference run (`preference_data.run_record`)."""
    frozen, trainable = recipe.split(abstract_params)
    return {"lora": None if lora is None else lora.to_dict(), "l2sp_weight": float(l2sp_weight),
            "preference": preference,
            "params": element_count(abstract_params), "trainable_params": element_count(trainable),
            "frozen_params": element_count(frozen),
            "frozen_dtypes": sorted({str(leaf.dtype) for leaf in jax.tree.leaves(frozen)})}


def check_resumed(execution_file: Path, recipe_record: dict) -> None:
    """Refuse to resume a run directory with another recipe (`run_record`'s `lora`,
    `l2sp_weight` and `preference`): its checkpoints hold another state. A record from before
    recipes (or preference runs) existed is a full (token-loss) run's."""
    if not execution_file.exists():
        return
    recorded = json.loads(execution_file.read_text()).get("recipe", {})
    current = json.loads(json.dumps(recipe_record))  # as the file holds it (lists, not tuples)
    differ = [f"{name}: {recorded.get(name, default)!r} there, {current[name]!r} now"
              for name, default in (("lora", None), ("l2sp_weight", 0.0), ("preference", None))
              if recorded.get(name, default) != current[name]]
    if differ:
        raise CheckpointError(f"{execution_file.parent}: this run directory was trained with "
                              f"another recipe ({'; '.join(differ)}); use a new MODEL_DIR")
