"""A model of this framework as a target: it answers chat prompts as it was trained to."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Sequence

from arch_compare.imitation.targets import GenerationSettings, Prompt, Reply, TokenUsage

@dataclasses.dataclass(frozen=True)
class ModelReply:
    """One generation with what an API reports beside the text (`arch-compare serve` uses it)."""

    reply: Reply
    prompt_tokens: int
    completion_tokens: int = 0  # generated tokens, EOS included
    finish_reason: str | None = None  # "stop": EOS reached; "length": max_tokens reached

    def __post_init__(self):
        if self.finish_reason not in (None, "stop", "length"):
            raise ValueError(f"ModelReply.finish_reason must be 'stop' or 'length', got "
                             f"{self.finish_reason!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class ModelTarget:
    """A model of this framework answering as it was trained to: the history rendered by
    `format_history` (the `inputs` of every training example) and tokenized as the feature
    converter does (`prompt_tokens`), then decoded greedily (temperature 0) or by sampling, and cut
    at the vocabulary's EOS.

    Prompts go through `generate` `batch_size` rows at a time; a short batch is filled with copies
    of its first row, so the compiled program depends only on the prompts' width. A prompt longer
    than `max_prompt_tokens` (or than a learned-position table leaves room for) gets a permanent
    error rather than a silently truncated question. Build one with `ModelTarget.load`.

    `mesh` (a `jax.sharding.Mesh`; None: the mesh `params` are placed on, else one device) is
    where it decodes: parameters split as in training, each batch's rows over data x fsdp.
    """

    name: str
    model: Any  # arch_compare.models.model.BaseModel
    params: Any  # its parameter tree
    vocabulary: Any  # seqio.Vocabulary
    batch_size: int = 8
    max_prompt_tokens: int | None = None
    mesh: Any = None  # jax.sharding.Mesh | None

    def __post_init__(self):
        if not self.name:
            raise ValueError("ModelTarget.name must be a non-empty string")
        if self.batch_size <= 0:
            raise ValueError(f"ModelTarget.batch_size must be positive, got {self.batch_size}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens <= 0:
            raise ValueError(f"ModelTarget.max_prompt_tokens must be positive, got "
                             f"{self.max_prompt_tokens}")

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, vocabulary: str | os.PathLike, *,
             name: str | None = None, batch_size: int = 8, max_prompt_tokens: int | None = None,
             dtype: str | None = None, execution: Any = None) -> "ModelTarget":
        """A training MODEL_DIR (its newest checkpoint), a native checkpoint or a local Hugging
        Face directory, with the vocabulary file of its family.

        `execution` (an `arch_compare.execution.ExecutionConfig` or a dict of its fields; None:
        one device, the checkpoint's dtypes or `dtype`) says where it runs: the parameters are
        read straight onto its mesh, split as in training, in its `param_dtype`, and it computes
        in its `dtype`. Its mesh 'auto' is sized for `batch_size` rows of `max_prompt_tokens`
        (default 1024) prompt tokens and 256 new tokens.

        The default name is the checkpoint's absolute path (and step, for a training directory),
        so answers cached from one checkpoint are never served for another.
        """
        # Imported here: TensorFlow (under seqio) takes seconds to import, and collecting from an
        # HTTP endpoint needs none of it.
        from arch_compare.data.vocabularies import vocabulary_for_model
        from arch_compare.models.loading import load_checkpoint

        if execution is None:
            loaded = load_checkpoint(checkpoint, dtype=dtype)
            model, params, mesh = loaded.model, loaded.params, None
        else:
            model, params, mesh, loaded = _load_on_mesh(checkpoint, execution, dtype, batch_size,
                                                        max_prompt_tokens)
        return cls(name=name or f"model:{loaded.description}", model=model,
                   params=params, vocabulary=vocabulary_for_model(model.config, vocabulary),
                   batch_size=batch_size, max_prompt_tokens=max_prompt_tokens, mesh=mesh)

    def complete(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Reply]:
        return [generated.reply for generated in self.generate(prompts, settings)]

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings
                 ) -> list[ModelReply]:
        from arch_compare.data.conversations import format_history
        from arch_compare.data.converters import prompt_tokens

        tokens = [prompt_tokens(self.model.config, self.vocabulary, format_history(prompt.turns))
                  for prompt in prompts]
        limit = self._prompt_limit(settings)
        results: list[ModelReply | None] = [
            None if len(row) <= limit else ModelReply(Reply(error=(
                f"prompt {prompt.prompt_id!r} has {len(row)} tokens; {self.name} takes at most "
                f"{limit} with max_tokens={settings.max_tokens}")), prompt_tokens=len(row))
            for prompt, row in zip(prompts, tokens)]
        todo = [index for index, result in enumerate(results) if result is None]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for index, generated in zip(chunk, self._generate_batch([tokens[i] for i in chunk],
                                                                    settings)):
                results[index] = generated
        return results

    def _prompt_limit(self, settings: GenerationSettings) -> int:
        limit = self.max_prompt_tokens or sys.maxsize
        model_limit = self.model.max_prompt_tokens(settings.max_tokens)
        return limit if model_limit is None else min(limit, model_limit)

    def _generate_batch(self, rows: list[list[int]], settings: GenerationSettings
                        ) -> list[ModelReply]:
        from arch_compare.decoding.search import DecodeConfig, generate

        eos = self.vocabulary.eos_id
        if settings.temperature == 0:
            decode = DecodeConfig(settings.max_tokens, method="greedy", eos_id=eos)
        else:
            decode = DecodeConfig(settings.max_tokens, method="sample", eos_id=eos,
                                  temperature=settings.temperature, top_p=settings.top_p,
                                  seed=settings.seed)
        padded = rows + [rows[0]] * (self.batch_size - len(rows))
        output = generate(self.model, self.params, padded, decode, mesh=self.mesh)
        tokens, lengths = output.tokens, output.lengths
        results = []
        for row, prompt in enumerate(rows):
            ids = tokens[row, :lengths[row]].tolist()
            stopped = bool(ids) and ids[-1] == eos
            text = self.vocabulary.decode(ids[:-1] if stopped else ids)
            results.append(ModelReply(Reply(text=text, usage=TokenUsage(len(prompt), len(ids))),
                                      prompt_tokens=len(prompt),
                                      completion_tokens=len(ids),
                                      finish_reason="stop" if stopped else "length"))
        return results


def _load_on_mesh(checkpoint, execution: Any, dtype: str | None, batch_size: int,
                  max_prompt_tokens: int | None):
    """(model, params, mesh, loaded checkpoint) for `ModelTarget.load` with an `execution`."""
    from arch_compare.decoding import placement
    from arch_compare.execution import ExecutionConfig
    from arch_compare.models.loading import load_checkpoint
    from arch_compare.models.model import build_model

    if dtype is not None:
        raise ValueError("ModelTarget.load: give the dtypes in execution (dtype, param_dtype), "
                         "not also dtype=")
    execution = ExecutionConfig.coerce(execution, "ModelTarget.load execution")
    meshes = []

    def shardings(model):  # the mesh needs the model ('auto' sizes it by its memory)
        meshes.append(placement.inference_mesh(
            execution, model, batch_size=batch_size,
            lengths=(max_prompt_tokens or 1024, GenerationSettings().max_tokens)))
        return placement.param_shardings(model, meshes[-1])

    # Read in the parameter dtype; shapes, hence shardings, do not depend on the dtypes.
    loaded = load_checkpoint(checkpoint, dtype=execution.param_dtype, shardings=shardings)
    model = build_model(execution.apply(loaded.model.config))
    return model, loaded.params, meshes[-1], loaded


