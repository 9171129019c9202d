"""Read and write Hugging Face model directories (config.json + safetensors, sharded or not)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from arch_compare.models.config import ModelConfig
from arch_compare.models.hf.configs import HF_MODEL_TYPE, config_from_hf, config_to_hf
from arch_compare.models.hf.tensors import (FAMILY_TENSORS, FamilyTensors, Index, Layout,
                                            Shape, Slicer, TensorMap, block_shape)
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


class _Tensor:
    """One safetensors tensor as a `Slicer`: blocks are read on indexing, nothing before."""

    def __init__(self, file: Path, name: str, handle):
        self.file, self.name = file, name
        self._slice = handle.get_slice(name)
        self.shape = tuple(self._slice.get_shape())

    def __getitem__(self, index: Index) -> np.ndarray:
        try:
            return self._slice[index]
        except Exception as error:  # safetensors raises its own types for a truncated file
            raise CheckpointError(f"{self.file}: cannot read tensor {self.name!r} "
                                  f"({error})") from error


class SafetensorsReader:
    """Tensor names and shapes across a directory's safetensors files, and blocks of them."""

    def __init__(self, directory: Path):
        self.directory = directory
        if (directory / INDEX_FILE).exists():
            weight_map = read_json(directory / INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{directory / INDEX_FILE}: no 'weight_map' object")
            self.file_of = {name: directory / file for name, file in weight_map.items()}
        elif (directory / SINGLE_FILE).exists():
            try:
                with safe_open(directory / SINGLE_FILE, "np") as f:
                    self.file_of = {name: directory / SINGLE_FILE for name in f.keys()}
            except Exception as error:  # safetensors raises its own types for a bad header
                raise CheckpointError(f"{directory / SINGLE_FILE}: not a readable safetensors "
                                      f"file ({error})") from error
        else:
            found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
            raise CheckpointError(
                f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (found {found}); "
                "convert .bin checkpoints to safetensors first")
        self._shapes: dict[str, tuple[int, ...]] = {}

    def names(self) -> set[str]:
        return set(self.file_of)

    @contextlib.contextmanager
    def open(self) -> Iterator[Callable[[str], Slicer]]:
        """`tensor(name)` for the reads inside the block. Leaving it closes the files: an open
        file is memory-mapped, and every page read through the map counts in this process's
        resident memory until the map goes, so a whole checkpoint read through open maps would
        count once more on top of the arrays made from it."""
        handles = {}

        def tensor(name: str) -> _Tensor:
            path = self.file_of[name]
            if path not in handles:
                if not path.exists():
                    raise CheckpointError(f"{path}: listed in {INDEX_FILE} but missing")
                try:
                    handles[path] = safe_open(path, "np")
                except Exception as error:
                    raise CheckpointError(f"{path}: not a readable safetensors file "
                                          f"({error})") from error
            return _Tensor(path, name, handles[path])

        try:
            yield tensor
        finally:
            handles.clear()

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            with self.open() as tensor:  # headers only
                self._shapes[name] = tensor(name).shape
        return self._shapes[name]


def _layer_names(tensor_map: TensorMap, num_layers: int) -> Iterator[tuple[int | None, list[str]]]:
    if not tensor_map.per_layer:
        yield None, list(tensor_map.hf_names)
        return
    for i in range(num_layers):
        yield i, [name.format(i=i) for name in tensor_map.hf_names]


def _family(cfg: ModelConfig) -> FamilyTensors:
    return FAMILY_TENSORS[HF_MODEL_TYPE[cfg.family]]


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where one of our arrays comes from: its map's layout, which of the map's arrays it is,
    the HF tensor names of each layer (one entry for an array without a layers axis) and the
    map's array shapes without the layers axis."""

    layout: Layout
    part: int
    names: tuple[tuple[str, ...], ...]
    shapes: tuple[Shape, ...]
    per_layer: bool

    def read(self, tensor: Callable[[str], Slicer], index: Index, dtype) -> np.ndarray:
        """Block `index` of the array (layers axis first), converted to `dtype` block by
        block: one layer's HF block in memory at a time beside the result."""
        if not self.per_layer:
            hf = [tensor(name) for name in self.names[0]]
            return np.asarray(self.layout.read(hf, self.shapes, self.part, index), dtype)
        layers, within = index[0], index[1:]
        block = np.empty(block_shape(index), dtype)  # [layers, ...]
        for row, layer in enumerate(range(layers.start, layers.stop)):
            hf = [tensor(name) for name in self.names[layer]]
            block[row] = self.layout.read(hf, self.shapes, self.part, within)
        return block


def _plan(reader: SafetensorsReader, model: BaseModel) -> dict[str, _Source]:
    """Parameter path -> where it comes from, after checking every name and shape against the
    file headers (no tensor data is read)."""
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

    plan, used = {}, set()
    for tensor_map in family.maps(cfg):
        full_shapes = [shapes[path] for path in tensor_map.our_paths]
        our_shapes = [s[1:] for s in full_shapes] if tensor_map.per_layer else full_shapes
        expected = tensor_map.layout.hf_shapes(our_shapes)
        names = []
        for _, layer_names in _layer_names(tensor_map, full_shapes[0][0]):
            resolved = [resolve(name) for name in layer_names]
            for name, want in zip(resolved, expected):
                if reader.shape(name) != tuple(want):
                    raise CheckpointError(
                        f"{reader.directory}: tensor {name!r} has shape {reader.shape(name)}, "
                        f"expected {tuple(want)} for this config.json")
            used.update(resolved)
            names.append(tuple(resolved))
        for part, path in enumerate(tensor_map.our_paths):
            plan[path] = _Source(tensor_map.layout, part, tuple(names),
                                 tuple(map(tuple, our_shapes)), tensor_map.per_layer)

    unexpected = sorted(name for name in available - used
                        if not name.endswith(family.ignored_suffixes))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise CheckpointError(f"{reader.directory}: {len(unexpected)} tensors this "
                              f"{cfg.family} config does not use: {shown}")
    missing = sorted(set(shapes) - set(plan))
    assert not missing, f"tensor tables do not cover {missing}"
    return plan


def _normalized(index: tuple, shape: Shape) -> Index:
    # make_array_from_callback may pass slice(None) for an axis it does not split.
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    normalized = []
    for s, size in zip(index, shape):
        start, stop, step = s.indices(size)
        assert step == 1, f"a shard's index is strided: {index}"
        normalized.append(slice(start, stop))
    return tuple(normalized)


def params_from_hf(reader: SafetensorsReader, model: BaseModel,
                   shardings: Params | None = None) -> Params:
    """Fill `model`'s parameter tree from HF tensors, checking every name and shape.

    Without `shardings`: host numpy arrays in the model's parameter dtype, each filled one HF
    tensor (one layer) at a time. With `shardings` (a tree of `jax.sharding.Sharding`s like the
    parameters): `jax.Array`s whose shards are read straight from the files, each shard reading
    only its own block of the HF tensors where the tensor layout allows it, so no whole
    parameter is ever assembled on the host; in a multi-process run each process reads only its
    addressable shards.
    """
    plan = _plan(reader, model)
    dtype = model.config.weight_dtype
    shapes = {path: leaf.shape
              for path, leaf in traverse_util.flatten_dict(model.abstract_params(),
                                                           sep="/").items()}

    def read(path: str, index: tuple) -> np.ndarray:
        with reader.open() as tensor:
            return plan[path].read(tensor, _normalized(index, shapes[path]), dtype)

    if shardings is None:
        flat = {path: read(path, ()) for path in plan}
    else:
        flat_shardings = _flat_shardings(shardings, shapes, reader.directory)
        flat = {path: jax.make_array_from_callback(
                    shapes[path], flat_shardings[path], functools.partial(read, path))
                for path in plan}
    return traverse_util.unflatten_dict(flat, sep="/")


def _flat_shardings(shardings: Params, shapes: dict[str, Shape], where: Path) -> dict:
    flat = traverse_util.flatten_dict(shardings, sep="/")
    if flat.keys() != shapes.keys():
        differ = sorted(set(flat) ^ set(shapes))
        raise ValueError(f"{where}: the shardings tree does not match the parameters "
                         f"(differs at {', '.join(differ[:5])})")
    return flat


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


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.json").is_file()


def read_hf_config(path: str | os.PathLike) -> ModelConfig:
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    return config_from_hf(read_json(directory / "config.json"), str(directory / "config.json"))


def load_hf_checkpoint(path: str | os.PathLike, dtype: str | None = None, *,
                       shardings: Params | None = None) -> tuple[BaseModel, Params]:
    """Load a local HF model directory (GPT-2, LLaMA, T5, T5 v1.1 / Flan-T5, UL2).

    Returns `(model, params)`; `model.logits(params, batch)` reads seqio feature names. `dtype`
    overrides the parameter dtype (default float32); `shardings` as in `params_from_hf`.
    """
    config = read_hf_config(path)
    if dtype is not None:
        config = config.replace(param_dtype=dtype, dtype=dtype)
    model = build_model(config)
    return model, params_from_hf(SafetensorsReader(Path(path)), model, shardings)


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
