"""Hugging Face checkpoint import and export."""

from arch_compare.models.hf.checkpoint import (CheckpointError, load_hf_checkpoint,
                                               save_hf_checkpoint)
from arch_compare.models.hf.configs import UnsupportedConfigError, config_from_hf, config_to_hf

__all__ = ["CheckpointError", "UnsupportedConfigError", "config_from_hf", "config_to_hf",
           "load_hf_checkpoint", "save_hf_checkpoint"]
