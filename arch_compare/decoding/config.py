"""`DecodeConfig`: how to decode, validated where it is written.

A compiled search depends only on the fields that change its program (method, number of steps,
number of beams); the rest (temperature, top-k, top-p, length penalty, EOS id, seed) reach it as
arrays through `Knobs`, so sweeping them does not recompile.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

METHODS = ("greedy", "sample", "beam")
# Values that switch a sampling filter off; set to anything else they need method="sample".
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
NO_EOS = -1  # the EOS id a search sees when it must never stop early


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Knobs:
    """The `DecodeConfig` values a compiled search reads as arrays."""

    temperature: jax.Array  # [] float32
    top_k: jax.Array  # [] int32; 0: off
    top_p: jax.Array  # [] float32; 1: off
    length_penalty: jax.Array  # [] float32: the alpha in `length_penalty`
    eos_id: jax.Array  # [] int32; NO_EOS: never stop early
    key: jax.Array  # a PRNG key from the seed


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings.

    - `method`: "greedy" (argmax), "sample" (temperature, then top-k, then top-p, in the order
      transformers applies them) or "beam" (`num_beams` beams).
    - `top_k`: keep the k most likely tokens (0: off). `top_p`: keep the smallest set of most
      likely tokens whose probability reaches p (1.0: off). Ties with the last kept token are kept.
    - `length_penalty`: alpha; a finished sequence scores sum(log p) / length ** alpha, length
      counting generated tokens including EOS (transformers' beam-search normalisation; t5x's
      brevity penalty ((5 + length) / 6) ** alpha differs). Greedy and sampled outputs are scored
      the same way, so scores compare across methods.
    - `eos_id`: the token that ends a sequence (None: the model's `ModelConfig.eos_id`);
      `ignore_eos=True` always generates `max_new_tokens` tokens.
    - `seed`: sampling only; the same seed gives the same samples.
    """

    max_new_tokens: int
    method: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    eos_id: int | None = None
    ignore_eos: bool = False
    seed: int = 0

    def __post_init__(self):
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        if self.method not in METHODS:
            raise ValueError(
                f"DecodeConfig.method={self.method!r} is not one of {', '.join(METHODS)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"DecodeConfig.temperature must be positive, got {self.temperature}")
        _check_int("top_k", self.top_k, minimum=0)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"DecodeConfig.top_p must be in (0, 1], got {self.top_p}")
        _check_int("num_beams", self.num_beams, minimum=1)
        if not math.isfinite(self.length_penalty):
            raise ValueError(
                f"DecodeConfig.length_penalty must be finite, got {self.length_penalty}")
        if self.eos_id is not None:
            _check_int("eos_id", self.eos_id, minimum=0)
            if self.ignore_eos:
                raise ValueError("DecodeConfig.eos_id is set but ignore_eos=True never uses it")
        _check_int("seed", self.seed, minimum=0)
        # Settings the chosen method would silently ignore are mistakes; say so here.
        if self.method != "sample":
            for name, off in SAMPLING_DEFAULTS.items():
                if getattr(self, name) != off:
                    raise ValueError(f"DecodeConfig.{name} applies to method='sample' only, "
                                     f"not {self.method!r}")
        if self.method != "beam" and self.num_beams != 1:
            raise ValueError(
                f"DecodeConfig.num_beams applies to method='beam' only, not {self.method!r}")

    def static(self) -> "DecodeConfig":
        """This config with every `Knobs` field at its default: what a compiled search is
        keyed on."""
        return dataclasses.replace(self, **SAMPLING_DEFAULTS, length_penalty=1.0, eos_id=None,
                                   ignore_eos=False, seed=0)

    def knobs(self, model_eos_id: int) -> Knobs:
        eos_id = NO_EOS if self.ignore_eos else (
            model_eos_id if self.eos_id is None else self.eos_id)
        return Knobs(temperature=jnp.float32(self.temperature), top_k=jnp.int32(self.top_k),
                     top_p=jnp.float32(self.top_p),
                     length_penalty=jnp.float32(self.length_penalty),
                     eos_id=jnp.int32(eos_id), key=jax.random.key(self.seed))


def length_penalty(lengths: jax.Array, alpha: jax.Array) -> jax.Array:
    """lengths [...] (>= 1) -> the divisor of a sequence's summed log-probabilities."""
    return jnp.asarray(lengths, jnp.float32) ** alpha


def _check_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DecodeConfig.{name} must be an integer >= {minimum}, got {value!r}")
