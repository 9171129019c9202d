"""The `arch-compare` command line: presets listing and checkpoint conversion."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from arch_compare.cli import main
from arch_compare.models import PRESETS, build_model
from arch_compare.models.hf import CheckpointError, save_hf_checkpoint
from arch_compare.models.native import load_model


def test_presets_json_lists_every_preset(capsys):
    assert main(["presets", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list(PRESETS)
    by_name = {row["name"]: row for row in rows}
    assert by_name["gpt2-xl"]["params"] == 1_557_611_200
    assert by_name["t5-small"]["arch"] == "encoder_decoder"
    assert by_name["llama2-70b"]["family"] == "llama2"


def test_console_script_prints_table():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "arch_compare", "presets", "llama3-8b"],
                            capture_output=True, text=True, env=env, check=True)
    assert "8,030,261,248" in result.stdout and "llama3" in result.stdout


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["presets", "gpt2-xxl"]) == 2
    assert "gpt2-xl" in capsys.readouterr().err  # suggests the close name


@pytest.fixture(scope="module")
def hf_directory(tmp_path_factory):
    model = build_model(PRESETS["t5-tiny"].replace(tie_embeddings=False,
                                                   scale_decoder_outputs=False))
    path = tmp_path_factory.mktemp("hf")
    save_hf_checkpoint(model, model.init(jax.random.key(3)), path)
    return path


def test_convert_round_trip_is_exact(hf_directory, tmp_path, capsys):
    native, back = tmp_path / "native", tmp_path / "back"
    assert main(["convert", str(hf_directory), str(native)]) == 0
    assert main(["convert", str(native), str(back), "--max-shard-size", "100KB"]) == 0
    assert "(hf)" in capsys.readouterr().out
    assert len(list(back.glob("model-*-of-*.safetensors"))) > 1
    original = load_file(hf_directory / "model.safetensors")
    converted = {}
    for shard in back.glob("model-*.safetensors"):
        converted.update(load_file(shard))
    assert sorted(original) == sorted(converted)
    for name, array in original.items():
        assert np.array_equal(array, converted[name]), name


def test_convert_to_bfloat16(hf_directory, tmp_path):
    assert main(["convert", str(hf_directory), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    model, params = load_model(tmp_path / "bf16")
    assert model.config.param_dtype == "bfloat16"
    assert {leaf.dtype.name for leaf in jax.tree.leaves(params)} == {"bfloat16"}


def test_corrupt_native_checkpoint_is_refused(hf_directory, tmp_path):
    native = tmp_path / "native"
    assert main(["convert", str(hf_directory), str(native)]) == 0
    data_files = [p for p in (native / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for path in data_files:
        path.write_bytes(b"not an array")
    with pytest.raises(CheckpointError, match="params"):
        load_model(native)


@pytest.mark.parametrize("target", ["native", "hf"])
def test_convert_refuses_to_overwrite(hf_directory, tmp_path, capsys, target):
    destination = tmp_path / "out"
    assert main(["convert", str(hf_directory), str(destination), "--to", target]) == 0
    assert main(["convert", str(hf_directory), str(destination), "--to", target]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_convert_names_a_bad_source(tmp_path, capsys):
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    assert str(tmp_path) in capsys.readouterr().err
