"""Active selection: which prompts of a pool to pay the target for, in buying order.

    result = rank_pool("student_first", records, count=512, model=model, params=params,
                       vocabulary=vocabulary, selection=source.selection,
                       prompts_task=source.prompts_task, feature_lengths=lengths,
                       batch_size=64, max_new_tokens=128)
    bought = [records[i] for i in result.order[:amount]]  # any amount <= 512

Every strategy returns an ORDER: the first n indices are its choice for n answers, so a study's
larger amounts keep the prompts of its smaller ones. The model that chooses is the student: the
base model, or, in a later round (`bought`: what earlier rounds chose), the model trained on the
answers bought so far. Below, "the base model" is that student. Strategies (`STRATEGIES`):

- `random`: the pool's own order (the task's order; no model). Today's behaviour.
- `uncertainty`: the prompts the base model is least sure of first. Measure `entropy`: the mean
  token entropy of its greedy answer (teacher-forced on the prompt and that answer). Measure
  `disagreement`: 1 - the mean pairwise exact agreement of `samples` sampled answers (temperature
  1, whitespace-normalised text); ties, common with few samples, are broken by the mean token
  entropy of those sampled answers, then by pool order.
- `diversity`: k-center greedy over the base model's pooled hidden states of the prompts
  (`model.pooled_states`): the prompt nearest the pool's mean first, then again and again the
  prompt farthest (euclidean) from every prompt chosen so far; ties by pool order.
- `student_first`: the base model answers every prompt greedily; the prompts it FAILS (by the
  prompts task's checker, `registry.checker`) first, in pool order, then the others in pool
  order.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Mapping, Sequence

import numpy as np

from arch_compare.imitation.config import Selection
from arch_compare.imitation.pool_model import PoolModel
from arch_compare_tasks import registry


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """A strategy's buying order over a pool.

    `order`: `count` distinct indices into the pool, the first n being the choice for n answers.
    `scores`: one number per pool prompt (what the strategy ranked by; see `score_name`).
    `description`: one line for logs and the report."""

    strategy: str
    order: tuple[int, ...]
    scores: tuple[float, ...]
    score_name: str
    description: str

    def chosen(self, amount: int) -> tuple[int, ...]:
        """The pool indices bought for `amount` answers."""
        if not 0 <= amount <= len(self.order):
            raise ValueError(f"selection {self.strategy!r} ranked {len(self.order)} prompts; "
                             f"cannot choose {amount}")
        return self.order[:amount]


@dataclasses.dataclass
class _Context:
    """What a strategy may use; the model's view of the pool is built on first use."""

    strategy: str
    records: Sequence[Mapping]
    count: int
    selection: Selection
    prompts_task: str
    make_pool: Callable[[], PoolModel]
    bought: tuple[int, ...] = ()  # pool indices an earlier round already bought
    _pool: PoolModel | None = None

    @property
    def pool(self) -> PoolModel:
        if self._pool is None:
            self._pool = self.make_pool()
        return self._pool


def check_strategies(strategies: Sequence[str], prompts_task: str) -> None:
    """Raise ValueError, naming the strategy or the task, if one of `strategies` is unknown or
    needs what `prompts_task` lacks (an answer checker): for a study's plan, before it runs."""
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown selection strategy {strategy!r}; known: "
                             f"{', '.join(STRATEGIES)}")
        if strategy in NEEDS_CHECKER:
            try:
                registry.checker(prompts_task)
            except ValueError as error:
                raise ValueError(f"selection strategy {strategy!r}: {error}") from None


