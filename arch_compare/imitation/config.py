"""What an imitation study is: frozen, validated descriptions, built from gin in experiment files.

Gin files write nested parts as dicts (`{'preset': 'llama-tiny', ...}`); each dataclass turns
its dict-valued fields into the right type in `__post_init__`, so a typo in a key fails at
parse time with the field's name, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from arch_compare import optim
from arch_compare.configs import from_fields as _coerce
from arch_compare.execution import ExecutionConfig
from arch_compare.imitation import study_cells
from arch_compare.imitation.spending import BudgetSettings, CollectionSettings
from arch_compare.imitation.targets import GenerationSettings
from arch_compare.models.zoo import get_preset
from arch_compare.post_training import PostTraining, coerce_post_training
from arch_compare.recipes import Recipe, coerce_recipes

EVALUATION_KINDS = ("capability", "style")
# 64 KiB of text: far beyond any feature length the presets train with (a 2,048-token sequence
# is about 8 KiB of English), so only a broken or pasted-in record reaches it.
DEFAULT_MAX_RECORD_CHARS = 65536


def _freeze(instance, name: str, value) -> None:
    object.__setattr__(instance, name, value)


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """Pre-train a base model from scratch here (tiny studies): `steps` on `task`."""

    task: str
    steps: int
    batch_size: int = 16
    feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 8, "targets": 64})
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    seed: int = 0
    trim_padding: bool = False  # DataConfig.trim_padding: steps over the text's longest example

    def __post_init__(self):
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"Pretraining on {self.task!r}: steps and batch_size must be positive")
        if not isinstance(self.trim_padding, bool):
            raise ValueError(f"Pretraining on {self.task!r}: trim_padding must be True or False, "
                             f"got {self.trim_padding!r}")
        _freeze(self, "feature_lengths", dict(self.feature_lengths))


@dataclasses.dataclass(frozen=True)
class StudyModel:
    """A base model of the study: a preset (with overrides), its vocabulary and where its
    weights come from — a checkpoint (HF directory, native checkpoint or training directory)
    or pre-training here."""

    preset: str
    vocabulary: str
    base_checkpoint: str | None = None
    pretraining: Pretraining | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    name: str | None = None  # how tables and plots call it; default: the preset
    # This model's changes to the study's execution settings, e.g. {'mesh': {'fsdp': 16}}.
    execution: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        where = f"model {self.name or self.preset!r}"
        get_preset(self.preset, dict(self.overrides))  # unknown presets / fields fail here
        _freeze(self, "execution", dict(self.execution or {}))
        ExecutionConfig().override(self.execution, f"{where}.execution")  # keys checked here
        _freeze(self, "pretraining", _coerce(self.pretraining, Pretraining, f"{where}.pretraining"))
        _freeze(self, "overrides", dict(self.overrides))
        if (self.base_checkpoint is None) == (self.pretraining is None):
            raise ValueError(f"{where}: give exactly one of base_checkpoint and pretraining")
        if self.name is None:
            _freeze(self, "name", self.preset)

    @property
    def config(self):
        return get_preset(self.preset, dict(self.overrides))


# How a source chooses which prompts of its pool to pay the target for (`selection.py`).
SELECTION_STRATEGIES = ("random", "uncertainty", "diversity", "student_first")
UNCERTAINTY_MEASURES = ("entropy", "disagreement")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Active selection: each strategy picks, from the first `pool` prompts of the source's task
    (None: all of them), the prompts whose answers are bought, `amount` of them for each of the
    source's amounts (a larger amount keeps the smaller one's prompts). `random` is the order the
    task gives (no selection: today's behaviour); `uncertainty` asks first about the prompts the
    base model is least sure of (`measure`: mean token entropy of its greedy answer, or
    disagreement between `samples` of its sampled answers); `diversity` is k-center greedy over
    the base model's mean-pooled hidden states of the prompts; `student_first` lets the base model
    answer first and buys only the prompts it fails (by the prompts task's checker)."""

    strategies: tuple[str, ...] = ("random",)
    pool: int | None = None
    measure: str = "entropy"
    samples: int = 4
    seed: int = 0
    # The models (by name) that try the strategies other than random; None: every model of the
    # source. Each (model, strategy, amount) is a run of its own, so this is where cost is cut.
    models: tuple[str, ...] | None = None

    def __post_init__(self):
        strategies = tuple(self.strategies)
        _freeze(self, "strategies", strategies)
        if self.models is not None:
            _freeze(self, "models", tuple(self.models))
        unknown = [name for name in strategies if name not in SELECTION_STRATEGIES]
        if not strategies or unknown or len(set(strategies)) != len(strategies):
            raise ValueError(f"selection.strategies: expected distinct names from "
                             f"{', '.join(SELECTION_STRATEGIES)}, got {list(self.strategies)}")
        if self.pool is not None and (isinstance(self.pool, bool) or not isinstance(self.pool, int)
                                      or self.pool <= 0):
            raise ValueError(f"selection.pool must be a positive integer or None, got "
                             f"{self.pool!r}")
        if self.measure not in UNCERTAINTY_MEASURES:
            raise ValueError(f"selection.measure must be one of {UNCERTAINTY_MEASURES}, got "
                             f"{self.measure!r}")
        if self.samples < 2:
            raise ValueError(f"selection.samples must be at least 2, got {self.samples}")

    @property
    def active(self) -> tuple[str, ...]:
        """The strategies that need the base model (every one but `random`)."""
        return tuple(name for name in self.strategies if name != "random")

    def strategies_for(self, model_name: str) -> tuple[str, ...]:
        return tuple(name for name in self.strategies if name == "random"
                     or self.models is None or model_name in self.models)


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Imitation data: the target's answers to a prompts task, or a pre-collected file, used in
    increasing amounts (examples, first N in order, so larger amounts contain smaller ones)."""

    name: str
    amounts: tuple[int, ...]
    prompts_task: str | None = None
    file: str | None = None
    format: str = "openai_chat"
    # Records that do not parse or lack a field are skipped and counted (study output, report)
    # instead of stopping the study before its first step.
    skip_bad: bool = False
    # The most characters of text one example may hold (its history and answer), checked before
    # the first step; None: no limit.
    max_record_chars: int | None = DEFAULT_MAX_RECORD_CHARS
    selection: Selection = Selection()
    # The study models this source trains (by name); None: every model.
    models: tuple[str, ...] | None = None

    def __post_init__(self):
        _freeze(self, "selection", _coerce(self.selection, Selection,
                                           f"data source {self.name!r}.selection"))
        if self.models is not None:
            _freeze(self, "models", tuple(self.models))
        if self.file is not None and self.selection.active:
            raise ValueError(f"data source {self.name!r}: selection strategies "
                             f"{list(self.selection.active)} choose prompts to ask the target; "
                             f"a pre-collected file has none to choose")
        if (self.selection.pool is not None and self.amounts
                and max(int(a) for a in self.amounts) > self.selection.pool):
            raise ValueError(f"data source {self.name!r}: the largest amount "
                             f"{max(self.amounts)} exceeds the selection pool "
                             f"{self.selection.pool}")
        if not isinstance(self.skip_bad, bool):
            raise ValueError(f"data source {self.name!r}: skip_bad must be True or False, got "
                             f"{self.skip_bad!r}")
        limit = self.max_record_chars
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit <= 0):
            raise ValueError(f"data source {self.name!r}: max_record_chars must be a positive "
                             f"integer or None, got {limit!r}")
        amounts = tuple(int(a) for a in self.amounts)
        _freeze(self, "amounts", amounts)
        if not amounts or any(a <= 0 for a in amounts) or list(amounts) != sorted(set(amounts)):
            raise ValueError(f"data source {self.name!r}: amounts must be positive and "
                             f"increasing, got {list(self.amounts)}")
        if (self.prompts_task is None) == (self.file is None):
            raise ValueError(f"data source {self.name!r}: give exactly one of prompts_task (the "
                             f"target answers them) and file (pre-collected)")
        if "/" in self.name or not self.name:
            raise ValueError(f"data source name {self.name!r}: must be non-empty without '/'")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A task every model and the target are evaluated on; `headline` metrics get `kind`
    (capability or style), the task's other metrics are recorded as "other"."""

    task: str
    kind: str = "capability"
    split: str = "validation"
    headline: tuple[str, ...] = ()  # empty: every metric of the task
    max_examples: int | None = None

    def __post_init__(self):
        if self.kind not in EVALUATION_KINDS:
            raise ValueError(f"evaluation {self.task!r}: kind must be one of "
                             f"{EVALUATION_KINDS}, got {self.kind!r}")
        _freeze(self, "headline", tuple(self.headline))

    def kind_of(self, metric: str) -> str:
        return self.kind if not self.headline or metric in self.headline else "other"


