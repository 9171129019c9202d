"""Model configurations, presets, the shared layers and the two architecture wrappers."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from arch_compare.models.config import ModelConfig
from arch_compare.models.zoo import PRESETS, get_preset

if TYPE_CHECKING:
    from arch_compare.models.model import (BaseModel, DecoderOnlyModel, EncoderDecoderModel,
                                           build_model)

presets = PRESETS

# Configurations and presets are plain data; the wrappers import JAX and Flax, so they load on
# first use: pricing a run or reading a preset (`arch_compare.models.config`) starts at once.
_LAZY = {name: "arch_compare.models.model"
         for name in ("BaseModel", "DecoderOnlyModel", "EncoderDecoderModel", "build_model")}

__all__ = ["BaseModel", "DecoderOnlyModel", "EncoderDecoderModel", "ModelConfig", "PRESETS",
           "build_model", "get_preset", "presets"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'arch_compare.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
