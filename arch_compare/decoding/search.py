"""Public decoding API: `generate` (greedy, sampling, beam search) and `score`.

    from arch_compare.decoding.search import DecodeConfig, generate, score
    out = generate(model, params, [[5, 6, 7], [8, 9]], DecodeConfig(max_new_tokens=32))
    out.tokens   # [b, 32]: generated tokens only, padding after EOS
    out.lengths  # [b]: tokens generated, EOS included
    out.scores   # [b]: sum of log-probabilities / lengths ** length_penalty

Prompts are what the model reads before generating: for a decoder-only model the start of its
token sequence (begin it with BOS if the model was trained that way, as the feature converter
does), for an encoder-decoder model the encoder input (UL2's mode token included); its decoder
starts from `ModelConfig.decoder_start_id`. Give them as token-id lists, or as one padded
`[b, p]` array with real tokens first (seqio's layout) plus `lengths` [b]. They are left-padded
internally (see `arch_compare.models.model`).

Both architectures run the same code; the compiled programs are kept per model, per
`DecodeConfig.static()`, per mesh and per input shape, so changing temperature, top-k, top-p, the
length penalty, the EOS id or the seed reuses them.

Where it runs (`mesh=`): on a device mesh, as training does (`arch_compare.partitioning`). The
mesh is the `mesh` argument if given, else the mesh the parameters were placed on
(`placement.place_params`), else this process's first device. Parameters not yet on the mesh are
placed on it for the call (place them once beforehand to avoid the copy). Batch rows are split
over data x fsdp: the batch is padded to a multiple of data x fsdp by repeating its last row and
the results trimmed back. Inputs are host arrays that every process holds in full (several
processes running the same program in lockstep all pass the same prompts); results are host
numpy arrays, the same on every process.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh

from arch_compare import partitioning
from arch_compare.decoding import placement
from arch_compare.decoding.beam import beam_search
from arch_compare.decoding.config import DecodeConfig, Knobs
from arch_compare.decoding.sampling import sample_search
from arch_compare.models.model import BaseModel, Params

__all__ = ["DecodeConfig", "Generation", "generate", "left_pad", "score"]

SEARCHES: dict[str, Callable[..., tuple[jax.Array, jax.Array, jax.Array]]] = {
    "greedy": sample_search,
    "sample": sample_search,
    "beam": beam_search,
}
SCORE_FEATURES = ("decoder_target_tokens", "decoder_loss_weights")
# Fills the left padding of prompts: any valid id works (padding is masked), but a pad id outside
# the vocabulary (GPT-2 checkpoints may declare one) would embed as NaN.
PROMPT_FILL = 0
PROMPT_WIDTH_MULTIPLE = 16


class Generation(NamedTuple):
    tokens: np.ndarray  # [b, n] int32: generated tokens; the model's pad_id after EOS
    lengths: np.ndarray  # [b] int32: generated tokens including EOS
    scores: np.ndarray  # [b] float32: summed log-probabilities / lengths ** length_penalty


def generate(model: BaseModel, params: Params, prompts: Sequence[Sequence[int]] | Any,
             config: DecodeConfig, *, lengths: Sequence[int] | None = None,
             mesh: Mesh | None = None) -> Generation:
    """Decode up to `config.max_new_tokens` tokens after each prompt (see the module doc)."""
    vocab_size = model.config.vocab_size
    if config.eos_id is not None and config.eos_id >= vocab_size:
        raise ValueError(f"DecodeConfig.eos_id={config.eos_id} is outside the model's "
                         f"vocabulary [0, {vocab_size})")
    tokens, lengths = left_pad(prompts, lengths, vocab_size)
    # Prompt widths rounded up: batches of similar prompts share one compiled search instead of
    # compiling one per exact width (extra left padding is masked like any other).
    extra = -tokens.shape[1] % PROMPT_WIDTH_MULTIPLE
    tokens = np.pad(tokens, ((0, 0), (extra, 0)), constant_values=PROMPT_FILL)
    mesh, params = _on_mesh(model, params, mesh)
    rows = len(tokens)
    knobs = config.knobs(model.config.eos_id)
    # The PRNG key travels as its raw data: a typed key cannot be built from host blocks.
    knobs = dataclasses.replace(knobs, key=jax.random.key_data(knobs.key))
    knobs = jax.tree.map(lambda x: placement.global_array(x, placement.replicated(mesh)), knobs)
    search = _compiled(model, ("generate", config.static()), mesh)
    out = search(params, *_rows_on_mesh([tokens, lengths], mesh), knobs)
    return Generation(*(np.asarray(value)[:rows] for value in out))


def score(model: BaseModel, params: Params, batch: Mapping[str, Any], *,
          mesh: Mesh | None = None) -> np.ndarray:
    """Per-example sum of `decoder_loss_weights` * log p(`decoder_target_tokens`) [b], from a
    seqio batch for `model` (rank classification: the highest-scoring target wins). `mesh` as
    for `generate`."""
    missing = [name for name in SCORE_FEATURES if name not in batch]
    if missing:
        raise KeyError(f"score needs batch features {', '.join(missing)}; "
                       f"got {', '.join(sorted(batch)) or 'none'}")
    # Only numeric features can enter a compiled program (seqio batches may carry text too).
    names = [name for name, value in batch.items() if np.asarray(value).dtype.kind in "biuf"]
    mesh, params = _on_mesh(model, params, mesh)
    rows = len(np.asarray(batch[SCORE_FEATURES[0]]))
    arrays = dict(zip(names, _rows_on_mesh([batch[name] for name in names], mesh)))
    return np.asarray(_compiled(model, ("score",), mesh)(params, arrays))[:rows]


def _on_mesh(model: BaseModel, params: Params, mesh: Mesh | None) -> tuple[Mesh, Params]:
    """The mesh a call runs on (the argument, the parameters' own, or one local device) and the
    parameters placed on it."""
    mesh = mesh or placement.mesh_of(params) or placement.single_device_mesh()
    return mesh, placement.place_params(model, params, mesh)


def _rows_on_mesh(arrays: Sequence[Any], mesh: Mesh) -> list[jax.Array]:
    """Host arrays [b, ...] (all with b rows) padded to a multiple of data x fsdp rows and split
    over those axes."""
    host = [np.asarray(array) for array in arrays]
    rows = placement.padded_size(len(host[0]), mesh)
    sharding = partitioning.batch_sharding(mesh)
    return [placement.global_array(placement.pad_rows(array, rows), sharding) for array in host]


def left_pad(prompts: Sequence[Sequence[int]] | Any, lengths: Sequence[int] | None,
             vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-id lists, or a `[b, p]` array with real tokens first and `lengths` [b] (default:
    all p), -> (left-padded `[b, max(lengths)]` int32, lengths [b] int32)."""
    if isinstance(prompts, (np.ndarray, jax.Array)):
        padded = np.asarray(prompts)
        if padded.ndim != 2:
            raise ValueError(f"prompts: expected a [batch, length] array, got shape "
                             f"{padded.shape}")
        counts = np.full(len(padded), padded.shape[1]) if lengths is None else np.asarray(lengths)
        if counts.shape != (len(padded),) or np.any(counts > padded.shape[1]):
            raise ValueError(f"lengths: expected {len(padded)} values <= {padded.shape[1]}, got "
                             f"{counts.tolist()}")
        rows = [padded[i, :n] for i, n in enumerate(counts)]
    else:
        if lengths is not None:
            raise ValueError("lengths: only for a padded array of prompts, not for lists")
        rows = [np.asarray(row, dtype=np.int64).reshape(-1) for row in prompts]
    if not rows:
        raise ValueError("prompts: no prompts given")
    width = max(len(row) for row in rows)
    tokens = np.full((len(rows), width), PROMPT_FILL, np.int32)
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"prompts[{i}] is empty; a prompt needs at least one token "
                             f"(a decoder-only model's BOS, say)")
        if row.min() < 0 or row.max() >= vocab_size:
            raise ValueError(f"prompts[{i}] has token ids outside the vocabulary "
                             f"[0, {vocab_size}): {row.min()}..{row.max()}")
        tokens[i, width - len(row):] = row
    return tokens, np.array([len(row) for row in rows], np.int32)


