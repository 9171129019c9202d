"""What a base model says about each prompt of a selection pool: its answers (greedy or sampled),
the mean token entropy of an answer, and one pooled hidden-state vector per prompt.

Prompts become model input exactly as in training and evaluation: the task's seqio preprocessors
(tokenize, then `append_eos_after_trim` to the feature lengths) and the model's own feature
converter, so the architecture never shows here: decoding reads `model.prompts_of(batch)`,
teacher forcing `model.logits(params, batch)` with the converter's `decoder_loss_weights` marking
the answer's positions, and the pooled states `model.pooled_states(params, batch)`.

Batches have a fixed size (the last one padded by repeating a row, the copies dropped), so one
compiled program serves a whole pool; programs are kept per model, per pass and per mesh, and
decoding reuses `decoding.search`'s cache. On a mesh (given, or the one the parameters are
placed on) rows are split over data x fsdp, as `decoding.search` does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from jax.sharding import Mesh
from tqdm import tqdm

from arch_compare import partitioning
from arch_compare.data.iterators import numpy_iterator
from arch_compare.decoding import placement
from arch_compare.decoding.search import DecodeConfig, generate
from arch_compare.models.model import BaseModel, Params

TEXT_FEATURES = ("inputs", "targets")


@dataclasses.dataclass(frozen=True)
class Answers:
    """A model's answer to each pool prompt, in pool order."""

    tokens: tuple[tuple[int, ...], ...]  # generated ids, EOS excluded
    ended: np.ndarray  # [n] bool: the model ended the answer (EOS) within max_new_tokens
    texts: tuple[str, ...]  # decoded as `inference.predict` decodes


