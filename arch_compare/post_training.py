"""Post-training after imitation: a study cell's fine-tuned model trained further on its own
answers, judged or checked (`StudyConfig.post_training`).

Each entry is a run of its own beside the cell's `full` run, started from that run's weights:

1. the student (the full run) answers each prompt of `prompts` (a registry task with `prompt`
   records) `samples` times at `temperature` (`preference/sampling.py`);
2. its answers are compared: by the task's checker (`compare='checks'`: for Cypher, executing the
   query against the gold's result), by the target as judge, asked in both orders
   (`compare='judge'`), or the target critiques and revises the first answer and its revision is
   preferred (`compare='revise'`, DPO only); the target is asked through the collection cache;
3. `kind='dpo'`: one pair of a preferred and a rejected answer per prompt, trained with
   `objective` (DPO or IPO, `beta`, `label_smoothing`) against the full run as the frozen
   reference; `kind='rejection_sampling'`: the best answer per prompt (the first that passes,
   or the judge's most-winning one) as imitation data, fine-tuned like any imitation run;
4. evaluated like every run, and compared with its cell's full run and its base.

Steps follow from what was kept, `max(1, ceil(epochs * kept / training.batch_size))` (a DPO
batch holds `batch_size` pairs, so twice as many sequences); the plan prices the most there can
be (one per prompt). Only configuration lives here (no JAX).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from arch_compare.configs import from_fields
from arch_compare.recipes import CellSelection, check_run_label

POST_TRAINING_KINDS = ("dpo", "rejection_sampling")
COMPARISONS = ("checks", "judge", "revise")
OBJECTIVES = ("dpo", "ipo", "robust")  # preference/objective.py's losses, without importing JAX


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


@dataclasses.dataclass(frozen=True)
class PostTraining(CellSelection):
    """One post-training run per selected cell (`CellSelection`)."""

    name: str
    kind: str
    prompts: str  # a registry task whose records carry a `prompt` (and what its checker reads)
    compare: str = "checks"
    split: str = "train"
    limit: int | None = None  # the first `limit` prompts (None: all)
    samples: int = 4
    temperature: float = 1.0
    seed: int = 0
    epochs: float = 1.0
    learning_rate: float | None = None  # None: the study's training learning rate
    objective: str = "dpo"  # dpo only: dpo, ipo or robust (PreferenceConfig.loss)
    beta: float = 0.1  # dpo only
    label_smoothing: float = 0.0  # dpo only (conservative DPO)

    def __post_init__(self):
        super().__post_init__()
        where = f"post_training {self.name!r}"
        check_run_label(self.name, "post_training")
        for field, allowed in (("kind", POST_TRAINING_KINDS), ("compare", COMPARISONS),
                               ("objective", OBJECTIVES)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{where}: {field} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, field)!r}")
        if not isinstance(self.prompts, str) or not self.prompts:
            raise ValueError(f"{where}: prompts must name a task, got {self.prompts!r}")
        if self.compare == "revise" and self.kind != "dpo":
            raise ValueError(f"{where}: compare 'revise' makes pairs (the target's revision over "
                             f"the answer), so it needs kind 'dpo'")
        # Comparing needs two answers per prompt; a revision needs one.
        for field, minimum in (("samples", 1 if self.compare == "revise" else 2), ("seed", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{where}: {field} must be an integer >= {minimum}, got "
                                 f"{value!r}")
        if self.limit is not None and (isinstance(self.limit, bool)
                                       or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"{where}: limit must be a positive integer or None, got "
                             f"{self.limit!r}")
        if not _number(self.temperature) or self.temperature <= 0:
            raise ValueError(f"{where}: temperature must be > 0 (greedy decoding would give "
                             f"every sample the same answer), got {self.temperature!r}")
        if not _number(self.epochs) or self.epochs <= 0:
            raise ValueError(f"{where}: epochs must be positive, got {self.epochs!r}")
        if self.learning_rate is not None and not (_number(self.learning_rate)
                                                   and self.learning_rate > 0):
            raise ValueError(f"{where}: learning_rate must be positive or None, got "
                             f"{self.learning_rate!r}")
        if not _number(self.beta) or self.beta <= 0:
            raise ValueError(f"{where}: beta must be positive, got {self.beta!r}")
        if not _number(self.label_smoothing) or not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"{where}: label_smoothing must be in [0, 0.5), got "
                             f"{self.label_smoothing!r}")
        if self.kind != "dpo" and (self.objective, self.beta, self.label_smoothing) != (
                "dpo", 0.1, 0.0):
            raise ValueError(f"{where}: objective, beta and label_smoothing belong to kind "
                             f"'dpo', not {self.kind!r}")

    @property
    def rows_per_example(self) -> int:
        """Sequences a training example holds: a pair's two, or one answer."""
        return 2 if self.kind == "dpo" else 1

    def steps(self, kept: int, batch_size: int) -> int:
        """Training steps over `kept` pairs or examples."""
        return max(1, math.ceil(self.epochs * kept / batch_size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def coerce_post_training(values: Any, where: str = "post_training"
                         ) -> tuple[PostTraining, ...]:
    """Entries from a list of PostTraining or dicts of its fields; names must be distinct."""
    entries = tuple(from_fields(value, PostTraining, f"{where}[{index}]")
                    if isinstance(value, Mapping) else value
                    for index, value in enumerate(values or ()))
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: names repeat: {names}")
    return entries
