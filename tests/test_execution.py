"""Execution settings: validation, overrides, 'auto' mesh resolution; and the model seam that
keeps architecture differences inside the model wrappers."""

import re
from pathlib import Path

import numpy as np
import pytest

from arch_compare.execution import (ExecutionConfig, NoMeshFits, candidate_meshes,
                                    mesh_description, resolve_mesh)
from arch_compare.models import build_model, get_preset
from arch_compare.models.config import ModelConfig
from arch_compare.partitioning import MeshConfig

PACKAGE = Path(__file__).resolve().parents[1] / "arch_compare"


def test_a_dict_becomes_execution_settings_and_says_what_it_is():
    execution = ExecutionConfig.coerce({"mesh": {"fsdp": 4, "tensor": 2}, "dtype": "bfloat16",
                                        "remat": "block", "microbatches": 4})
    assert execution.mesh == MeshConfig(fsdp=4, tensor=2)
    assert execution.describe() == ("fsdp 4 x tensor 2, bfloat16 (params float32), remat block, "
                                    "4 microbatches")
    assert execution.to_dict()["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert ExecutionConfig.coerce(execution.to_dict()) == execution
    assert ExecutionConfig.coerce({"mesh": "auto"}).to_dict()["mesh"] == "auto"
    assert ExecutionConfig.coerce(None) == ExecutionConfig()


@pytest.mark.parametrize("value, message", [
    ({"mesh": {"fsdpp": 4}}, "models[0].execution.mesh: unknown axis 'fsdpp'"),
    ({"mesh": {"fsdp": 0}}, "MeshConfig.fsdp must be a positive int"),
    ({"mesh": "everything"}, "expected 'auto' or a dict of axis sizes"),
    ({"remat": "full"}, "models[0].execution.remat='full' is not one of none, block"),
    ({"dtype": "float8"}, "models[0].execution.dtype='float8'"),
    ({"microbatches": 0}, "microbatches must be a positive int"),
    ({"micro_batches": 2}, "unknown key(s) micro_batches"),
])
def test_bad_settings_name_the_key(value, message):
    with pytest.raises(ValueError) as error:
        ExecutionConfig.coerce(value, "models[0].execution")
    assert message in str(error.value)


def test_a_model_override_replaces_only_what_it_names():
    study = ExecutionConfig.coerce({"mesh": {"fsdp": 16}, "dtype": "bfloat16", "remat": "block"})
    model = study.override({"mesh": {"fsdp": 8, "tensor": 2}})
    assert model.mesh == MeshConfig(fsdp=8, tensor=2)
    assert (model.dtype, model.remat) == ("bfloat16", "block")
    assert study.override({}) is study


def test_apply_sets_dtypes_and_remat_on_the_model_config():
    config = ExecutionConfig(dtype="bfloat16", param_dtype="bfloat16",
                             remat="dots_saveable").apply(get_preset("llama-tiny"))
    assert (config.dtype, config.param_dtype, config.remat) == ("bfloat16", "bfloat16",
                                                               "dots_saveable")
    # The architecture is untouched: a checkpoint of the model still belongs to it.
    assert config.architecture_dict() == get_preset("llama-tiny").architecture_dict()


def test_directories_written_with_the_old_remat_flag_still_read():
    values = get_preset("gpt2-tiny").to_dict()
    values.pop("remat")
    assert ModelConfig.from_dict({**values, "remat_layers": True}).remat == "block"
    assert ModelConfig.from_dict({**values, "remat_layers": False}).remat == "none"


def test_auto_tries_fsdp_before_tensor_and_every_mesh_spans_the_devices():
    meshes = list(candidate_meshes(8))
    assert all(mesh.num_devices == 8 for mesh in meshes)
    assert len(set(meshes)) == len(meshes) == 10
    assert [m.shape for m in meshes[:4]] == [(8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1)]
    assert meshes[-1].shape == (1, 1, 8)
    # The first mesh that fits wins; a fixed mesh is returned as configured.
    fits = lambda mesh: mesh.fsdp >= 4 and mesh.tensor == 1
    assert resolve_mesh(ExecutionConfig(mesh="auto"), 8, fits, str).shape == (2, 4, 1)
    fixed = ExecutionConfig(mesh={"tensor": 8})
    assert resolve_mesh(fixed, 8, lambda mesh: False, str) == MeshConfig(tensor=8)
    with pytest.raises(NoMeshFits, match="no mesh over 8 devices fits; 12 GiB short"):
        resolve_mesh(ExecutionConfig(mesh="auto"), 8, lambda mesh: False, lambda: "12 GiB short")
    assert mesh_description(MeshConfig()) == "1 device"


@pytest.mark.parametrize("preset, lengths, expected", [
    ("gpt2-tiny", {"inputs": 32, "targets": 16}, (0, 48)),  # a prefix LM: one decoder sequence
    ("t5-tiny", {"inputs": 32, "targets": 16}, (32, 16)),
])
def test_the_model_says_what_lengths_a_step_runs(preset, lengths, expected):
    assert build_model(get_preset(preset)).sequence_lengths(lengths) == expected


def test_the_model_says_where_its_prompt_is_and_how_long_it_may_be():
    decoder = build_model(get_preset("gpt2-tiny"))
    batch = {"decoder_input_tokens": np.array([[5, 6, 7, 8, 0]]),
             "decoder_causal_attention": np.array([[1, 1, 1, 0, 0]])}
    tokens, lengths = decoder.prompts_of(batch)
    assert tokens.tolist() == [[5, 6, 7, 8, 0]] and lengths.tolist() == [3]
    assert decoder.max_prompt_tokens(56) == 256 - 56  # learned positions: one shared table
    assert build_model(get_preset("llama-tiny")).max_prompt_tokens(56) is None  # rotary
    encoder_decoder = build_model(get_preset("t5-tiny"))
    tokens, lengths = encoder_decoder.prompts_of({"encoder_input_tokens": np.array([[4, 9, 1, 0]])})
    assert lengths.tolist() == [3]
    assert encoder_decoder.max_prompt_tokens(56) is None


def test_no_code_above_the_models_branches_on_the_architecture():
    offenders = []
    for folder in ("trainer", "imitation", "evaluation", "decoding"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if re.search(r"is_encoder_decoder|\.arch\s*==", line):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    serving = (PACKAGE / "serving.py").read_text()
    assert "is_encoder_decoder" not in serving
    assert not offenders, "\n".join(offenders)
