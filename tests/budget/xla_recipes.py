"""XLA's memory analysis of the trainer's compiled step for a fine-tuning recipe, beside the
budget's per-device estimate (tests/budget/test_recipes.py; in-process on one device, or in a
fake-device subprocess for the sharded meshes).

The step is built as `arch_compare/trainer/loop.py` builds it: the model `with_lora`, the
optimizer of the trainable weights only, `placement`'s state shardings and jitted step (with the
L2-SP anchor as its third argument), compiled for abstract arguments; nothing runs. XLA's
per-device peak is argument + temp + output - alias, as in benchmarks/memory_vs_xla.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from arch_compare import optim, partitioning
from arch_compare.budget.memory import per_device_training_memory
from arch_compare.mesh_config import MeshConfig
from arch_compare.models import build_model, get_preset
from arch_compare.models.config import ModelConfig
from arch_compare.recipes import Recipe
from arch_compare.trainer import placement
from arch_compare.trainer import recipes as step_recipes
from arch_compare.trainer.steps import abstract_train_state

# Small enough to compile in seconds, large enough that weights and activations dominate XLA's
# fixed overheads (test_memory_vs_xla's sizes): d_model 256, 2 layers, vocabulary 8192.
SMALL = {"d_model": 256, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "head_dim": 64,
         "d_ff": 1024, "vocab_size": 8192}
PRESETS = {"gpt2": "gpt2-small", "llama": "llama-7b", "t5.1.1": "t5.1.1-small",
           "ul2": "ul2-20b"}


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    recipe: Recipe
    mesh: MeshConfig = MeshConfig()
    dtype: str = "float32"
    remat: str = "none"
    batch_size: int = 16
    input_length: int = 64
    target_length: int = 64

    def config(self) -> ModelConfig:
        changes = {**SMALL, "dtype": self.dtype, "remat": self.remat}
        if self.family in ("t5.1.1", "ul2"):
            changes["num_encoder_layers"] = SMALL["num_layers"]
        if self.family == "ul2":  # UL2's shape: head_dim 128 with heads x head_dim != d_model
            changes.update(num_heads=2, num_kv_heads=2, head_dim=128)
        return get_preset(PRESETS[self.family], changes)


def _abstract(tree, shardings):
    return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                        tree, shardings)


def xla_peak(case: Case) -> dict[str, int]:
    """XLA's numbers for one device's share of the compiled training step of `case`."""
    recipe = case.recipe
    lora = recipe.lora if recipe.kind == "lora" else None
    model = build_model(case.config(), lora)
    step_recipe = step_recipes.step_recipe(lora, recipe.l2sp_weight or 0.0, seed=0)
    mesh = partitioning.make_mesh(case.mesh, jax.devices()[:case.mesh.num_devices])
    logical_axes, abstract = model.logical_axes(), model.abstract_params()
    param_shardings = partitioning.param_shardings(logical_axes, abstract, mesh)
    opt_cfg = optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e-4), weight_decay=0.01)
    optimizer = optim.make_optimizer(opt_cfg, step_recipe.split(logical_axes)[1])
    state_shardings = placement.train_state_shardings(model, optimizer, param_shardings, mesh,
                                                      step_recipe)
    state = _abstract(abstract_train_state(optimizer, abstract, step_recipe), state_shardings)
    batch_sharding = partitioning.batch_sharding(mesh)
    inputs, targets = model.sequence_lengths({"inputs": case.input_length,
                                              "targets": case.target_length})
    lengths = {"decoder_input_tokens": targets, "decoder_target_tokens": targets,
               "decoder_loss_weights": targets, **({"encoder_input_tokens": inputs}
                                                   if inputs else {})}
    batch = {name: jax.ShapeDtypeStruct((case.batch_size, length), jnp.int32,
                                        sharding=batch_sharding)
             for name, length in lengths.items()}
    step = placement.jit_train_step(model, optimizer, optim.make_schedule(opt_cfg.schedule), 1,
                                    state_shardings, batch_sharding, mesh, step_recipe)
    args = (state, batch) + ((_abstract(abstract, param_shardings),)
                             if step_recipe.has_anchor else ())
    analysis = step.lower(*args).compile().memory_analysis()
    numbers = {name: int(getattr(analysis, f"{name}_size_in_bytes"))
               for name in ("argument", "output", "alias", "temp")}
    numbers["peak"] = (numbers["argument"] + numbers["temp"] + numbers["output"]
                       - numbers["alias"])
    return numbers


def compare(case: Case) -> dict:
    """XLA's peak over the budget's estimate, with what identifies the case."""
    estimate = per_device_training_memory(
        case.config(), case.mesh, case.input_length, case.target_length, case.batch_size,
        recipe=case.recipe, platform=jax.default_backend())
    xla = xla_peak(case)
    return {"family": case.family, "recipe": case.recipe.kind, "lora": case.recipe.lora and
            case.recipe.lora.to_dict(), "mesh": case.mesh.shape, "dtype": case.dtype,
            "remat": case.remat, "estimate": estimate.total, "xla": xla["peak"],
            "ratio": xla["peak"] / estimate.total}