def rank_pool(strategy: str, records: Sequence[Mapping], *, count: int, model, params,
              vocabulary, selection: Selection, prompts_task: str,
              feature_lengths: Mapping[str, int], batch_size: int, max_new_tokens: int,
              mesh=None, progress: bool = True, reuse: dict | None = None,
              bought: Sequence[int] = ()) -> SelectionResult:
    """The `count` prompts of `records` (the pool: prompt-task records with `id` and `inputs`)
    that `strategy` buys first, in buying order, with its per-prompt scores (see the module
    doc). `model`/`params`/`vocabulary`: the base model (unused by `random`); `feature_lengths`,
    `batch_size`, `max_new_tokens`, `mesh`: how it reads and answers the prompts, as in
    `evaluation.model_predictions`. `reuse`: one dict passed to several calls (strategies)
    over the same pool, model and parameters, so they share the model's work on it (its
    tokenised prompts and greedy answers, which `uncertainty` and `student_first` both read).
    `bought`: pool indices an earlier round bought (with an earlier student): they stay first, in
    their order, and the strategy chooses the other `count - len(bought)` (diversity counts them
    as centres already chosen)."""
    check_strategies((strategy,), prompts_task)  # before any model work
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= len(records):
        raise ValueError(f"selection {strategy!r}: count must be between 1 and the pool's "
                         f"{len(records)} prompts, got {count!r}")

    def make_pool() -> PoolModel:
        key = (id(model), id(params), tuple(str(record["id"]) for record in records),
               tuple(sorted(feature_lengths.items())), batch_size, max_new_tokens, mesh)
        if reuse is not None and key in reuse:
            return reuse[key][-1]
        pool = PoolModel(model, params, vocabulary, [str(record["inputs"]) for record in records],
                         feature_lengths=feature_lengths, batch_size=batch_size,
                         max_new_tokens=max_new_tokens, mesh=mesh, progress=progress)
        if reuse is not None:  # kept with the model and parameters, so their ids stay theirs
            reuse[key] = (model, params, pool)
        return pool

    bought = tuple(int(index) for index in bought)
    if len(set(bought)) != len(bought) or len(bought) > count or any(
            not 0 <= index < len(records) for index in bought):
        raise ValueError(f"selection {strategy!r}: bought must be at most {count} distinct pool "
                         f"indices, got {len(bought)}")
    context = _Context(strategy, records, count, selection, prompts_task, make_pool, bought)
    order, scores, score_name, description = STRATEGIES[strategy](context)
    taken = set(bought)
    order = (bought + tuple(int(index) for index in order if int(index) not in taken))[:count]
    if len(set(order)) != count:
        raise AssertionError(f"selection {strategy!r} ranked {len(set(order))} distinct prompts, "
                             f"expected {count}")
    return SelectionResult(strategy, order, tuple(float(score) for score in scores), score_name,
                           f"{strategy}: {description}")


# --- strategies -------------------------------------------------------------------------------
# Each: context -> (order over the pool, scores [n], score name, description).

def _random(context: _Context):
    n = len(context.records)
    return (list(range(n)), [float(n - index) for index in range(n)],
            "pool size - pool position (earlier is higher)",
            f"the first {context.count:,} of {n:,} pool prompts in the task's order")


def _uncertainty(context: _Context):
    return UNCERTAINTY_MEASURES[context.selection.measure](context)


def _entropy(context: _Context):
    entropies = context.pool.mean_entropies(context.pool.greedy())
    order = _descending(entropies)
    chosen = entropies[order[:context.count]]
    return (order, entropies, "mean token entropy of the greedy answer (nats)",
            f"mean token entropy of the student's greedy answers; bought the "
            f"{context.count:,} highest of {len(entropies):,} "
            f"({chosen.min():.4f}-{chosen.max():.4f} nats; pool median "
            f"{np.median(entropies):.4f})")


def _disagreement(context: _Context):
    pool, selection = context.pool, context.selection
    samples, entropies = [], []
    for sample in range(selection.samples):
        config = lambda batch, sample=sample: pool.decode_config(
            method="sample", temperature=1.0, seed=sample_seed(selection.seed, sample, batch))
        answers = pool.answers(config, f"sampled answers {sample + 1}/{selection.samples}")
        samples.append([normalised(text) for text in answers.texts])
        entropies.append(pool.mean_entropies(answers))
    scores = np.array([disagreement(answers) for answers in zip(*samples)])
    tie_break = np.mean(entropies, axis=0)
    # lexsort: the last key is the primary one; a stable sort keeps pool order among full ties.
    order = np.lexsort((-tie_break, -scores))
    return (order, scores, f"disagreement of {selection.samples} sampled answers",
            f"disagreement between {selection.samples} sampled answers (seed {selection.seed}); "
            f"{int(np.sum(scores > 0)):,} of {len(scores):,} pool prompts had any; bought the "
            f"{context.count:,} highest (ties by the samples' mean token entropy)")


