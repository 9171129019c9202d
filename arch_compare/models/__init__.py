"""Model configurations, presets, the shared layers and the two architecture wrappers."""

from __future__ import annotations

from arch_compare.lazy import lazy_attributes
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

__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
