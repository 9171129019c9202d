"""A preference run's data: pairs -> rows with the frozen reference's scores -> endless batches.

`prepare` reads the pairs file (`preference.pairs.read_pairs`; a bad line raises its
`PairFileError`), turns the pairs into rows through the model's own feature converter
(`preference.batches.pair_batches`: a pair that does not fit whole is dropped and counted, never
cut) and attaches to each pair the reference's summed answer log-probabilities.

The reference is scored once per run directory, with the reference weights read from their
checkpoint (never the policy being trained: a resumed run reads them again, not its restored
state) and placed on the run's mesh, and the scores are stored in `MODEL_DIR/reference_logps.npz`
with a fingerprint of what they depend on: the kept rows' tokens (so the pairs, the vocabulary
and the feature lengths), the reference checkpoint's path and the model's dtypes. A resumed run
re-reads them; a file whose fingerprint differs (other pairs, lengths or reference) is computed
again and replaced, with a warning saying so. The fingerprint names the reference by its path:
a checkpoint rewritten in place under the same path is not noticed.

`PairBatchIterator` has `BatchIterator`'s contract (`trainer/data.py`): endless, deterministic
numpy batches and a `position` (batches produced), so a checkpoint's position resumes exactly.
The kept rows are read epoch after epoch, each epoch in its own seeded order (`DataConfig.seed`,
`DataConfig.shuffle`), and batches are cut from that stream as tf.data's repeat-then-batch does:
every batch holds `batch_size` real pairs (no padding rows), every pair is seen once per epoch,
and a batch may straddle two epochs. Batch `k` is a function of `k` alone, so resuming skips
nothing and reads nothing twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import seqio
from jax.sharding import NamedSharding, PartitionSpec

from arch_compare import partitioning
from arch_compare.models.loading import load_params
from arch_compare.models.model import BaseModel
from arch_compare.preference.batches import SIDES, BatchSummary, PairBatches, pair_batches
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.preference.pairs import read_pairs
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.placement import Placement
from arch_compare.trainer.preference_steps import reference_logps

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.npz"
REFERENCE_KEYS = ("reference_chosen_logps", "reference_rejected_logps")


def check_fields(config: Any) -> None:
    """A `TrainConfig`'s preference fields: `preference` needs `preference_pairs` (and the other
    way round), `initial_checkpoint_path` and unpacked data."""
    if config.preference is None:
        for name in ("preference_pairs", "preference_reference"):
            if getattr(config, name):
                raise ValueError(f"TrainConfig.{name} is set but TrainConfig.preference is "
                                 f"None: set preference (e.g. PreferenceConfig('dpo')) to train "
                                 f"on pairs")
        return
    if not config.preference_pairs:
        raise ValueError("TrainConfig.preference needs preference_pairs: the JSONL file of "
                         "{prompt, chosen, rejected} pairs to train on")
    if not config.initial_checkpoint_path:
        raise ValueError("TrainConfig.preference needs initial_checkpoint_path: the weights the "
                         "policy starts from (and, by default, the frozen reference)")
    if config.data.pack:
        raise ValueError("TrainConfig.data.pack must be False with preference: each answer of a "
                         "pair is scored in a row of its own")
    if config.data.trim_padding:
        raise ValueError("TrainConfig.data.trim_padding must be False with preference: pair "
                         "batches are built at the feature lengths, not read from a task")


def run_record(config: PreferenceConfig, pairs_path: str, reference_path: str) -> dict:
    """The preference settings MODEL_DIR/execution.json records (a resumed run must match)."""
    return {**dataclasses.asdict(config), "pairs": str(Path(pairs_path).absolute()),
            "reference": str(Path(reference_path).absolute())}


def check_batch_split(batch_size: int, where: Placement) -> None:
    """The memory check placed a step of 2 x batch_size sequences; each side's rows (and the
    microbatches they are cut into) must split over the mesh too."""
    microbatches = where.execution.microbatches  # divides batch_size (TrainConfig checks)
    try:
        partitioning.global_batch_size_ok(batch_size // microbatches, where.mesh)
    except ValueError as error:
        raise ValueError(f"TrainConfig.data.batch_size={batch_size} pairs per step in "
                         f"{microbatches} microbatch(es): per microbatch, {error}") from None


@dataclasses.dataclass(frozen=True)
class PairRows:
    """Every kept pair as one row: each side's features [n, l], the reference's scores [n]."""

    chosen: dict[str, np.ndarray]
    rejected: dict[str, np.ndarray]
    reference_chosen_logps: np.ndarray  # [n] float32
    reference_rejected_logps: np.ndarray

    @property
    def count(self) -> int:
        return len(self.reference_chosen_logps)


def _real_rows(batches: PairBatches, side: str) -> dict[str, np.ndarray]:
    """One side's real rows of every batch, in pair order ([n, l] per feature)."""
    names = batches.batches[0][side]
    return {name: np.concatenate([batch[side][name][:rows] for batch, rows in
                                  zip(batches.batches, batches.rows)]) for name in names}


