"""This project's own model checkpoint: `model_config.json` beside an orbax parameter tree.

It is what `arch-compare convert` writes from a Hugging Face directory and what a run can start
from; restoring checks every array against the shapes the config implies, so a checkpoint that
does not belong to its config is refused rather than silently reshaped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import orbax.checkpoint as ocp

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


def load_model(path: str | os.PathLike, dtype: str | None = None) -> tuple[BaseModel, Params]:
    directory = Path(path).absolute()
    try:
        config = ModelConfig.from_dict(read_json(directory / CONFIG_FILE))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {error}") from None
    if dtype is not None:
        config = config.replace(param_dtype=dtype, dtype=dtype)
    model = build_model(config)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(directory / PARAMS_DIR, model.abstract_params())
    except Exception as error:  # orbax raises many types; all mean "not this model's params"
        raise CheckpointError(f"{directory / PARAMS_DIR}: cannot restore parameters for "
                              f"{CONFIG_FILE}: {error}") from error
    return model, params
