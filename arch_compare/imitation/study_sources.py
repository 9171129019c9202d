"""A study's imitation data: the target's answers to each source's prompts, bought for the prompts
each selection strategy chooses, and registered as one task per amount.

- `random` (no selection) buys the first max(amounts) prompts of the source's pool, before any
  run starts, and every model trains on them (`collect`);
- every other strategy chooses, per model, in rounds at the source's amounts
  (`selection.rank_pool`, `selected_file`): the first amount's prompts by the base model, each
  later amount's by keeping what the round before bought and letting the model trained on it
  choose the rest (the student in the loop). Each round's ranking is written to
  `<directory>/selections/<source>/<strategy>/<model>/<amount>.json`, so a resumed study does not
  recompute it, and the answers go through the source's one collection cache, so a prompt two
  strategies (or two models) choose is paid for once. The chosen answers are exported in buying
  order.

Process 0 asks the target and writes every file; the other processes rank too (the base model
runs on every host) and read what process 0 wrote after it says it is done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from arch_compare.data import amounts as amounts_lib
from arch_compare.imitation import collection, collection_cache, evaluation, preflight
from arch_compare.imitation.config import DataSource, StudyConfig
from arch_compare.imitation.hosts import Processes
from arch_compare.imitation.targets import Target, cache_key
from arch_compare_tasks import catalogue, registry

RANDOM = "random"


@dataclasses.dataclass(frozen=True)
class Bought:
    """What one source x strategy (x model) bought: the cache keys in buying order."""

    source: DataSource
    selection: str
    model: str  # '' where every model shares the answers (random)
    keys: tuple[str, ...]
    exported: Path


class StudySources:
    def __init__(self, config: StudyConfig, target: Target, processes: Processes, *,
                 echo=print, progress: bool = True,
                 on_bought: Callable[[Bought], None] | None = None):
        self.config = config
        self.target = target
        self.processes = processes
        self.echo = echo
        self.progress = progress
        self.on_bought = on_bought or (lambda bought: None)  # process 0: record the spend
        self.directory = Path(config.directory)
        self._tasks: dict[tuple, str] = {}
        self._files: dict = {}  # source, or (source, strategy, model) -> its exported answers

    def source(self, name: str) -> DataSource:
        return next(source for source in self.config.sources if source.name == name)

    def pool(self, source: DataSource) -> list[dict]:
        """The prompts a source may buy answers for, in the task's order."""
        records = registry.records(source.prompts_task, "train")
        return records[:source.selection.pool] if source.selection.pool else records

    # -- random: the first prompts, bought before any run -----------------------------------------

    def collect(self) -> dict[str, Path]:
        """Each source's random data as an OpenAI-chat JSONL file (collected or given)."""
        self._once_on_writer(self._collect_random, "collection")
        files = {source.name: (Path(source.file) if source.file is not None
                               else self._exported_path(source, RANDOM, ""))
                 for source in self.config.sources}
        self._files.update(files)
        return files

    def _collect_random(self) -> None:
        for source in self.config.sources:
            if source.file is not None or RANDOM not in source.selection.strategies:
                continue
            records = self.pool(source)[:max(source.amounts)]
            self._buy(source, RANDOM, "", records)

    # -- other strategies: chosen per model, in rounds, by the student --------------------------

    def selected_file(self, source_name: str, strategy: str, model_name: str, amount: int,
                      rank: Callable[..., object]) -> Path:
        """The file of the answers `strategy` buys for `model_name` up to `amount`, in buying
        order. Each of the source's amounts is a round: the first is chosen by the base model,
        a later one keeps what the round before bought and lets the model trained on it (that
        strategy's run at the earlier amount) choose the rest. `rank(source, strategy, pool,
        count, bought, student_amount)` -> a `selection.SelectionResult` runs on every process
        (student_amount None: the base model), unless the round's ranking is already on disk."""
        if strategy == RANDOM:
            return self._files[source_name]
        key = (source_name, strategy, model_name, amount)
        if key in self._files:
            return self._files[key]
        source = self.source(source_name)
        pool = self.pool(source)
        amounts = list(source.amounts)
        earlier = amounts[amounts.index(amount) - 1] if amounts.index(amount) else None
        ranking_path = self._ranking_path(source, strategy, model_name, amount)
        # Every process reads whether process 0 has the ranking, so all of them rank or none does.
        have = self.processes.from_writer(np.array([ranking_path.exists()], dtype=np.int32))[0]
        if have:
            indices = json.loads(ranking_path.read_text())["indices"]
        else:
            bought = ([] if earlier is None else json.loads(self._ranking_path(
                source, strategy, model_name, earlier).read_text())["indices"])
            result = rank(source, strategy, pool, amount, bought, earlier)
            indices = [int(index) for index in result.order]
            if self.processes.writer:
                student = "the base model" if earlier is None else f"the model trained on {earlier}"
                self.echo(f"  select {source.name}/{strategy} for {model_name} up to {amount} "
                          f"({student}): {result.description}")
                write_json(ranking_path, {
                    "source": source.name, "strategy": strategy, "model": model_name,
                    "amount": amount, "student": student, "pool": len(pool),
                    "description": result.description, "score": result.score_name,
                    "indices": indices, "prompt_ids": [str(pool[i]["id"]) for i in indices],
                    "scores": [float(result.scores[i]) for i in indices]})
        if len(indices) < amount:
            raise RuntimeError(f"selection {source.name}/{strategy} for {model_name}: chose "
                               f"{len(indices)} prompts, amount {amount} needs that many")
        chosen = [pool[i] for i in indices[:amount]]
        self._once_on_writer(lambda: self._buy(source, strategy, model_name, chosen, amount),
                             f"collection for {source.name}/{strategy}/{model_name}")
        self._files[key] = self._exported_path(source, strategy, model_name, amount)
        return self._files[key]

    def _ranking_path(self, source: DataSource, strategy: str, model_name: str,
                      amount: int) -> Path:
        return (self.directory / "selections" / source.name / strategy / model_name /
                f"{amount}.json")

    # -- buying and exporting ---------------------------------------------------------------------

    def _exported_path(self, source: DataSource, strategy: str, model_name: str,
                       amount: int = 0) -> Path:
        cache = preflight.collection_cache(self.config, source)
        if strategy == RANDOM:
            return cache.with_name(f"{source.name}.openai_chat.jsonl")
        return cache.with_name(f"{source.name}.{strategy}.{model_name}.{amount}.openai_chat.jsonl")

    def _buy(self, source: DataSource, strategy: str, model_name: str, records: list[dict],
             amount: int = 0) -> None:
        """Ask the target for `records` through the source's cache, and export their answers in
        the order given."""
        prompts = [evaluation.prompt_of(record) for record in records]
        cache = preflight.collection_cache(self.config, source)
        cache.parent.mkdir(parents=True, exist_ok=True)
        which = source.name if strategy == RANDOM else f"{source.name}/{strategy}/{model_name}"
        self.echo(f"collect {which}: {len(prompts)} prompts from {source.prompts_task} "
                  f"answered by {self.target.name}")
        result = collection.collect_with(self.config.collection, self.target, prompts,
                                         self.config.generation, cache,
                                         progress=self.progress)
        self.echo(f"  {result}")
        keys = [cache_key(self.target.name, prompt, self.config.generation) for prompt in prompts]
        exported = self._exported_path(source, strategy, model_name, amount)
        count = _export(cache, keys, exported)
        needed = amount or max(source.amounts)
        if count < needed:
            raise RuntimeError(
                f"data source {source.name!r}: only {count} of {len(prompts)} prompts have "
                f"an answer (see the errors in {cache}); {needed} are needed. Run the study "
                f"again to retry transient failures")
        self.on_bought(Bought(source, strategy, model_name, tuple(keys), exported))

    def _once_on_writer(self, work: Callable[[], None], what: str) -> None:
        failed = None
        if self.processes.writer:
            try:
                work()
            except Exception as error:
                failed = error
        if self.processes.failed_anywhere(failed is not None):
            if failed is not None:
                raise failed
            raise RuntimeError(f"{what} failed on process 0 (its log says why)")

    # -- the data of one run ----------------------------------------------------------------------

    def task(self, source_name: str, strategy: str, model_name: str, amount: int,
             path: Path) -> str:
        """The first `amount` examples of a file as a registered task (once per process)."""
        key = (source_name, strategy, model_name if strategy != RANDOM else "", amount)
        if key not in self._tasks:
            source = self.source(source_name)
            # Random data keeps the name it had before there were strategies.
            parts = (source_name, amount) if strategy == RANDOM else key
            # seqio task names allow only word characters, '.', ':' and '#'.
            name = ":".join(re.sub(r"[^\w.]", "_", str(part))
                            for part in ("study", self.config.name, *parts))
            # Collected answers are exported as OpenAI chat; a given file keeps its format.
            catalogue.register_imitation_task(name, path, source.format if source.file
                                              else "openai_chat", num_examples=amount,
                                              skip_bad=source.skip_bad, replace=True)
            try:  # the reader counts: fewer than `amount` examples is "only N exist"
                registry.records(name, "train")
            except ValueError as error:
                raise RuntimeError(f"data source {source_name!r} ({path}): {error}; amount "
                                   f"{amount} needs more") from None
            self._tasks[key] = name
        return self._tasks[key]

    def data_tokens(self, task: str, vocabularies: dict) -> dict:
        """The run's data in the model's own tokens and in the study's reference tokenizer."""
        counts = amounts_lib.count_tokens(registry.records(task, "train"), vocabularies)
        return {"data_tokens": counts["model"].total,
                "data_reference_tokens": (counts["reference"].total if "reference" in counts
                                          else None)}


def _export(cache: Path, keys: list[str], out: Path) -> int:
    """The answers of `keys` (in that order, those answered) as OpenAI chat JSONL."""
    answers = {answer.key: answer for answer in collection.load_collected(cache)}
    return collection_cache.write_openai_chat(out, (
        collection_cache.answer_conversation(answers[key]) for key in keys if key in answers))


def write_json(path: Path, value: dict) -> None:
    """`value` as indented JSON at `path`, synced, replacing the file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(value, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