def fingerprint(chosen: dict[str, np.ndarray], rejected: dict[str, np.ndarray],
                reference_path: str, model: BaseModel) -> str:
    """What the reference's scores depend on: the rows' features, the reference, the dtypes."""
    digest = hashlib.sha256(json.dumps({
        "reference": str(Path(reference_path).absolute()), "dtype": str(model.config.dtype),
        "param_dtype": str(model.config.param_dtype)}, sort_keys=True).encode())
    for side, rows in zip(SIDES, (chosen, rejected)):
        for name in sorted(rows):
            value = np.ascontiguousarray(rows[name])
            digest.update(f"{side}/{name}/{value.dtype}/{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def score_reference(model: BaseModel, params: Any, batches: PairBatches, where: Placement
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(chosen [n], rejected [n]) summed answer log-probabilities of the real rows under
    `params`, batch by batch on the run's mesh (padding rows scored and dropped)."""
    shardings = jax.tree.map(lambda leaf: leaf.sharding, params)
    replicated = NamedSharding(where.mesh, PartitionSpec())  # every process reads the scores
    score = partitioning.on_mesh(where.mesh, jax.jit(
        lambda p, batch: reference_logps(model, p, batch),
        in_shardings=(shardings, where.batch_sharding), out_shardings=(replicated, replicated)))
    chosen, rejected = [], []
    for batch, rows in zip(batches.batches, batches.rows):
        placed = jax.tree.map(lambda v: partitioning.global_array(v, where.batch_sharding), batch)
        scores = jax.device_get(score(params, placed))
        chosen.append(np.asarray(scores[0][:rows], np.float32))
        rejected.append(np.asarray(scores[1][:rows], np.float32))
    return np.concatenate(chosen), np.concatenate(rejected)


def _read_stored(path: Path, expected: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.exists():
        return None
    with np.load(path) as stored:
        found = str(stored["fingerprint"])
        if found == expected:
            log.info("%s: the reference's scores of these pairs, read again", path)
            return tuple(np.asarray(stored[key], np.float32) for key in REFERENCE_KEYS)
    log.warning("%s was computed for other pairs, feature lengths, reference or dtypes "
                "(fingerprint %s..., now %s...); scoring the reference again", path, found[:12],
                expected[:12])
    return None


def _store(path: Path, expected: str, chosen: np.ndarray, rejected: np.ndarray) -> None:
    if jax.process_index() != 0:
        return
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as out:  # a file object: np.savez would append .npz to a name
        np.savez(out, fingerprint=np.asarray(expected), reference_chosen_logps=chosen,
                 reference_rejected_logps=rejected)
    os.replace(partial, path)


def reference_scores(model: BaseModel, reference_path: str, batches: PairBatches,
                     where: Placement, model_dir: str) -> PairRows:
    """The kept pairs' rows with the reference's scores: stored ones when their fingerprint
    matches, else computed with the weights of `reference_path` (read for this only, sharded
    like the run's parameters, dropped afterwards) and stored. `model` is the run's model
    without adapters."""
    chosen, rejected = (_real_rows(batches, side) for side in SIDES)
    expected = fingerprint(chosen, rejected, reference_path, model)
    path = Path(model_dir) / REFERENCE_FILE
    scores = _read_stored(path, expected)
    if scores is None:
        shardings = partitioning.param_shardings(model.logical_axes(), model.abstract_params(),
                                                 where.mesh)
        params = load_params(model, reference_path, shardings=shardings)
        scores = score_reference(model, params, batches, where)
        del params
        _store(path, expected, *scores)
    return PairRows(chosen, rejected, *scores)


def prepare(model: BaseModel, vocabulary: seqio.Vocabulary, pairs_path: str,
            reference_path: str, data: DataConfig, where: Placement, model_dir: str
            ) -> tuple[PairRows, BatchSummary]:
    """The rows a preference run trains on (see the module docstring), and how they were made."""
    pairs = read_pairs(pairs_path)
    batches = pair_batches(model, vocabulary, pairs, feature_lengths=data.feature_lengths,
                           batch_size=data.batch_size)
    summary = batches.summary
    if not summary.kept:
        raise ValueError(f"TrainConfig.preference_pairs={pairs_path}: no pair fits the feature "
                         f"lengths whole ({summary.describe()})")
    log.info("%s: %s", pairs_path, summary.describe())
    return reference_scores(model, reference_path, batches, where, model_dir), summary


class PairBatchIterator:
    """Endless pair batches `{"chosen", "rejected", "reference_chosen_logps",
    "reference_rejected_logps"}` (numpy); `position` batches have been produced."""

    stats = ()  # BatchIterator's per-task statistics: a pairs file has none
    widths = None  # nor are its batches trimmed

    def __init__(self, rows: PairRows, batch_size: int, seed: int, shuffle: bool,
                 position: int = 0):
        self.rows, self.batch_size = rows, batch_size
        self.seed, self.shuffle = seed, shuffle
        self.position = position
        self._orders: dict[int, np.ndarray] = {}  # epoch -> its order (the latest few)

    def _order(self, epoch: int) -> np.ndarray:
        """The rows of `epoch` in order: a seeded permutation per epoch (identity unshuffled)."""
        if epoch not in self._orders:
            n = self.rows.count
            if len(self._orders) > 2:  # a batch reads at most two epochs
                self._orders.pop(min(self._orders))
            self._orders[epoch] = (np.random.default_rng([self.seed, epoch]).permutation(n)
                                   if self.shuffle else np.arange(n))
        return self._orders[epoch]

    def indices(self, position: int) -> np.ndarray:
        """[batch_size] the rows of batch `position` (0-based) in the epoch-shuffled stream."""
        n = self.rows.count
        stream = np.arange(position * self.batch_size, (position + 1) * self.batch_size)
        return np.array([self._order(int(i // n))[i % n] for i in stream])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        take = self.indices(self.position)
        self.position += 1
        rows = self.rows
        return {"chosen": {name: value[take] for name, value in rows.chosen.items()},
                "rejected": {name: value[take] for name, value in rows.rejected.items()},
                "reference_chosen_logps": rows.reference_chosen_logps[take],  # [b]
                "reference_rejected_logps": rows.reference_rejected_logps[take]}

    def close(self) -> None:
        """Nothing to release (BatchIterator's interface)."""
