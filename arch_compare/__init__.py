"""arch_compare: one LLM imitation protocol, run unchanged on decoder-only and encoder-decoder
models, with the budget of every run priced before it starts."""

from arch_compare.models import build_model, get_preset
from arch_compare.models.hf import load_hf_checkpoint, save_hf_checkpoint

__version__ = "0.1.0"

__all__ = ["build_model", "get_preset", "load_hf_checkpoint", "save_hf_checkpoint"]
