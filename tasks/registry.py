"""Text-level task registry, bound to a vocabulary on demand as a seqio Task or Mixture.

A task is registered once, as text: its splits yield records with `inputs` and `targets` strings
(plus plain extra fields such as ids), and it names its metrics. A seqio Task fixes its
vocabulary, but the study feeds one task to models with different vocabularies, so
`seqio_task(name, vocabulary)` registers `"<name>#<vocabulary fingerprint>"` with seqio the first
time a vocabulary asks for it and returns the same Task afterwards. The text, and therefore every
supervised target, is identical for every architecture; only the tokens differ.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
from typing import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

KINDS = ("imitation", "pretraining", "evaluation", "prompts")
TEXT_FEATURES = ("inputs", "targets")
RecordLoader = Callable[[], Sequence[Mapping]]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task as text. `splits` maps split name -> a loader of its records (called lazily, once)."""

    name: str
    kind: str
    description: str
    source: str  # where the records come from: a path, a package, a generator
    splits: Mapping[str, RecordLoader]
    metric_fns: tuple[Callable, ...] = ()  # seqio convention: (targets, predictions | scores)
    postprocess_fn: Callable | None = None  # seqio convention: (text, example=, is_target=)
    extra_features: tuple[str, ...] = ()  # record fields beyond inputs / targets
    # Prompts tasks: whether an answer to a record is correct, (record, answer text) -> bool;
    # what active selection's `student_first` asks of the base model's answers.
    check_fn: Callable[[Mapping, str], bool] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.splits:
            raise ValueError(f"task {self.name!r}: needs at least one split")
        object.__setattr__(self, "metric_fns", tuple(self.metric_fns))
        object.__setattr__(self, "extra_features", tuple(self.extra_features))

    @property
    def features(self) -> tuple[str, ...]:
        return TEXT_FEATURES + self.extra_features


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """Tasks sampled at fixed rates (for example imitation data with some pre-training text)."""

    name: str
    description: str
    rates: tuple[tuple[str, float], ...]

    def __post_init__(self):
        if not self.rates or any(rate <= 0 for _, rate in self.rates):
            raise ValueError(f"mixture {self.name!r}: needs tasks with positive rates")


TASKS: dict[str, TaskSpec] = {}
MIXTURES: dict[str, MixtureSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    if not replace and (spec.name in TASKS or spec.name in MIXTURES):
        raise ValueError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    _records.cache_clear()
    return spec


def register_mixture(spec: MixtureSpec, *, replace: bool = False) -> MixtureSpec:
    if not replace and (spec.name in TASKS or spec.name in MIXTURES):
        raise ValueError(f"mixture {spec.name!r} is already registered")
    for task, _ in spec.rates:
        get_task(task)
    MIXTURES[spec.name] = spec
    return spec


def _unknown(name: str) -> KeyError:
    known = [*TASKS, *MIXTURES]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return KeyError(f"unknown task or mixture {name!r}{hint} (arch-compare tasks lists them)")


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise _unknown(name)
    return TASKS[name]


def get_mixture(name: str) -> MixtureSpec:
    if name not in MIXTURES:
        raise _unknown(name)
    return MIXTURES[name]


def checker(name: str) -> Callable[[Mapping, str], bool]:
    """Task `name`'s answer checker, (record, answer text) -> True when the answer is correct."""
    check_fn = get_task(name).check_fn
    if check_fn is None:
        having = [task for task, spec in TASKS.items() if spec.check_fn is not None]
        raise ValueError(f"task {name!r} has no answer checker (TaskSpec.check_fn), which "
                         f"deciding whether an answer fails needs; tasks with one: "
                         f"{', '.join(having) or 'none'}")
    return check_fn


def records(name: str, split: str) -> tuple[Mapping, ...]:
    """The text records of one split of a task, loaded once and validated."""
    spec = get_task(name)
    if split not in spec.splits:
        raise KeyError(f"task {name!r} has no split {split!r}; splits: {', '.join(spec.splits)}")
    return _records(name, split)


@functools.cache
def _records(name: str, split: str) -> tuple[Mapping, ...]:
    spec = TASKS[name]
    loaded = tuple(spec.splits[split]())
    for index, record in enumerate(loaded):
        missing = [feature for feature in spec.features if feature not in record]
        if missing:
            raise ValueError(f"task {name!r} split {split!r} record {index}: missing "
                             f"{', '.join(missing)}")
    return loaded


def as_text(value) -> str:
    """A record field as text: seqio hands post-processors bytes, plain records hold str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def vocabulary_fingerprint(vocabulary: seqio.Vocabulary) -> str:
    """A short name for a vocabulary that is equal for equal vocabularies."""
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        content = vocabulary.sp_model + str(vocabulary.extra_ids).encode()
        return hashlib.sha256(content).hexdigest()[:12]
    return hashlib.sha256(str(hash(vocabulary)).encode()).hexdigest()[:12]


def _columns(spec: TaskSpec, rows: Sequence[Mapping]) -> dict[str, list]:
    return {feature: [row[feature] for row in rows] for feature in spec.features}


def _dataset_fn(name: str):
    def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None):
        del shuffle_files, seed  # records are read in file order; shuffling is the trainer's
        spec = get_task(name)
        rows = records(name, split)
        if not rows:
            signature = {f: tf.TensorSpec([], tf.string) for f in spec.features}
            return tf.data.Dataset.from_generator(lambda: iter(()), output_signature=signature)
        return tf.data.Dataset.from_tensor_slices(_columns(spec, rows))
    return dataset_fn


def seqio_name(name: str, vocabulary: seqio.Vocabulary) -> str:
    return f"{name}#{vocabulary_fingerprint(vocabulary)}"


def seqio_task(name: str, vocabulary: seqio.Vocabulary) -> seqio.Task:
    """Task `name` tokenized with `vocabulary` (EOS appended to inputs and targets)."""
    spec = get_task(name)
    registered = seqio_name(name, vocabulary)
    if registered in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(registered)
    features = {feature: seqio.Feature(vocabulary, add_eos=True) for feature in TEXT_FEATURES}
    return seqio.TaskRegistry.add(
        registered,
        source=seqio.FunctionDataSource(_dataset_fn(name), splits=tuple(spec.splits)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        output_features=features,
        postprocess_fn=spec.postprocess_fn,
        metric_fns=list(spec.metric_fns))


def seqio_mixture(name: str, vocabulary: seqio.Vocabulary) -> seqio.Mixture:
    spec = get_mixture(name)
    registered = seqio_name(name, vocabulary)
    if registered in seqio.MixtureRegistry.names():
        return seqio.MixtureRegistry.get(registered)
    tasks = [(seqio_task(task, vocabulary).name, rate) for task, rate in spec.rates]
    return seqio.MixtureRegistry.add(registered, tasks)


def seqio_provider(name: str, vocabulary: seqio.Vocabulary) -> seqio.DatasetProviderBase:
    """The seqio Task or Mixture for a registered task or mixture name."""
    return seqio_mixture(name, vocabulary) if name in MIXTURES else seqio_task(name, vocabulary)
