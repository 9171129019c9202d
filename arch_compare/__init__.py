"""arch_compare: one LLM imitation protocol, run unchanged on decoder-only and encoder-decoder
models, with the budget of every run priced before it starts."""

from __future__ import annotations

from arch_compare.lazy import lazy_attributes
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arch_compare.models import build_model, get_preset
    from arch_compare.models.hf import load_hf_checkpoint, save_hf_checkpoint

__version__ = "0.1.0"

# Importing the package (every `arch_compare.X` import does) must not import JAX: commands that
# read a database or price a run start at once. These names load their module on first use.
_LAZY = {"build_model": "arch_compare.models", "get_preset": "arch_compare.models",
         "load_hf_checkpoint": "arch_compare.models.hf",
         "save_hf_checkpoint": "arch_compare.models.hf"}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
