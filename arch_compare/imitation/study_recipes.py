"""The runner's side of the fine-tuning recipes (`arch_compare/recipes.py`): what a recipe's run
trains on, with which training settings, and which weights it is evaluated with.

- `mix`: the run's imitation task and the recipe's text task (the model's pre-training task
  unless it names one) as one seqio mixture at rates (1 - mix_rate, mix_rate), registered for
  the run; both are registry tasks, so they share the `inputs` / `targets` features a mixture
  keeps. The plan gave the run 1 / (1 - mix_rate) times the full run's steps.
- `l2sp`: the trainer's penalty toward the base weights (`TrainConfig.l2sp_weight`).
- `lora`: the trainer builds the adapters and trains only them (`TrainConfig.lora`); the run
  is evaluated with them merged into the weights, and they are written in PEFT's layout next to
  the run where the family exports (else logged, not fatal).
- `wise`: no training; base and full weights interpolated leaf by leaf in float32.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp

from arch_compare.imitation.plan import PlannedRun
from arch_compare.models.model import BaseModel
from arch_compare.recipes import Recipe
from arch_compare_tasks import catalogue

log = logging.getLogger(__name__)


def train_options(recipe: Recipe) -> dict:
    """The TrainConfig fields a recipe sets (none for `full` and `mix`: mixing is in the data);
    the trainer builds a `lora` run's adapters on the plain model it is given."""
    if recipe.kind == "lora":
        return {"lora": recipe.lora}
    if recipe.kind == "l2sp":
        return {"l2sp_weight": float(recipe.l2sp_weight)}
    return {}


def training_task(planned: PlannedRun, imitation_task: str) -> str:
    """The task or mixture a run trains on: for `mix`, its imitation task mixed with the text the
    plan recorded (`config['recipe']['mix_task']`), registered under a name of the run's own."""
    recipe = planned.recipe
    if recipe is None or recipe.kind != "mix":
        return imitation_task
    text_task = planned.run.config["recipe"]["mix_task"]
    # seqio names allow only word characters, '.', ':' and '#'.
    name = f"{imitation_task}:mix:" + re.sub(r"[^\w.]", "_", recipe.name)
    catalogue.register_imitation_with_pretraining(name, imitation_task, text_task,
                                                  recipe.mix_rate, replace=True)
    return name


@functools.partial(jax.jit, static_argnums=2)
def _interpolate(base, full, alpha: float):
    def mix(b, f):  # in float32 whatever the weights' dtype, then back to it
        return ((1.0 - alpha) * b.astype(jnp.float32)
                + alpha * f.astype(jnp.float32)).astype(f.dtype)
    return jax.tree.map(mix, base, full)


def interpolate(base, full, alpha: float):
    """`(1 - alpha) * base + alpha * full` leaf by leaf (WiSE-FT), on the arrays' own shardings;
    alpha 0 gives the base weights and 1 the full run's, exactly."""
    if jax.tree.structure(base) != jax.tree.structure(full):
        raise ValueError("wise: the base and full weights have different structures")
    return _interpolate(base, full, float(alpha))


def merged(model: BaseModel, recipe: Recipe, params):
    """A LoRA run's weights (the trained tree: frozen base and adapters) with `scale * A @ B`
    added to each adapted kernel: the plain `model`'s parameter tree, evaluated and served like
    any other."""
    from arch_compare.models import lora
    # Merged in the plain model's parameter dtype, not the frozen base's (`lora.base_dtype` may
    # be narrower): a bfloat16 kernel would round much of the adapters' small update away, and
    # the run is then evaluated in the same dtypes as every other run.
    dtype = model.config.param_dtype
    widened = jax.tree.map(lambda leaf: leaf.astype(dtype), params)
    return lora.merge(model.with_lora(recipe.lora), widened)


def host_adapters(params):
    """The adapters half of a LoRA run's trained tree as host arrays, whole on every process (a
    collective: every process calls it, so process 0 can write them even where the adapters are
    sharded over several hosts)."""
    from jax.experimental import multihost_utils

    from arch_compare.models import lora
    return multihost_utils.process_allgather(lora.split(params)[1], tiled=True)


def export_adapters(model: BaseModel, recipe: Recipe, adapters, directory: Path,
                    base: str) -> str | None:
    """A LoRA run's adapters (`host_adapters`) in PEFT's layout (`adapter_config.json`,
    `adapter_model.safetensors`) in `directory`, for the base at `base`; None (and a warning)
    where this family or these weights cannot be exported: the run's evaluation does not depend
    on it."""
    try:
        from arch_compare.models.hf.peft import save_peft_adapters
        save_peft_adapters(model.with_lora(recipe.lora), adapters, directory, base)
    except Exception as error:  # noqa: BLE001  (any failure: logged, the run goes on)
        log.warning("PEFT adapters of %s not exported: %s: %s", directory.parent,
                    type(error).__name__, error)
        return None
    return str(directory)