class PoolModel:
    """One model's view of one pool: tokenised once, then any number of passes over it."""

    def __init__(self, model: BaseModel, params: Params, vocabulary: seqio.Vocabulary,
                 inputs: Sequence[str], *, feature_lengths: Mapping[str, int], batch_size: int,
                 max_new_tokens: int, mesh: Mesh | None = None, progress: bool = True):
        if batch_size <= 0:
            raise ValueError(f"selection batch_size must be positive, got {batch_size}")
        self.model, self.vocabulary = model, vocabulary
        self.feature_lengths = {name: int(feature_lengths[name]) for name in TEXT_FEATURES}
        self.batch_size, self.max_new_tokens, self.progress = batch_size, max_new_tokens, progress
        self.mesh = mesh or placement.mesh_of(params) or placement.single_device_mesh()
        self.params = placement.place_params(model, params, self.mesh)  # once, not per batch
        self.features = {name: seqio.Feature(vocabulary, add_eos=True) for name in TEXT_FEATURES}
        texts = tf.data.Dataset.from_tensor_slices({"inputs": list(inputs)})
        self.inputs = [row["inputs"] for row in numpy_iterator(seqio.preprocessors.tokenize(
            texts, {"inputs": self.features["inputs"]}, copy_pretokenized=False))]
        self._prompt_batches: list | None = None  # the prompts alone, converted once
        self._greedy: Answers | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    # --- passes -----------------------------------------------------------------------------

    def answers(self, decode: Callable[[int], DecodeConfig], description: str) -> Answers:
        """Each prompt's answer; `decode(batch_number)` is the batch's DecodeConfig (sampling
        seeds differ per batch)."""
        eos = self.vocabulary.eos_id
        tokens, ended, texts = [], [], []
        for number, (rows, batch) in enumerate(self._batches(None, description)):
            prompts, lengths = self.model.prompts_of(batch)
            out = generate(self.model, self.params, prompts, decode(number), lengths=lengths,
                           mesh=self.mesh)
            for row in range(rows):
                generated = out.tokens[row, :out.lengths[row]].tolist()
                finished = bool(generated) and eos is not None and generated[-1] == eos
                tokens.append(tuple(generated[:-1] if finished else generated))
                ended.append(finished)
                texts.append(self.vocabulary.decode(out.tokens[row].tolist()))
        return Answers(tuple(tokens), np.array(ended, bool), tuple(texts))

    def greedy(self) -> Answers:
        """The greedy answers (decoded once per pool: several strategies read them)."""
        if self._greedy is None:
            self._greedy = self.answers(lambda _: self.decode_config(), "greedy answers")
        return self._greedy

    def decode_config(self, **settings) -> DecodeConfig:
        eos = self.vocabulary.eos_id
        return DecodeConfig(max_new_tokens=self.max_new_tokens, eos_id=eos, **settings)

    def mean_entropies(self, answers: Answers) -> np.ndarray:
        """[n] float64: the mean entropy (nats) of the model's next-token distribution at each
        of the answer's token positions (its EOS included when it ended), teacher-forced on the
        prompt and that answer. An answer cut by the targets feature length counts the
        positions that fit."""
        program = _compiled(self.model, "entropies", self.mesh)
        means = []
        for rows, batch in self._batches(answers.tokens, "answer entropy"):
            entropies = np.asarray(program(self.params, *self._on_mesh(batch)))  # [b, l]
            weights = np.asarray(batch["decoder_loss_weights"]) > 0  # the answer's positions
            for row in range(rows):
                index = len(means)
                counted = len(answers.tokens[index]) + int(answers.ended[index])
                positions = np.flatnonzero(weights[row])[:max(counted, 1)]
                means.append(float(entropies[row, positions].astype(np.float64).mean()))
        return np.array(means, np.float64)

    def pooled_states(self) -> np.ndarray:
        """[n, d_model] float32: `model.pooled_states` of each prompt."""
        program = _compiled(self.model, "pooled", self.mesh)
        states = []
        for rows, batch in self._batches(None, "pooled states"):
            states.append(np.asarray(program(self.params, *self._on_mesh(batch)))[:rows])
        return np.concatenate(states).astype(np.float32)

    # --- batches ----------------------------------------------------------------------------

    def _batches(self, targets: Sequence[Sequence[int]] | None, description: str
                 ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(real rows, converted batch of `batch_size` rows) over the pool, in order; `targets`
        are answer ids (None: empty answers, for passes that read only the prompt: converted
        once and kept, since every decoding pass reads them)."""
        if targets is None:
            if self._prompt_batches is None:  # the bar of the pass that reads them: the decoding
                self._prompt_batches = list(self._converted(None, "converting prompts"))
            yield from tqdm(self._prompt_batches, desc=description, unit="batch",
                            disable=not self.progress, leave=False)
            return
        yield from self._converted(targets, description)

    def _converted(self, targets: Sequence[Sequence[int]] | None, description: str
                   ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        empty = np.zeros((0,), np.int32)

        def examples():
            for index, inputs in enumerate(self.inputs):
                answer = empty if targets is None else np.asarray(targets[index], np.int32)
                yield {"inputs": inputs.astype(np.int32), "targets": answer}

        spec = {name: tf.TensorSpec([None], tf.int32) for name in TEXT_FEATURES}
        dataset = tf.data.Dataset.from_generator(examples, output_signature=spec)
        dataset = seqio.preprocessors.append_eos_after_trim(
            dataset, output_features=self.features, sequence_length=self.feature_lengths)
        converted = self.model.feature_converter(self.vocabulary)(dataset, self.feature_lengths)
        rows: list[dict] = []
        for features in tqdm(numpy_iterator(converted), desc=description, unit="prompt",
                             total=len(self), disable=not self.progress, leave=False):
            rows.append(features)
            if len(rows) == self.batch_size:
                yield len(rows), _stack(rows, self.batch_size)
                rows = []
        if rows:
            yield len(rows), _stack(rows, self.batch_size)

    def _on_mesh(self, batch: Mapping[str, np.ndarray]) -> tuple[dict[str, jax.Array]]:
        """The batch's numeric features split over the mesh's data x fsdp axes."""
        rows = placement.padded_size(self.batch_size, self.mesh)
        sharding = partitioning.batch_sharding(self.mesh)
        return ({name: placement.global_array(placement.pad_rows(np.asarray(value), rows),
                                              sharding)
                 for name, value in batch.items() if np.asarray(value).dtype.kind in "biuf"},)


def _stack(rows: list[dict], batch_size: int) -> dict[str, np.ndarray]:
    rows = rows + [rows[-1]] * (batch_size - len(rows))
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def token_entropies(model: BaseModel, params: Params, batch: Mapping[str, Any]) -> jax.Array:
    """[b, l] float32: the entropy (nats) of the next-token distribution at every position."""
    log_probs = jax.nn.log_softmax(model.logits(params, batch).astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


_PROGRAMS: dict[str, Callable] = {
    "entropies": token_entropies,
    "pooled": lambda model, params, batch: model.pooled_states(params, batch),
}


# (model, pass, mesh) -> jitted program. Bounded: each entry keeps its model alive.
@functools.lru_cache(maxsize=16)
def _compiled(model: BaseModel, name: str, mesh: Mesh) -> Callable:
    # Replicated results: every process reads all of them (one number or vector per row).
    return partitioning.on_mesh(mesh, jax.jit(functools.partial(_PROGRAMS[name], model),
                                              out_shardings=placement.replicated(mesh)))