@dataclasses.dataclass(frozen=True)
class Training:
    """One training setup for every imitation run (the fairness rule): steps follow from the
    amount. A recipe (`StudyConfig.recipes`) changes how a cell fine-tunes, as a run of its own
    beside the cell's `full` run, with these same settings."""

    feature_lengths: Mapping[str, int]
    batch_size: int
    optimizer: optim.OptimizerConfig
    epochs: float = 1.0
    min_steps: int = 1
    seed: int = 0
    # DataConfig.trim_padding: each run's steps over its data's longest example, not the whole
    # feature lengths (same examples and losses; less padding computed).
    trim_padding: bool = False

    def __post_init__(self):
        _freeze(self, "feature_lengths", dict(self.feature_lengths))
        if isinstance(self.optimizer, Mapping):  # {'name': ..., 'schedule': {...}, ...}
            fields = dict(self.optimizer)
            fields["schedule"] = _coerce(fields.get("schedule"), optim.ScheduleConfig,
                                         "training.optimizer.schedule")
            _freeze(self, "optimizer", _coerce(fields, optim.OptimizerConfig,
                                               "training.optimizer"))
        if self.batch_size <= 0 or self.epochs <= 0 or self.min_steps <= 0:
            raise ValueError("training: batch_size, epochs and min_steps must be positive")
        if not isinstance(self.trim_padding, bool):
            raise ValueError(f"training.trim_padding must be True or False, got "
                             f"{self.trim_padding!r}")

    def steps(self, examples: int) -> int:
        return max(self.min_steps, math.ceil(self.epochs * examples / self.batch_size))

    def optimizer_for(self, steps: int) -> optim.OptimizerConfig:
        """The optimizer with its schedule ending at this run's last step."""
        schedule = dataclasses.replace(self.optimizer.schedule, total_steps=steps,
                                       warmup_steps=min(self.optimizer.schedule.warmup_steps,
                                                        steps - 1))
        return dataclasses.replace(self.optimizer, schedule=schedule)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    name: str
    directory: str
    target: Mapping[str, Any]  # a target spec (imitation.targets.make_target)
    models: tuple[StudyModel, ...]
    sources: tuple[DataSource, ...]
    evaluations: tuple[Evaluation, ...]
    training: Training
    generation: GenerationSettings = GenerationSettings()  # how the target answers
    collection: CollectionSettings = CollectionSettings()  # how its answers are bought
    decode_max_tokens: int = 64  # how many tokens the models may answer with
    eval_batch_size: int = 16
    eval_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 64, "targets": 64})
    reference_vocabulary: str | None = None  # counts every amount in one tokenizer too
    budget: BudgetSettings = BudgetSettings()
    database: str | None = None  # default: <directory>/results.sqlite
    samples_per_task: int = 4
    notes: tuple[str, ...] = ()
    # How every run is laid out on the devices (models may override parts): not a fairness
    # difference, but recorded with each run and printed by the report.
    execution: ExecutionConfig = ExecutionConfig()
    # Fine-tuning recipes beside `full` (recipes.py), each a run of its own in the random-data
    # cells (model x source x amount) it selects; empty: every cell is fine-tuned one way.
    recipes: tuple[Recipe, ...] = ()
    # Runs after a cell's full run, trained on its own answers judged or checked
    # (post_training.py: DPO, rejection sampling).
    post_training: tuple[PostTraining, ...] = ()

    def __post_init__(self):
        _freeze(self, "target", dict(self.target))
        _freeze(self, "recipes", coerce_recipes(self.recipes, "recipes"))
        _freeze(self, "post_training", coerce_post_training(self.post_training))
        _freeze(self, "models", tuple(_coerce(m, StudyModel, f"models[{i}]")
                                      for i, m in enumerate(self.models)))
        _freeze(self, "sources", tuple(_coerce(s, DataSource, f"sources[{i}]")
                                       for i, s in enumerate(self.sources)))
        _freeze(self, "evaluations", tuple(_coerce(e, Evaluation, f"evaluations[{i}]")
                                           for i, e in enumerate(self.evaluations)))
        _freeze(self, "training", _coerce(self.training, Training, "training"))
        _freeze(self, "generation", _coerce(self.generation, GenerationSettings, "generation"))
        _freeze(self, "collection", _coerce(self.collection, CollectionSettings, "collection"))
        _freeze(self, "budget", _coerce(self.budget, BudgetSettings, "budget"))
        _freeze(self, "execution", ExecutionConfig.coerce(self.execution, "execution"))
        for model in self.models:
            self.execution_for(model)  # a model's override is checked against the study's
        _freeze(self, "eval_feature_lengths", dict(self.eval_feature_lengths))
        _freeze(self, "notes", tuple(self.notes))
        if not self.models or not self.sources or not self.evaluations:
            raise ValueError(f"study {self.name!r}: needs models, sources and evaluations")
        for label, names in (("model", [m.name for m in self.models]),
                             ("data source", [s.name for s in self.sources]),
                             ("evaluation", [e.task for e in self.evaluations])):
            if len(set(names)) != len(names):
                raise ValueError(f"study {self.name!r}: {label} names repeat: {names}")
        model_names = {model.name for model in self.models}
        for source in self.sources:
            for where, names in (("models", source.models),
                                 ("selection.models", source.selection.models)):
                unknown = sorted(set(names or ()) - model_names)
                if unknown:
                    raise ValueError(f"data source {source.name!r}: {where} {unknown} are not in "
                                     f"the study (its models: {sorted(model_names)})")
        if "kind" not in self.target or "name" not in self.target:
            raise ValueError(f"study {self.name!r}: target needs 'kind' and 'name'")
        study_cells.check_recipes(self)
        study_cells.check_post_training(self)

    def sources_for(self, model: StudyModel) -> tuple[DataSource, ...]:
        """The sources that train `model`."""
        return tuple(source for source in self.sources
                     if source.models is None or model.name in source.models)

    def cells(self, recipe: Recipe | None = None) -> list[tuple[str, str, int]]:
        """The (model, source, amount) cells of random-data imitation runs, in plan order;
        with `recipe`, those it applies to."""
        return study_cells.cells(self, recipe)

    def recipes_for(self, model: str, source: str, amount: int) -> tuple[Recipe, ...]:
        """The recipes a cell runs beside its `full` run, in the study's order."""
        return study_cells.recipes_for(self, model, source, amount)

    def post_training_for(self, model: str, source: str,
                          amount: int) -> tuple[PostTraining, ...]:
        """The post-training runs that follow a cell's full run, in the study's order."""
        return tuple(entry for entry in self.post_training
                     if entry.applies_to(model, source, amount))

    def execution_for(self, model: StudyModel) -> ExecutionConfig:
        """The study's execution settings with `model`'s own changes applied."""
        return self.execution.override(model.execution, f"model {model.name!r}.execution")

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        for name in ("recipes", "post_training"):  # a study without keeps its earlier hash
            if not fields[name]:
                del fields[name]
        return fields
