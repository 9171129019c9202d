"""One loader for every checkpoint kind this project reads.

    loaded = load_checkpoint(path)                       # the model the checkpoint describes
    params = load_params(model, path)                    # checked against a configured model
    params = load_params(model, path, shardings=lambda model: param_shardings(...))

A kind is a detector, a config reader and a parameter reader (`CHECKPOINT_KINDS`); the first
kind whose detector accepts a path reads it. With `shardings` every parameter becomes a
`jax.Array` whose shards are read straight from the files (orbax reads shards of its trees;
safetensors blocks are sliced per layer), so the host never holds a whole copy of the model on
top of the arrays being built: peak host memory beyond the result is about one HF tensor, not
the model. Each process reads only its addressable shards, so multi-host loading needs nothing
more. Without `shardings` the parameters are host numpy arrays.

The training-directory layout (`MODEL_DIR/checkpoints/<step>/state` holding
{"step", "params", "opt_state"}) is defined here so that `models/` never imports `trainer/`;
`trainer/checkpoints.py` writes with the same names. A MODEL_DIR reads as its newest finished step,
a `MODEL_DIR/checkpoints/<step>` directory as that step.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import jax
import orbax.checkpoint as ocp

from arch_compare.models.config import ModelConfig
from arch_compare.models.hf.checkpoint import (CheckpointError, SafetensorsReader,
                                               is_hf_checkpoint, params_from_hf, read_hf_config)
from arch_compare.models.model import BaseModel, Params, build_model
from arch_compare.models.native import (CONFIG_FILE, PARAMS_DIR, is_native_checkpoint,
                                        read_config, restore_params)

CHECKPOINT_DIR = "checkpoints"  # MODEL_DIR/checkpoints/<step>/{state,data}
STATE_ITEM = "state"  # {"step", "params", "opt_state"}
DATA_ITEM = "data"  # the data iterator's position
ITEM_NAMES = (STATE_ITEM, DATA_ITEM)

# None: host numpy arrays; a tree of shardings like the parameters; or a function of the model
# (the model is built from the checkpoint's own config in `load_checkpoint`).
Shardings = Callable[[BaseModel], Params] | Params | None


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    model: BaseModel
    params: Params
    description: str  # exactly what was read: the path, and the step of a training directory


@dataclasses.dataclass(frozen=True)
class CheckpointKind:
    detect: Callable[[Path], bool]
    read_config: Callable[[Path], ModelConfig]
    # (path, model, shardings tree or None) -> (params, description)
    read_params: Callable[[Path, BaseModel, Params | None], tuple[Params, str]]
    what: str  # for the error naming every kind when none detects a path


def _latest_step(path: Path) -> int:
    with ocp.CheckpointManager(path / CHECKPOINT_DIR, item_names=ITEM_NAMES) as manager:
        step = manager.latest_step()  # finalised saves only
    if step is None:
        raise CheckpointError(f"{path / CHECKPOINT_DIR}: no checkpoint to read")
    return step


def _training_params(path: Path, model: BaseModel, shardings: Params | None
                     ) -> tuple[Params, str]:
    step = _latest_step(path)
    # Only the parameters: the optimizer state beside them (twice their size for Adam) is not read.
    params = restore_params(path / CHECKPOINT_DIR / str(step) / STATE_ITEM, model, shardings,
                            within=("params",))
    return params, f"{path}@{step}"


def _is_training_step(path: Path) -> bool:
    """`MODEL_DIR/checkpoints/<step>`: one saved step of a training directory."""
    return (path.name.isdigit() and path.parent.name == CHECKPOINT_DIR
            and (path / STATE_ITEM).is_dir())


def _training_step_config(path: Path) -> ModelConfig:
    return read_config(path.parent.parent)  # MODEL_DIR/model_config.json


def _training_step_params(path: Path, model: BaseModel, shardings: Params | None
                          ) -> tuple[Params, str]:
    params = restore_params(path / STATE_ITEM, model, shardings, within=("params",))
    return params, f"{path.parent.parent}@{int(path.name)}"


def _native_params(path: Path, model: BaseModel, shardings: Params | None
                   ) -> tuple[Params, str]:
    return restore_params(path / PARAMS_DIR, model, shardings), str(path)


def _hf_params(path: Path, model: BaseModel, shardings: Params | None) -> tuple[Params, str]:
    return params_from_hf(SafetensorsReader(path), model, shardings), str(path)


# Tried in order: a training directory also holds model_config.json, so it comes first.
CHECKPOINT_KINDS: dict[str, CheckpointKind] = {
    "training": CheckpointKind(lambda path: (path / CHECKPOINT_DIR).is_dir(), read_config,
                               _training_params, f"a training directory ({CHECKPOINT_DIR}/)"),
    "training_step": CheckpointKind(_is_training_step, _training_step_config,
                                    _training_step_params,
                                    f"a training step ({CHECKPOINT_DIR}/<step>/{STATE_ITEM})"),
    "native": CheckpointKind(is_native_checkpoint, read_config, _native_params,
                             f"a native checkpoint ({CONFIG_FILE})"),
    "hf": CheckpointKind(is_hf_checkpoint, read_hf_config, _hf_params,
                         "a Hugging Face directory (config.json)"),
}


def checkpoint_kind(path: str | os.PathLike) -> str:
    """The name of the first kind in `CHECKPOINT_KINDS` that accepts `path`."""
    path = Path(path)
    for name, kind in CHECKPOINT_KINDS.items():
        if kind.detect(path):
            return name
    *others, last = [kind.what for kind in CHECKPOINT_KINDS.values()]
    raise CheckpointError(f"{path}: neither {', '.join(others)} nor {last}")


def _sharding_tree(shardings: Shardings, model: BaseModel) -> Params | None:
    return shardings(model) if callable(shardings) else shardings


def load_checkpoint(path: str | os.PathLike, *, dtype: str | None = None,
                    shardings: Shardings = None) -> LoadedCheckpoint:
    """The model a checkpoint's own config describes, and its parameters. `dtype` overrides the
    parameter and compute dtypes; `shardings` as in the module docstring."""
    path = Path(path).absolute()
    kind = CHECKPOINT_KINDS[checkpoint_kind(path)]
    config = kind.read_config(path)
    if dtype is not None:
        config = config.replace(param_dtype=dtype, dtype=dtype)
    model = build_model(config)
    params, description = kind.read_params(path, model, _sharding_tree(shardings, model))
    return LoadedCheckpoint(model, params, description)


def load_params(model: BaseModel, path: str | os.PathLike, *,
                shardings: Shardings = None) -> Params:
    """Parameters for the configured `model` (its parameter dtype) from any checkpoint kind,
    refused if the checkpoint's parameters have other names or shapes."""
    path = Path(path).absolute()
    kind = CHECKPOINT_KINDS[checkpoint_kind(path)]
    config = kind.read_config(path)
    # The checkpoint's own model reads it (the HF tensor tables depend on its config); in the
    # configured model's parameter dtype.
    source = build_model(config.replace(param_dtype=model.config.param_dtype))
    shapes = lambda m: jax.tree.map(lambda leaf: tuple(leaf.shape), m.abstract_params())
    if shapes(source) != shapes(model):
        raise CheckpointError(f"{path}: its parameters do not fit the configured model "
                              f"({config.family} checkpoint, {model.config.family} model "
                              f"configured)")
    params, _ = kind.read_params(path, source, _sharding_tree(shardings, model))
    return params