def _diversity(context: _Context):
    states = context.pool.pooled_states()
    order, distances = k_center_greedy(states, context.count, initial=context.bought)
    last = (f"the last of {context.count:,} bought was {distances[order[context.count - 1]]:.4g} "
            f"from its nearest earlier choice" if context.count > 1 else
            "bought the prompt nearest the pool's mean")
    return (order, distances, "euclidean distance to the nearest earlier choice",
            f"k-center greedy over the student's pooled hidden states "
            f"({states.shape[1]} dimensions) of {len(states):,} pool prompts; {last}")


def _student_first(context: _Context):
    check = registry.checker(context.prompts_task)
    answers = context.pool.greedy()
    failed = np.array([not check(record, text)
                       for record, text in zip(context.records, answers.texts)])
    order = np.concatenate([np.flatnonzero(failed), np.flatnonzero(~failed)])
    new = np.ones(len(failed), bool)
    new[list(context.bought)] = False
    wanted = context.count - len(context.bought)
    bought = int(min(wanted, (failed & new).sum()))
    rest = (f"; then {wanted - bought:,} it answered correctly, in pool order"
            if wanted > bought else "")
    return (order, failed.astype(float), "1 if the student's greedy answer fails",
            f"the student failed {int(failed.sum()):,} of {len(failed):,} pool prompts "
            f"({context.prompts_task}'s checker); bought {bought:,} of its failures in pool "
            f"order{rest}")


STRATEGIES: dict[str, Callable[[_Context], tuple]] = {
    "random": _random,
    "uncertainty": _uncertainty,
    "diversity": _diversity,
    "student_first": _student_first,
}
UNCERTAINTY_MEASURES: dict[str, Callable[[_Context], tuple]] = {
    "entropy": _entropy,
    "disagreement": _disagreement,
}
NEEDS_CHECKER = ("student_first",)


# --- the arithmetic, model-free ---------------------------------------------------------------

def _descending(scores: np.ndarray) -> np.ndarray:
    """Indices by score, highest first; equal scores keep pool order."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def normalised(text: str) -> str:
    """An answer as compared for agreement: surrounding and repeated whitespace ignored."""
    return " ".join(text.split())


def disagreement(answers: Sequence[str]) -> float:
    """1 - the share of answer pairs that agree exactly: 0 when all agree, 1 when all differ."""
    pairs = list(itertools.combinations(answers, 2))
    return 1.0 - sum(a == b for a, b in pairs) / len(pairs)


def sample_seed(seed: int, sample: int, batch: int) -> int:
    """The sampling seed of one batch of one sample round: distinct per (seed, sample, batch)."""
    return int(np.random.SeedSequence([seed, sample, batch]).generate_state(1)[0] & 0x7FFFFFFF)


def k_center_greedy(points: np.ndarray, count: int, initial: Sequence[int] = ()
                    ) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy over `points` [n, d]: the point nearest the mean first (or the `initial`
    points, already chosen), then repeatedly the point farthest (euclidean) from all chosen so
    far; ties go to the lower index.

    Returns (order [count], distances [n]): a chosen point's distance is its distance to the
    nearest earlier choice when it was chosen (the first: to the mean); an unchosen point's is
    its distance to the nearest chosen point at the end. Greedy, so the first k of a longer
    order is the order for k."""
    points = np.asarray(points, np.float64)  # [n, d]
    n = len(points)
    if not 0 < count <= n:
        raise ValueError(f"k_center_greedy: count must be between 1 and {n}, got {count}")
    to_mean = np.linalg.norm(points - points.mean(axis=0), axis=1)  # [n]
    order = [int(index) for index in initial] or [int(np.argmin(to_mean))]
    if len(order) > count:
        raise ValueError(f"k_center_greedy: {len(order)} initial points, more than {count}")
    distances = np.empty(n)
    distances[order] = to_mean[order]
    nearest = np.min([np.linalg.norm(points - points[index], axis=1) for index in order],
                     axis=0)  # [n]: to the nearest chosen
    nearest[order] = -np.inf
    for _ in range(count - len(order)):
        chosen = int(np.argmax(nearest))  # argmax returns the first of equal maxima
        order.append(chosen)
        distances[chosen] = nearest[chosen]
        nearest = np.minimum(nearest, np.linalg.norm(points - points[chosen], axis=1))
        nearest[chosen] = -np.inf  # never chosen again (earlier choices stay at -inf)
    unchosen = np.ones(n, bool)
    unchosen[order] = False
    distances[unchosen] = nearest[unchosen]
    return np.array(order), distances