# (model, program key, mesh) -> jitted function. Bounded: each entry keeps its model alive.
@functools.lru_cache(maxsize=32)
def _compiled(model: BaseModel, key: tuple, mesh: Mesh) -> Callable:
    # Replicated results: every process can read all of them (they are small: tokens, scores).
    return partitioning.on_mesh(mesh, jax.jit(
        functools.partial(_PROGRAM_BUILDERS[key[0]], model, mesh, *key[1:]),
        out_shardings=placement.replicated(mesh)))


def _generate(model: BaseModel, mesh: Mesh, config: DecodeConfig, params: Params,
              prompts: jax.Array, lengths: jax.Array, knobs: Knobs
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    knobs = dataclasses.replace(knobs, key=jax.random.wrap_key_data(knobs.key))
    return SEARCHES[config.method](
        model, params, prompts, lengths, config, knobs, model.config.pad_id,
        constrain=functools.partial(placement.constrain_cache, mesh=mesh))


def _score(model: BaseModel, mesh: Mesh, params: Params, batch: dict[str, jax.Array]
           ) -> jax.Array:
    logits = model.logits(params, batch).astype(jnp.float32)  # [b, l, v]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = batch["decoder_target_tokens"]  # [b, l]
    target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(target_log_probs * batch["decoder_loss_weights"], axis=-1)  # [b]


_PROGRAM_BUILDERS: dict[str, Callable] = {"generate": _generate, "score": _score}
