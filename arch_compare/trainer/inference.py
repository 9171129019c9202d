"""Scoring and generating with a trained model: `evaluate` (seqio metrics) and `infer`
(predictions JSONL).

Both read any checkpoint this project knows — a training directory (`MODEL_DIR`, its newest
checkpoint), a native checkpoint or a Hugging Face directory — and feed models through the same
feature converter as training, so prompts are exactly what the model was trained to continue:
for a decoder-only model the start token, the inputs and their EOS; for an encoder-decoder model
the encoder inputs (UL2's mode token included).

They run on a device mesh like training (`InferenceConfig.execution`, resolved by
`decoding.placement.inference_mesh`): parameters split by the partitioning table, batch rows
over data x fsdp. Several processes running the same program in lockstep each read every
example, decode their devices' rows, and get every result back; only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np
import seqio
from jax.sharding import Mesh
from tqdm import tqdm

from arch_compare.data.iterators import numpy_iterator
from arch_compare.decoding import placement
from arch_compare.decoding.search import DecodeConfig, generate, score
from arch_compare.execution import ExecutionConfig
from arch_compare.models.model import BaseModel, Params
from arch_compare.trainer.eval_rows import converted_rows
from arch_compare_tasks.registry import seqio_task

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    checkpoint_path: str  # a training MODEL_DIR, a native checkpoint or an HF directory
    output_path: str  # a directory for metrics.json / predictions.jsonl
    feature_lengths: dict  # {"inputs": ..., "targets": ...}
    batch_size: int  # examples per step, over all devices
    decode: DecodeConfig
    split: str = "validation"
    # Where it runs: mesh (or 'auto'), compute and parameter dtypes (remat and microbatches are
    # training settings and change nothing here).
    execution: ExecutionConfig = ExecutionConfig()

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"InferenceConfig.batch_size must be positive, got {self.batch_size}")
        object.__setattr__(self, "execution",
                           ExecutionConfig.coerce(self.execution, "InferenceConfig.execution"))


def inference_mesh(model: BaseModel, config: InferenceConfig,
                   devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh `config.execution` runs on (its 'auto' sized for this config's batch and the
    longest prompt and answer)."""
    return placement.inference_mesh(
        config.execution, model, batch_size=config.batch_size,
        lengths=(config.feature_lengths.get("inputs", 0), config.decode.max_new_tokens),
        devices=devices)


def _batches(dataset: Iterable, batch_size: int) -> Iterable[tuple[list[int], dict]]:
    """(indices, features) in fixed-size batches; the last is padded by repeating its first row,
    so one compiled program serves every batch."""
    indices, rows = [], []
    for index, features in dataset:
        indices.append(int(index))
        rows.append(features)
        if len(rows) == batch_size:
            yield indices, _stack(rows, batch_size)
            indices, rows = [], []
    if rows:
        yield indices, _stack(rows, batch_size)


def _stack(rows: list[dict], batch_size: int) -> dict[str, np.ndarray]:
    rows = rows + [rows[0]] * (batch_size - len(rows))
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def _decode_config(config: InferenceConfig, vocabulary: seqio.Vocabulary) -> DecodeConfig:
    if config.decode.eos_id is None and vocabulary.eos_id is not None:
        return dataclasses.replace(config.decode, eos_id=vocabulary.eos_id)
    return config.decode


def evaluate(model: BaseModel, params: Params, vocabulary: seqio.Vocabulary,
             tasks: Sequence[str], config: InferenceConfig, *, mesh: Mesh | None = None,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """Run seqio's Evaluator on each task and write `metrics.json` (process 0); returns
    task -> metrics. `mesh`: where to run (default: the mesh `params` are placed on; see
    `decoding.search`)."""
    converter = model.feature_converter(vocabulary)
    decode = _decode_config(config, vocabulary)

    def predict_fn(dataset):
        outputs = []
        for indices, batch in tqdm(_batches(numpy_iterator(dataset), config.batch_size),
                                   desc="generate", disable=not progress):
            prompts, lengths = model.prompts_of(batch)
            tokens = generate(model, params, prompts, decode, lengths=lengths, mesh=mesh).tokens
            outputs += [(index, tokens[row].tolist()) for row, index in enumerate(indices)]
        return outputs

    def score_fn(dataset):
        outputs = []
        for indices, batch in tqdm(_batches(numpy_iterator(dataset), config.batch_size),
                                   desc="score", disable=not progress):
            scores = score(model, params, batch, mesh=mesh)
            outputs += [(index, float(scores[row])) for row, index in enumerate(indices)]
        return outputs

    results = {}
    for name in tasks:
        task = seqio_task(name, vocabulary)
        evaluator = seqio.Evaluator(task.name, converter, eval_split=config.split,
                                    sequence_length=dict(config.feature_lengths),
                                    use_memory_cache=False)
        metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                        score_fn=score_fn)
        # A float subclass (a metric's Proportion, which keeps its counts for the interval)
        # is kept as it is; anything else becomes a plain float.
        results[name] = {key: value if isinstance(value, float) else float(value)
                         for key, value in metrics.result()[task.name].items()}
    if jax.process_index() == 0:
        output = Path(config.output_path)
        output.mkdir(parents=True, exist_ok=True)
        (output / METRICS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def predict(model: BaseModel, params: Params, vocabulary: seqio.Vocabulary, task_name: str,
            config: InferenceConfig, *, mesh: Mesh | None = None, progress: bool = True
            ) -> Iterator[dict]:
    """Generate for every example of a task's split, in the split's order: one dict per example
    with its text features (`id`, `inputs`, `target`, ...), `prediction` and `score`. `mesh`
    as for `evaluate`."""
    rows = converted_rows(task_name, vocabulary, model.feature_converter(vocabulary),
                          config.feature_lengths, config.split)
    decode = _decode_config(config, vocabulary)
    for indices, batch in tqdm(_batches(rows, config.batch_size),
                               desc=f"infer {task_name}", disable=not progress):
        prompts, prompt_lengths = model.prompts_of(batch)
        generated = generate(model, params, prompts, decode, lengths=prompt_lengths, mesh=mesh)
        tokens, scores = generated.tokens, generated.scores
        for row, index in enumerate(indices):
            text = lambda name: _text(batch[f"text:{name}"][row])
            yield {"index": index,
                   "id": text("id") if "text:id" in batch else str(index),
                   "inputs": text("inputs_pretokenized"),
                   "target": text("targets_pretokenized"),
                   "prediction": vocabulary.decode(tokens[row].tolist()),
                   "score": float(scores[row])}


def infer(model: BaseModel, params: Params, vocabulary: seqio.Vocabulary, task_name: str,
          config: InferenceConfig, *, mesh: Mesh | None = None, progress: bool = True) -> Path:
    """Generate for every example of a task's split and write `predictions.jsonl` (process 0;
    the others decode their rows in lockstep). `mesh` as for `evaluate`."""
    path = Path(config.output_path) / PREDICTIONS_FILE
    rows = predict(model, params, vocabulary, task_name, config, mesh=mesh, progress=progress)
    if jax.process_index() != 0:
        for _ in rows:
            pass
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def _text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value.item() if isinstance(value, np.generic) else value)
