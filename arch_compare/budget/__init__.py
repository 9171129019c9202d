"""Budget estimates: parameters, FLOPs, memory, chips, hours and dollars, before a run starts.

Works from a preset name or a `ModelConfig`, for decoder-only and encoder-decoder models alike,
and prices runs on the chips of `budgets/hardware.yaml`.
"""

from arch_compare.budget.cost import (DEFAULT_MFU, RunEstimate, RunSpec, estimate_run,
                                      realised_mfu)
from arch_compare.budget.flops import forward_flops, inference_flops_per_token, training_flops
from arch_compare.budget.hardware import Chip, HardwareError, get_chip, load_catalogue
from arch_compare.budget.memory import kv_cache_bytes, optimizer_state_bytes, training_memory
from arch_compare.budget.parameters import count_parameters, parameter_tensors
from arch_compare.budget.study import (Evaluation, Setup, StudyEstimate, StudyGrid, calibrate,
                                       estimate_study)

__all__ = [
    "DEFAULT_MFU", "Chip", "Evaluation", "HardwareError", "RunEstimate", "RunSpec", "Setup",
    "StudyEstimate", "StudyGrid", "calibrate", "count_parameters", "estimate_run",
    "estimate_study", "forward_flops", "get_chip", "inference_flops_per_token", "kv_cache_bytes",
    "load_catalogue", "optimizer_state_bytes", "parameter_tensors", "realised_mfu",
    "training_flops", "training_memory",
]
