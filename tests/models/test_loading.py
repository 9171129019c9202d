"""The one checkpoint loader: every kind loads the same values with and without shardings; on 8
fake devices each parameter is split as its sharding says and each read touches only its block."""

import json

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from arch_compare.models import build_model, get_preset
from arch_compare.models.hf import CheckpointError, save_hf_checkpoint
from arch_compare.models.hf.tensors import FAMILY_TENSORS, block_shape, full_index
from arch_compare.models.hf.configs import HF_MODEL_TYPE
from arch_compare.models.loading import checkpoint_kind, load_checkpoint, load_params
from arch_compare.models.native import save_model
from arch_compare.trainer.checkpoints import Checkpoints
from arch_compare.trainer.steps import TrainState
from tests.multidevice_helpers import run_with_fake_devices

HF_PRESETS = ("llama-tiny", "t5-tiny", "gpt2-tiny")  # gpt2: fused q/k/v, flat biases, Conv1D
TRAINING_STEP = 7


def _random_params(model, seed):
    # Drawn on the host: initialising through the model would compile for seconds per preset.
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype),
                        model.abstract_params())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (directory, model, params written there): HF directories of three families, a
    native checkpoint and a training MODEL_DIR."""
    root = tmp_path_factory.mktemp("loading")
    written = {}
    for seed, preset in enumerate(HF_PRESETS):
        model = build_model(get_preset(preset))
        params = _random_params(model, seed)
        written[f"hf:{preset}"] = (save_hf_checkpoint(model, params, root / preset), model, params)
    model = build_model(get_preset("llama-tiny"))
    params = _random_params(model, 10)
    written["native"] = (save_model(root / "native", model, params), model, params)
    params = _random_params(model, 11)
    checkpoints = Checkpoints(root / "run", model.config)
    checkpoints.save(TrainState(np.int32(TRAINING_STEP), params, optax.adamw(1e-3).init(params)),
                     data_position=3)
    checkpoints.close()
    written["training"] = (root / "run", model, params)
    return written


def _single_device_shardings(model):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda _: sharding, model.abstract_params())


def _assert_same(loaded, expected):
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    for path, value in jax.tree_util.tree_leaves_with_path(loaded):
        want = expected
        for key in path:
            want = want[key.key]
        assert value.dtype == want.dtype, path
        assert np.array_equal(np.asarray(value), want), jax.tree_util.keystr(path)


@pytest.mark.parametrize("kind", [f"hf:{p}" for p in HF_PRESETS] + ["native", "training"])
def test_every_kind_loads_the_saved_values_with_and_without_shardings(checkpoints, kind):
    directory, model, params = checkpoints[kind]
    plain = load_checkpoint(directory)
    assert plain.model.config == model.config
    assert all(type(leaf) is np.ndarray for leaf in jax.tree.leaves(plain.params))
    _assert_same(plain.params, params)
    placed = load_checkpoint(directory, shardings=_single_device_shardings)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(placed.params))
    _assert_same(placed.params, params)
    # load_params reads the same, for a configured model, with a tree of shardings too.
    _assert_same(load_params(model, directory, shardings=_single_device_shardings(model)),
                 params)


def test_descriptions_name_what_was_read(checkpoints):
    directory, _, _ = checkpoints["training"]
    assert checkpoint_kind(directory) == "training"
    assert load_checkpoint(directory).description == f"{directory.absolute()}@{TRAINING_STEP}"
    directory, _, _ = checkpoints["native"]
    assert load_checkpoint(directory).description == str(directory.absolute())


@pytest.mark.parametrize("kind", ["hf:llama-tiny", "native", "training"])
def test_dtype_is_converted_on_read(checkpoints, kind):
    directory, _, params = checkpoints[kind]
    loaded = load_checkpoint(directory, dtype="bfloat16", shardings=_single_device_shardings)
    assert loaded.model.config.param_dtype == "bfloat16"
    _assert_same(loaded.params, jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params))


def test_a_checkpoint_of_another_family_is_refused_naming_both(checkpoints):
    gpt2 = build_model(get_preset("gpt2-tiny"))
    for kind in ("hf:llama-tiny", "training"):
        with pytest.raises(CheckpointError, match="llama checkpoint, gpt2 model configured"):
            load_params(gpt2, checkpoints[kind][0])


def test_a_truncated_safetensors_file_names_the_file(checkpoints, tmp_path):
    source, _, _ = checkpoints["hf:llama-tiny"]
    for file in source.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(tmp_path, shardings=_single_device_shardings)


def test_a_native_checkpoint_of_other_shapes_names_the_parameter(checkpoints, tmp_path):
    directory, model, params = checkpoints["native"]
    config = json.loads((directory / "model_config.json").read_text())
    save_model(tmp_path, model, params)
    (tmp_path / "model_config.json").write_text(json.dumps({**config, "d_ff": 96}))
    with pytest.raises(CheckpointError, match=r"params: .*mlp/wi_0/kernel is \(2, 64, 128\), "
                                              r"expected \(2, 64, 96\)"):
        load_checkpoint(tmp_path)


class _Array:
    """A numpy array as a Slicer that records the size of every block read from it."""

    def __init__(self, value, reads):
        self.value, self.shape, self.reads = value, value.shape, reads

    def __getitem__(self, index):
        self.reads.append(int(np.prod(block_shape(index))))
        return self.value[index]


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "ul2-tiny"])
def test_layout_blocks_equal_blocks_of_the_converted_tensors(preset):
    """Every layout's block reader against its whole-tensor conversion, for blocks that split
    each axis in two (contiguous in the HF tensor or not) and for single rows."""
    model = build_model(get_preset(preset))
    config = model.config
    shapes = {path: leaf.shape for path, leaf in
              traverse_util.flatten_dict(model.abstract_params(), sep="/").items()}
    rng = np.random.default_rng(0)
    for tensor_map in FAMILY_TENSORS[HF_MODEL_TYPE[config.family]].maps(config):
        ours = [shapes[p][1:] if tensor_map.per_layer else shapes[p]
                for p in tensor_map.our_paths]
        hf_values = [rng.standard_normal(s).astype(np.float32)
                     for s in tensor_map.layout.hf_shapes(ours)]
        converted = tensor_map.layout.to_ours(hf_values, ours)
        for part, shape in enumerate(ours):
            halves = tuple(slice(size // 2, size) for size in shape)
            first_half = (slice(0, shape[0] // 2 or 1),) + full_index(shape[1:])
            last_row = tuple(slice(size - 1, size) for size in shape)
            for index in (full_index(shape), halves, first_half, last_row):
                reads = []
                block = tensor_map.layout.read([_Array(v, reads) for v in hf_values], ours,
                                               part, index)
                assert np.array_equal(block, converted[part][index]), (tensor_map.our_paths,
                                                                        index)
                if index is first_half:  # a row range of ours is a range of the HF tensor
                    assert sum(reads) == int(np.prod(block_shape(index))), tensor_map.hf_names


MULTIDEVICE = """
import json
import jax, numpy as np
from arch_compare import partitioning
from arch_compare.models.hf import checkpoint
from arch_compare.models.loading import load_checkpoint, load_params

