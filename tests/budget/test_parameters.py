"""Parameter counts from configs alone: the model's own tree, and Hugging Face's totals."""

import pytest
from flax import traverse_util

from arch_compare.budget import count_parameters, parameter_tensors
from arch_compare.models import PRESETS, build_model
from tests.models.test_presets import PUBLISHED_COUNTS, REAL_PRESETS, hf_parameter_count


@pytest.mark.parametrize("name", list(PRESETS))
def test_tensors_match_the_models_parameter_tree(name):
    abstract = traverse_util.flatten_dict(build_model(PRESETS[name]).abstract_params(), sep="/")
    ours = {tensor.path: tensor.shape for tensor in parameter_tensors(PRESETS[name])}
    assert ours == {path: leaf.shape for path, leaf in abstract.items()}


@pytest.mark.parametrize("name", REAL_PRESETS)
def test_total_equals_hugging_face(name):
    total = count_parameters(PRESETS[name]).total
    assert total == hf_parameter_count(name)
    if name in PUBLISHED_COUNTS:
        assert total == PUBLISHED_COUNTS[name]


def test_groups_split_the_total():
    llama = count_parameters(PRESETS["llama-7b"])
    # token embedding and untied head: 2 x 32000 x 4096; 32 layers of 4 x 4096^2 attention
    assert llama.embedding == 2 * 32000 * 4096
    assert llama.attention == 32 * 4 * 4096 * 4096
    assert llama.mlp == 32 * 3 * 4096 * 11008
    assert llama.norm == 65 * 4096
    t5 = count_parameters(PRESETS["t5-11b"])
    # inner dimension heads x head_dim = 128 x 128 = 16384, not d_model = 1024
    assert t5.attention == (24 * 4 + 24 * 8) * 1024 * 16384 + 2 * 32 * 128
