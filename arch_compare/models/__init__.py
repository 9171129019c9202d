"""Model configurations, presets, the shared layers and the two architecture wrappers."""

from arch_compare.models.config import ModelConfig
from arch_compare.models.model import (BaseModel, DecoderOnlyModel, EncoderDecoderModel,
                                       build_model)
from arch_compare.models.zoo import PRESETS, get_preset

presets = PRESETS

__all__ = ["BaseModel", "DecoderOnlyModel", "EncoderDecoderModel", "ModelConfig", "PRESETS",
           "build_model", "get_preset", "presets"]
