"""This project's own model checkpoint: `model_config.json` beside an orbax parameter tree.

It is what `arch-compare convert` writes from a Hugging Face directory and what a run can start
from; restoring checks every array against the shapes the config implies, so a checkpoint that
does not belong to its config is refused rather than silently reshaped. `restore_params` also
reads the parameters out of a training checkpoint's state (`models/loading.py`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from arch_compare.models.config import ModelConfig
from arch_compare.models.hf.checkpoint import CheckpointError, read_json
from arch_compare.models.model import BaseModel, Params, build_model

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def is_native_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def save_model(path: str | os.PathLike, model: BaseModel, params: Params) -> Path:
    directory = Path(path).absolute()
    if (directory / PARAMS_DIR).exists():
        raise CheckpointError(f"{directory / PARAMS_DIR}: already exists; refusing to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, params)
        checkpointer.wait_until_finished()
    # The config is written last: a directory without it is an incomplete save.
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    return directory


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` in `path/model_config.json` (a native checkpoint or a training
    directory)."""
    file = Path(path).absolute() / CONFIG_FILE
    try:
        return ModelConfig.from_dict(read_json(file))
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{file}: {error}") from None


def _check_stored(stored: dict, model: BaseModel, directory: Path) -> None:
    """Refuse a tree whose parameter names or shapes differ from the model's, naming the first
    few, before any array is read."""
    expected = {path: tuple(leaf.shape) for path, leaf in
                traverse_util.flatten_dict(model.abstract_params(), sep="/").items()}
    found = {path: tuple(getattr(leaf, "shape", ()) or ()) for path, leaf in
             traverse_util.flatten_dict(stored, sep="/").items()}
    problems = [f"{path} missing" for path in sorted(expected.keys() - found.keys())]
    problems += [f"{path} not in the model" for path in sorted(found.keys() - expected.keys())]
    problems += [f"{path} is {found[path]}, expected {expected[path]}"
                 for path in sorted(expected.keys() & found.keys())
                 if found[path] != expected[path]]
    if problems:
        shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
        raise CheckpointError(f"{directory}: cannot restore parameters for this "
                              f"{model.config.family} config: {shown}")


def restore_params(directory: str | os.PathLike, model: BaseModel,
                   shardings: Params | None = None, *, within: tuple[str, ...] = ()) -> Params:
    """`model`'s parameters from the orbax tree at `directory` (under the keys `within`, e.g.
    ("params",) in a training state, whose other entries are not read).

    Without `shardings`: host numpy arrays. With a tree of `jax.sharding.Sharding`s: `jax.Array`s
    that orbax reads shard by shard straight from the files (each process only its addressable
    shards). Either way the cast to the model's parameter dtype happens as each block is read.
    """
    directory = Path(directory).absolute()
    handler = ocp.PyTreeCheckpointHandler()
    try:
        try:
            stored = handler.metadata(directory).tree
            for key in within:
                stored = stored[key]
        except Exception as error:  # orbax raises many types; all mean "not an orbax tree"
            raise CheckpointError(f"{directory}: cannot read the parameter tree's metadata "
                                  f"({type(error).__name__}: {error})") from error
        _check_stored(stored, model, directory)
        abstract = model.abstract_params()
        dtype = model.config.weight_dtype
        if shardings is None:
            item = abstract
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype),
                                abstract)
        else:
            item = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(
                leaf.shape, dtype, sharding=sharding), abstract, shardings)
            args = jax.tree.map(lambda leaf, sharding: ocp.ArrayRestoreArgs(
                sharding=sharding, global_shape=leaf.shape, dtype=dtype), abstract, shardings)
        for key in reversed(within):
            item, args = {key: item}, {key: args}
        try:
            restored = handler.restore(directory, args=ocp.args.PyTreeRestore(
                item=item, restore_args=args, partial_restore=bool(within)))
        except Exception as error:  # orbax raises many types; all mean "not this model's params"
            raise CheckpointError(f"{directory}: cannot restore parameters for this "
                                  f"{model.config.family} config: {error}") from error
    finally:
        handler.close()
    for key in within:
        restored = restored[key]
    return restored


def load_model(path: str | os.PathLike, dtype: str | None = None, *,
               shardings: Params | None = None) -> tuple[BaseModel, Params]:
    config = read_config(path)
    if dtype is not None:
        config = config.replace(param_dtype=dtype, dtype=dtype)
    model = build_model(config)
    return model, restore_params(Path(path) / PARAMS_DIR, model, shardings)
