"""Export to Hugging Face format: exact round trips, transformers reads the result, and broken
checkpoints fail with errors that name what is wrong."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import arch_compare
from arch_compare.models.hf import CheckpointError, UnsupportedConfigError
from tests.models.hf_references import (TOLERANCE, assert_untied_t5, flat_params, hf_logits,
                                        load_reference_model, make_batch, max_abs_diff,
                                        our_logits, read_tensors)

SHARDED_CASE = "llama-gqa"
SHARD_BYTES = 30_000  # the tiny LLaMA is ~110 kB of float32: 5 shards


@pytest.fixture(scope="module")
def exported(reference, tmp_path_factory):
    """(model, params) loaded from the reference, and the directory they were exported to."""
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    directory = tmp_path_factory.mktemp(f"{reference.name}-export")
    arch_compare.save_hf_checkpoint(model, params, directory)
    return model, params, directory


def assert_reimports_exactly(model, params, directory: Path) -> None:
    again, params_again = arch_compare.load_hf_checkpoint(directory)
    assert again.config == model.config
    ours, theirs = flat_params(params), flat_params(params_again)
    assert ours.keys() == theirs.keys()
    for path, value in ours.items():
        assert value.dtype == theirs[path].dtype, path
        assert np.array_equal(value, theirs[path]), path


def assert_transformers_agrees(reference, model, params, directory: Path) -> float:
    hf_model = load_reference_model(directory, reference.case.encoder_decoder)
    if reference.case.encoder_decoder and not reference.case.tied:
        assert_untied_t5(hf_model, directory)
    batch = make_batch(reference.case.encoder_decoder)
    diff = max_abs_diff(our_logits(model, params, batch), hf_logits(hf_model, batch))
    assert diff <= TOLERANCE
    return diff


def test_export_reimports_exactly(exported):
    assert_reimports_exactly(*exported)


def test_export_writes_the_source_tensors(reference, exported):
    """Same names and bytes as the file transformers wrote (aliases and buffers aside)."""
    source, export = read_tensors(reference.directory), read_tensors(exported[2])
    assert export.keys() == source.keys()
    for name, value in export.items():
        assert np.array_equal(value, source[name]), name


def test_transformers_loads_export(reference, exported):
    diff = assert_transformers_agrees(reference, *exported)
    print(f"{reference.name}: export max |diff| {diff:.2e}")


def test_sharded_export(reference_for, tmp_path):
    reference = reference_for(SHARDED_CASE)
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    directory = arch_compare.save_hf_checkpoint(model, params, tmp_path / "export",
                                                max_shard_bytes=SHARD_BYTES)
    shards = sorted(p.name for p in directory.glob("*.safetensors"))
    assert len(shards) > 2
    assert all(re.fullmatch(rf"model-\d{{5}}-of-{len(shards):05d}\.safetensors", s) for s in shards)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert index["weight_map"].keys() == read_tensors(directory).keys()
    assert not (directory / "model.safetensors").exists()
    assert_reimports_exactly(model, params, directory)
    assert_transformers_agrees(reference, model, params, directory)


# Broken checkpoints: every error names what is wrong, so a user can fix the file.

@pytest.fixture(scope="module")
def llama_dir(reference_for) -> Path:
    return reference_for(SHARDED_CASE).directory


def broken_copy(source: Path, target: Path, edit_tensors=None, config_text: str | None = None
                ) -> Path:
    """A copy of `source` with its tensors edited in place and/or its config.json replaced."""
    target.mkdir()
    tensors = safetensors.numpy.load_file(source / "model.safetensors")
    if edit_tensors:
        edit_tensors(tensors)
    safetensors.numpy.save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    if config_text is None:
        config_text = (source / "config.json").read_text()
    (target / "config.json").write_text(config_text)
    return target


def load_error(directory: Path, error_type: type[Exception]) -> str:
    with pytest.raises(error_type) as caught:
        arch_compare.load_hf_checkpoint(directory)
    return str(caught.value)


def test_error_types_are_value_errors():
    assert issubclass(CheckpointError, ValueError)
    assert issubclass(UnsupportedConfigError, ValueError)


def test_missing_tensor_is_named(llama_dir, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    directory = broken_copy(llama_dir, tmp_path / "broken", lambda t: t.pop(name))
    assert name in load_error(directory, CheckpointError)


def test_wrong_shape_names_tensor_and_both_shapes(llama_dir, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    good = read_tensors(llama_dir)[name].shape
    bad = (good[0] // 2, good[1])

    def shrink(tensors):
        tensors[name] = tensors[name][:bad[0]].copy()

    message = load_error(broken_copy(llama_dir, tmp_path / "broken", shrink), CheckpointError)
    assert name in message and str(good) in message and str(bad) in message


def test_unexpected_tensor_is_named(llama_dir, tmp_path):
    name = "model.layers.0.self_attn.rogue_proj.weight"

    def add(tensors):
        tensors[name] = np.zeros((4, 4), np.float32)

    assert name in load_error(broken_copy(llama_dir, tmp_path / "broken", add), CheckpointError)


def test_unknown_model_type_is_named(llama_dir, tmp_path):
    config = {**json.loads((llama_dir / "config.json").read_text()), "model_type": "bert"}
    directory = broken_copy(llama_dir, tmp_path / "broken", config_text=json.dumps(config))
    assert "'bert'" in load_error(directory, UnsupportedConfigError)


def test_invalid_json_names_file_and_line(llama_dir, tmp_path):
    bad_line = 4
    text = '{\n  "model_type": "llama",\n  "vocab_size": 128,\n  "hidden_size": ,\n}\n'
    assert "hidden_size\": ," in text.splitlines()[bad_line - 1]
    directory = broken_copy(llama_dir, tmp_path / "broken", config_text=text)
    message = load_error(directory, CheckpointError)
    path = str(directory / "config.json")
    assert path in message
    assert re.search(rf"\b{bad_line}\b", message.replace(path, ""))


def test_directory_without_safetensors_says_so(llama_dir, tmp_path):
    directory = broken_copy(llama_dir, tmp_path / "bin_only")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"")  # a pre-safetensors checkpoint
    message = load_error(directory, CheckpointError)
    assert str(directory) in message and "safetensors" in message
    assert "pytorch_model.bin" in message  # says what it found instead
