"""Presets: every published name exists, and parameter counts equal Hugging Face's exactly."""

import jax
import pytest
import torch
import transformers

from arch_compare.models import PRESETS, build_model
from arch_compare.models.hf import config_to_hf
from arch_compare.models.zoo import TINY_PRESETS

DESIGN_NAMES = (
    [f"gpt2-{s}" for s in ("small", "medium", "large", "xl")]
    + [f"llama-{s}" for s in ("7b", "13b", "33b", "65b")]
    + [f"llama2-{s}" for s in ("7b", "13b", "70b")] + ["llama3-8b"]
    + [f"t5-{s}" for s in ("small", "base", "large", "3b", "11b")]
    + [f"t5.1.1-{s}" for s in ("small", "base", "large", "xl", "xxl")]
    + [f"flan-t5-{s}" for s in ("small", "base", "large", "xl", "xxl")]
    + ["ul2-20b", "gpt2-tiny", "llama-tiny", "t5-tiny", "ul2-tiny"])
REAL_PRESETS = [name for name in PRESETS if name not in TINY_PRESETS]

# Published totals (HF `num_parameters()` of the released checkpoints).
PUBLISHED_COUNTS = {"gpt2-xl": 1_557_611_200, "llama-7b": 6_738_415_616, "t5-small": 60_506_624}


def test_every_design_preset_exists():
    assert sorted(DESIGN_NAMES) == sorted(PRESETS)


def hf_parameter_count(name: str) -> int:
    """HF's own count for the same configuration, built on the meta device (no memory)."""
    hf_config = config_to_hf(PRESETS[name])
    config_class = transformers.AutoConfig.for_model(hf_config["model_type"]).__class__
    config = config_class(**{k: v for k, v in hf_config.items() if k != "model_type"})
    with torch.device("meta"):
        if hf_config["model_type"] == "t5":
            model = transformers.T5ForConditionalGeneration(config)
            if not PRESETS[name].tie_embeddings:
                # transformers 5.x always ties T5's head in memory; released v1.1 / Flan-T5 /
                # UL2 checkpoints carry a separate lm_head, so give the reference one.
                model.lm_head = torch.nn.Linear(config.d_model, config.vocab_size, bias=False)
                assert model.lm_head.weight is not model.shared.weight
        else:
            model = transformers.AutoModelForCausalLM.from_config(config)
    return model.num_parameters()


@pytest.mark.parametrize("name", REAL_PRESETS)
def test_parameter_count_equals_hugging_face(name):
    ours = build_model(PRESETS[name]).param_count()
    assert ours == hf_parameter_count(name)
    if name in PUBLISHED_COUNTS:
        assert ours == PUBLISHED_COUNTS[name]


def test_large_presets_are_described_without_allocating():
    model = build_model(PRESETS["llama2-70b"])
    leaves = jax.tree.leaves(model.abstract_params())
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert model.param_count() == 68_976_648_192
