"""Read and write Hugging Face model directories (config.json + safetensors, sharded or not)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from arch_compare.models.config import ModelConfig
from arch_compare.models.hf.configs import HF_MODEL_TYPE, config_from_hf, config_to_hf
from arch_compare.models.hf.tensors import FAMILY_TENSORS, FamilyTensors, TensorMap
from arch_compare.models.model import BaseModel, Params, build_model

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 2**30


class CheckpointError(ValueError):
    """A checkpoint that does not fit its config: names the tensor and the directory."""


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") \
            from None


class SafetensorsReader:
    """Tensor names, shapes and values across a directory's safetensors files."""

    def __init__(self, directory: Path):
        self.directory = directory
        if (directory / INDEX_FILE).exists():
            weight_map = read_json(directory / INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{directory / INDEX_FILE}: no 'weight_map' object")
            self.file_of = {name: directory / file for name, file in weight_map.items()}
        elif (directory / SINGLE_FILE).exists():
            with safe_open(directory / SINGLE_FILE, "np") as f:
                self.file_of = {name: directory / SINGLE_FILE for name in f.keys()}
        else:
            found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
            raise CheckpointError(
                f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (found {found}); "
                "convert .bin checkpoints to safetensors first")
        self._handles = {}

    def names(self) -> set[str]:
        return set(self.file_of)

    def _handle(self, name: str):
        path = self.file_of[name]
        if path not in self._handles:
            if not path.exists():
                raise CheckpointError(f"{path}: listed in {INDEX_FILE} but missing")
            self._handles[path] = safe_open(path, "np")
        return self._handles[path]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return self._handle(name).get_tensor(name)


def _layer_names(tensor_map: TensorMap, num_layers: int) -> Iterator[tuple[int | None, list[str]]]:
    if not tensor_map.per_layer:
        yield None, list(tensor_map.hf_names)
        return
    for i in range(num_layers):
        yield i, [name.format(i=i) for name in tensor_map.hf_names]


def _family(cfg: ModelConfig) -> FamilyTensors:
    return FAMILY_TENSORS[HF_MODEL_TYPE[cfg.family]]


def params_from_hf(reader: SafetensorsReader, model: BaseModel) -> Params:
    """Fill `model`'s parameter tree from HF tensors, checking every name and shape."""
    cfg = model.config
    family = _family(cfg)
    abstract = traverse_util.flatten_dict(model.abstract_params(), sep="/")
    shapes = {path: leaf.shape for path, leaf in abstract.items()}
    available = reader.names()

    def resolve(name: str) -> str:
        if name in available:
            return name
        bare = name.removeprefix(family.optional_prefix)
        if family.optional_prefix and bare in available:
            return bare
        raise CheckpointError(f"{reader.directory}: missing tensor {name!r} "
                              f"(needed for {cfg.family} parameters)")

    flat, used = {}, set()
    for tensor_map in family.maps(cfg):
        full_shapes = [shapes[path] for path in tensor_map.our_paths]
        our_shapes = [s[1:] for s in full_shapes] if tensor_map.per_layer else full_shapes
        expected = tensor_map.layout.hf_shapes(our_shapes)
        layers = []
        for _, names in _layer_names(tensor_map, full_shapes[0][0]):
            resolved = [resolve(name) for name in names]
            for name, want in zip(resolved, expected):
                if reader.shape(name) != tuple(want):
                    raise CheckpointError(
                        f"{reader.directory}: tensor {name!r} has shape {reader.shape(name)}, "
                        f"expected {tuple(want)} for this config.json")
            used.update(resolved)
            layers.append(tensor_map.layout.to_ours([reader.get(n) for n in resolved],
                                                    our_shapes))
        for k, path in enumerate(tensor_map.our_paths):
            arrays = [layer[k] for layer in layers]
            value = np.stack(arrays) if tensor_map.per_layer else arrays[0]
            flat[path] = value.astype(cfg.weight_dtype)

    unexpected = sorted(name for name in available - used
                        if not name.endswith(family.ignored_suffixes))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise CheckpointError(f"{reader.directory}: {len(unexpected)} tensors this "
                              f"{cfg.family} config does not use: {shown}")
    missing = sorted(set(shapes) - set(flat))
    assert not missing, f"tensor tables do not cover {missing}"
    return traverse_util.unflatten_dict(flat, sep="/")


def params_to_hf(model: BaseModel, params: Params) -> dict[str, np.ndarray]:
    """HF tensor name -> array, walking the same tables as `params_from_hf`."""
    cfg = model.config
    flat = {path: np.asarray(value)
            for path, value in traverse_util.flatten_dict(params, sep="/").items()}
    tensors = {}
    for tensor_map in _family(cfg).maps(cfg):
        arrays = [flat[path] for path in tensor_map.our_paths]
        for layer, names in _layer_names(tensor_map, arrays[0].shape[0]):
            ours = arrays if layer is None else [a[layer] for a in arrays]
            for name, value in zip(names, tensor_map.layout.to_hf(ours)):
                tensors[name] = np.ascontiguousarray(value)
    return tensors


def load_hf_checkpoint(path: str | os.PathLike, dtype: str | None = None
                       ) -> tuple[BaseModel, Params]:
    """Load a local HF model directory (GPT-2, LLaMA, T5, T5 v1.1 / Flan-T5, UL2).

    Returns `(model, params)`; `model.logits(params, batch)` reads seqio feature names. `dtype`
    overrides the parameter dtype (default float32).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    config = config_from_hf(read_json(directory / "config.json"), str(directory / "config.json"))
    if dtype is not None:
        config = config.replace(param_dtype=dtype, dtype=dtype)
    model = build_model(config)
    return model, params_from_hf(SafetensorsReader(directory), model)


def save_hf_checkpoint(model: BaseModel, params: Params, path: str | os.PathLike, *,
                       max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write `params` as an HF directory that transformers' `from_pretrained` loads."""
    directory = Path(path)
    existing = [p.name for p in directory.glob("*") if p.name == "config.json"
                or p.suffix == ".safetensors" or p.name == INDEX_FILE]
    if existing:
        raise CheckpointError(f"{directory}: already holds {', '.join(sorted(existing))}; "
                              "refusing to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf(model, params)
    hf_config = config_to_hf(model.config)
    hf_config["torch_dtype"] = model.config.param_dtype
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")

    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for name in sorted(tensors):
        size = tensors[name].nbytes
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensors[name]
        shard_bytes += size
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], directory / SINGLE_FILE, metadata=metadata)
        return directory
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / file, metadata=metadata)
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return directory