reads = []
original = checkpoint._Tensor.__getitem__
def counting(self, index):
    value = original(self, index)
    reads.append(value.size)
    return value
checkpoint._Tensor.__getitem__ = counting

mesh = partitioning.make_mesh(partitioning.MeshConfig(fsdp=4, tensor=2))
shardings = lambda model: partitioning.param_shardings(model.logical_axes(),
                                                       model.abstract_params(), mesh)
report = {{}}
for kind, directory in json.loads({directories!r}).items():
    reads.clear()
    plain = load_checkpoint(directory)
    whole_reads = max(reads, default=0)
    reads.clear()
    placed = load_checkpoint(directory, shardings=shardings)
    flat_plain = jax.tree.leaves(plain.params)
    flat_placed = jax.tree.leaves(placed.params)
    split = [leaf for leaf in flat_placed
             if leaf.addressable_shards[0].data.shape != leaf.shape]
    # The unit one read fills: a layer of a shard for stacked layers, else the shard.
    per_layer_shard = max(
        int(np.prod(leaf.addressable_shards[0].data.shape[1 if "blocks" in str(path) else 0:]))
        for path, leaf in jax.tree_util.tree_leaves_with_path(placed.params))
    report[kind] = {{
        "equal": all(np.array_equal(np.asarray(a), b) for a, b in zip(flat_placed, flat_plain)),
        "shards_as_said": all(
            shard.data.shape == leaf.sharding.shard_shape(leaf.shape)
            and np.array_equal(np.asarray(shard.data), np.asarray(leaf)[shard.index])
            for leaf in flat_placed for shard in leaf.addressable_shards),
        "leaves": len(flat_placed), "split": len(split),
        "largest_sharded_read": max(reads, default=0), "largest_plain_read": whole_reads,
        "largest_shard_per_layer": per_layer_shard,
    }}
    if kind == "training":
        again = load_params(placed.model, directory, shardings=shardings(placed.model))
        report[kind]["load_params_equal"] = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(again), flat_placed))
print(json.dumps(report))
"""


def test_on_8_devices_every_kind_loads_into_fsdp_4_by_tensor_2(checkpoints):
    directories = {kind: str(directory) for kind, (directory, _, _) in checkpoints.items()}
    report = run_with_fake_devices(MULTIDEVICE.format(directories=json.dumps(directories)))
    assert report.keys() == directories.keys()
    for kind, result in report.items():
        assert result["equal"] and result["shards_as_said"], (kind, result)
        # Most parameters are split (norm scales along fsdp); none read as a whole copy.
        assert result["split"] >= result["leaves"] // 2, (kind, result)
    for kind in (k for k in report if k.startswith("hf:")):
        result = report[kind]
        # Each read is one layer's block of one shard, never a whole HF tensor.
        assert 0 < result["largest_sharded_read"] <= result["largest_shard_per_layer"], result
        assert result["largest_sharded_read"] < result["largest_plain_read"], result
    assert report["training"]["load_params_equal"]
