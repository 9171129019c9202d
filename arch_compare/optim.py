"""Optimizers and learning-rate schedules: AdamW (optionally with parameter scaling) and Adafactor.

Both optimizers are optax chains of the same shape, so "the same optimizer for every model" means
the same thing for both:

    clip_by_global_norm -> direction -> weight decay -> learning rate

- direction, AdamW: `optax.scale_by_adam`, optionally followed by parameter scaling.
- direction, Adafactor: factored second moments (`optax.scale_by_factored_rms`), Adafactor's
  update clipping (block RMS at most 1), optional parameter scaling, optional first moment. No
  first moment by default (`b1=0`, t5x's default), which is where its memory saving comes from.
- weight decay is decoupled and scaled by the learning rate in both: each step subtracts
  `lr * weight_decay * p` from each decayed weight (`weight_decay_mask`). With it, AdamW is exactly
  `optax.adamw`; Adafactor differs from `optax.adafactor`, whose decay ignores the learning rate.

Layers are stacked on a leading `layers` axis, and a kernel's raw shape (`[layers, d, heads,
head_dim]`) is not the matrix its matmul uses. Everything Adafactor computes per parameter (the
factored statistics, the update clipping, the parameter scale) is therefore computed on each
layer's matrix `[fan_in, fan_out]` (`layer_matrices`), as t5x does with its "batch" factor
dimension for scanned layers, and as `arch_compare.budget.memory` prices it.

Parameter scaling (Shazeer & Stern 2018, section 8; t5x's and EasyLM's
`multiply_by_parameter_scale`) multiplies each update by the RMS of the block it updates (one
layer's matrix or vector, at least 1e-3), so the learning rate is relative: a step moves a weight
by about `lr` times its block's typical magnitude. It is Adafactor's default and how the imitation
paper trained (AdamW, lr 2e-3 with EasyLM's flag on); without it lr 2e-3 would be a very large
absolute AdamW step for a pre-trained 7B model. Here it multiplies true AdamW's bias-corrected
update. EasyLM's flag instead swaps AdamW for `optax.adafactor(factored=False, momentum=b1,
decay_rate=b2)` (no bias correction, second-moment decay `1 - t**-b2`), so its runs are close to,
not identical with, `OptimizerConfig("adamw", ..., parameter_scaling=True)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

# -------------------------------------------------------------------------------------------------
# Learning-rate schedules


def _constant(cfg: ScheduleConfig) -> optax.Schedule:
    return optax.constant_schedule(cfg.peak_learning_rate)


def _linear(cfg: ScheduleConfig) -> optax.Schedule:
    return optax.linear_schedule(cfg.peak_learning_rate,
                                 cfg.peak_learning_rate * cfg.final_fraction, cfg.decay_steps)


def _cosine(cfg: ScheduleConfig) -> optax.Schedule:
    return optax.cosine_decay_schedule(cfg.peak_learning_rate, cfg.decay_steps,
                                       alpha=cfg.final_fraction)


def _rsqrt(cfg: ScheduleConfig) -> optax.Schedule:
    # T5's inverse square root, continuous at the end of warm-up: peak * sqrt(warmup / step).
    def schedule(count):  # count: steps since warm-up ended
        # join_schedules evaluates every piece, this one at negative counts during warm-up too.
        count = jnp.maximum(jnp.asarray(count, jnp.float32), 0.0)
        return cfg.peak_learning_rate * jnp.sqrt(cfg.warmup_steps / (cfg.warmup_steps + count))
    return schedule


# Decay name -> the schedule after warm-up, as a function of the steps since warm-up ended.
DECAYS: dict[str, Callable[[ScheduleConfig], optax.Schedule]] = {
    "constant": _constant, "linear": _linear, "cosine": _cosine, "rsqrt": _rsqrt}
# These end at `final_fraction * peak` at `total_steps`, so they need it.
DECAYS_WITH_AN_END = ("linear", "cosine")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up from 0 to `peak_learning_rate` over `warmup_steps`, then `decay`:

    - constant: stays at the peak.
    - linear / cosine: from the peak at `warmup_steps` to `final_fraction * peak` at `total_steps`,
      and stays there after.
    - rsqrt: `peak * sqrt(warmup_steps / step)` (T5's inverse square root; needs a warm-up).

    Step 0 has learning rate 0 when there is a warm-up (optax counts updates from 0).
    `total_steps` and `final_fraction` are used by linear and cosine only.
    """

    peak_learning_rate: float
    warmup_steps: int = 0
    decay: str = "constant"
    total_steps: int | None = None
    final_fraction: float = 0.0

    def __post_init__(self):
        name = type(self).__name__
        if isinstance(self.peak_learning_rate, bool) or not self.peak_learning_rate > 0:
            raise ValueError(f"{name}.peak_learning_rate must be positive, "
                             f"got {self.peak_learning_rate!r}")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"{name}.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"{name}.decay must be one of {', '.join(DECAYS)}, "
                             f"got {self.decay!r}")
        if self.total_steps is not None and (not _is_int(self.total_steps)
                                             or self.total_steps < self.warmup_steps):
            raise ValueError(f"{name}.total_steps must be an int >= warmup_steps "
                             f"({self.warmup_steps}) or None, got {self.total_steps!r}")
        if self.decay in DECAYS_WITH_AN_END and (self.total_steps is None
                                                 or self.total_steps == self.warmup_steps):
            raise ValueError(f"{name}: decay {self.decay!r} needs total_steps > warmup_steps "
                             f"({self.warmup_steps}), got {self.total_steps!r}")
        if self.decay == "rsqrt" and self.warmup_steps == 0:
            raise ValueError(f"{name}: decay 'rsqrt' needs warmup_steps > 0 (it is "
                             f"peak * sqrt(warmup_steps / step))")
        if isinstance(self.final_fraction, bool) or not 0.0 <= self.final_fraction <= 1.0:
            raise ValueError(f"{name}.final_fraction must be in [0, 1], "
                             f"got {self.final_fraction!r}")

    @property
    def decay_steps(self) -> int:
        """Steps from the end of warm-up to `total_steps` (linear and cosine only)."""
        return self.total_steps - self.warmup_steps


def make_schedule(cfg: ScheduleConfig) -> optax.Schedule:
    """`schedule(step) -> learning rate`, for the step counts optax passes (0 first)."""
    decay = DECAYS[cfg.decay](cfg)
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.peak_learning_rate, cfg.warmup_steps)
    # join_schedules hands `decay` the steps since the boundary, so each decay starts at 0.
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


# -------------------------------------------------------------------------------------------------
# Each parameter as the matrices its matmuls use

# Leading axes with these names stack layers (`nnx.scan`-style), one matrix per layer.
STACKED_AXES = frozenset({"layers"})
# Axes that together index one attention feature (heads x head_dim): they stay on one side.
HEAD_AXES = frozenset({"heads", "kv_heads", "kv"})


@dataclasses.dataclass(frozen=True)
class MatrixView:
    """How one parameter is seen as a stack of matrices, read from its logical axis names.

    After the leading stacked axes, the input side (fan-in) of a kernel is its first axis, joined
    by the head axes that follow it when it is a head axis itself; everything after is the output
    side (fan-out). So q/k/v `(embed | heads, kv)`, attention output `(heads, kv | embed)`, MLP in
    `(embed | mlp)`, MLP out `(mlp | embed)`, output head `(embed | vocab)`, embedding tables
    `(vocab | embed)`. A parameter with one side only (norm scales, biases such as `(heads, kv)`)
    is a vector per layer: `fan_in == 0`.
    """

    path: str
    axes: tuple[str | None, ...]
    stacked: int  # leading axes that stack layers
    fan_in: int  # axes after those on the input side; 0 for a vector

    @classmethod
    def from_axes(cls, path: str, axes: tuple[str | None, ...]) -> MatrixView:
        if not isinstance(axes, tuple) or not all(a is None or isinstance(a, str) for a in axes):
            raise ValueError(f"logical axes of {path}: expected names, got {axes!r}")
        stacked = 0
        while stacked < len(axes) and axes[stacked] in STACKED_AXES:
            stacked += 1
        inner = axes[stacked:]
        fan_in = 1
        while (fan_in < len(inner) and inner[fan_in] in HEAD_AXES
               and inner[fan_in - 1] in HEAD_AXES):
            fan_in += 1
        return cls(path, tuple(axes), stacked, fan_in if fan_in < len(inner) else 0)

    @property
    def is_matrix(self) -> bool:
        return self.fan_in > 0

    def matrices_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """`[layers, fan_in, fan_out]`, or `[layers, size]` for a vector (layers 1 if unstacked)."""
        if len(shape) != len(self.axes):
            raise ValueError(f"parameter {self.path} has shape {tuple(shape)} but "
                             f"logical axes {self.axes} (rank {len(self.axes)})")
        layers, inner = math.prod(shape[:self.stacked]), shape[self.stacked:]
        if not self.is_matrix:
            return (layers, math.prod(inner))
        return (layers, math.prod(inner[:self.fan_in]), math.prod(inner[self.fan_in:]))


def _path(keys: tuple[Any, ...]) -> str:
    """A tree path as the budget module writes it: "decoder/blocks/mlp/wo/kernel"."""
    return jax.tree_util.keystr(keys, simple=True, separator="/")


def _is_axes(node: Any) -> bool:
    return isinstance(node, tuple)


def matrix_views(logical_axes: Any) -> Any:
    """The tree of logical axis tuples (`model.logical_axes()`) -> the same tree of MatrixViews."""
    return jax.tree_util.tree_map_with_path(
        lambda keys, axes: MatrixView.from_axes(_path(keys), axes), logical_axes, is_leaf=_is_axes)


def weight_decay_mask(logical_axes: Any) -> Any:
    """True for the parameters weight decay applies to.

    Decayed: every matrix (matmul kernels, the output head and the embedding tables, including
    T5's relative-position bias table), as GPT-2-style training decays every 2-D weight. Not
    decayed: vectors per layer (norm scales and biases), whose pull towards 0 is not a
    regulariser but a change of the function (a norm scale of 0 switches its layer off). Decided
    from logical axes, not rank: a `(layers, heads, kv)` bias is 3-D but a vector per layer.
    """
    return jax.tree.map(lambda view: view.is_matrix, matrix_views(logical_axes))


def _leaves_matching(tree: Any, views: Any, what: str) -> tuple[list[Any], Any]:
    """`tree`'s leaves with its structure, after checking it has exactly the views' paths."""
    paths = {_path(keys) for keys, _ in jax.tree_util.tree_leaves_with_path(tree)}
    expected = {view.path for view in jax.tree.leaves(views)}
    if paths != expected:
        missing, extra = sorted(expected - paths), sorted(paths - expected)
        raise ValueError(f"{what} do not match the logical axes: missing {missing or 'none'}, "
                         f"not in the logical axes {extra or 'none'}")
    leaves, treedef = jax.tree.flatten(tree)
    return leaves, treedef


def layer_matrices(inner: optax.GradientTransformation,
                   logical_axes: Any) -> optax.GradientTransformation:
    """Runs `inner` on every layer's matrix (`MatrixView`) as if it were its own parameter.

    Each leaf is reshaped to `[layers, fan_in, fan_out]` (`[layers, size]` for vectors), `inner`
    is `jax.vmap`-ed over the layers, and its updates are reshaped back. So factored statistics
    pair fan-in with fan-out, and block-wise quantities (Adafactor's update clipping, the
    parameter scale) are per layer, as if layers were not stacked.

    `inner` must act parameter by parameter (every Adafactor component and
    `scale_by_param_block_rms` do); global ones (`clip_by_global_norm`) belong outside. Its state
    is kept per parameter and per layer, so a step counter inside it costs one int per layer.
    """
    views = matrix_views(logical_axes)

    def to_matrices(x: jax.Array, view: MatrixView) -> jax.Array:
        return x.reshape(view.matrices_shape(x.shape))  # [layers, fan_in, fan_out] | [layers, n]

    def init_fn(params):
        leaves, treedef = _leaves_matching(params, views, "parameters")
        view_leaves = treedef.flatten_up_to(views)
        states = [jax.vmap(inner.init)(to_matrices(p, v)) for p, v in zip(leaves, view_leaves)]
        return treedef.unflatten(states)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("layer_matrices needs the parameters: call update(updates, state, "
                             "params)")
        leaves, treedef = _leaves_matching(updates, views, "updates")
        view_leaves = treedef.flatten_up_to(views)
        new_updates, new_states = [], []
        for u, s, p, v in zip(leaves, treedef.flatten_up_to(state),
                              treedef.flatten_up_to(params), view_leaves):
            u_matrices, s = jax.vmap(inner.update)(to_matrices(u, v), s, to_matrices(p, v))
            new_updates.append(u_matrices.reshape(u.shape))
            new_states.append(s)
        return treedef.unflatten(new_updates), treedef.unflatten(new_states)

    return optax.GradientTransformation(init_fn, update_fn)


# -------------------------------------------------------------------------------------------------
# Optimizers

ADAFACTOR_UPDATE_CLIP = 1.0  # block RMS of Adafactor's update before the learning rate (d = 1)


class _Defaults(NamedTuple):
    b1: float
    b2: float
    eps: float


# Per optimizer: the values `None` stands for. Adafactor's b2 is the exponent c of its
# second-moment decay 1 - t**-c (Shazeer & Stern's 0.8), and b1 = 0 means no first moment.
DEFAULTS = {"adamw": _Defaults(b1=0.9, b2=0.999, eps=1e-8),
            "adafactor": _Defaults(b1=0.0, b2=0.8, eps=1e-30)}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer, its schedule and its hyper-parameters.

    `b1`, `b2` and `eps` left at None take the optimizer's defaults (`DEFAULTS`) when the config
    is built, so a built config always states the numbers it runs with:
    - adamw: Adam's moment decays and denominator epsilon (0.9, 0.999, 1e-8: optax's).
    - adafactor: b1 is the first-moment decay (0: none kept, t5x's default), b2 the exponent c of
      the second-moment decay `1 - t**-c` (0.8), eps the epsilon added to squared gradients
      (1e-30).
    `weight_decay` is decoupled and scaled by the learning rate (see the module docstring);
    `clip_grad_norm` clips the global gradient norm first (None: off); `parameter_scaling`
    multiplies each layer's update by its parameter RMS (Adafactor's relative step size).
    `dataclasses.replace(cfg, name=...)` keeps the numbers already filled in; pass b1=None etc.
    to take the new optimizer's defaults.
    """

    name: str
    schedule: ScheduleConfig
    b1: float | None = None
    b2: float | None = None
    eps: float | None = None
    weight_decay: float = 0.0
    clip_grad_norm: float | None = None
    parameter_scaling: bool = False

    def __post_init__(self):
        name = type(self).__name__
        if self.name not in OPTIMIZERS:
            raise ValueError(f"{name}.name must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.name!r}")
        if not isinstance(self.schedule, ScheduleConfig):
            raise ValueError(f"{name}.schedule must be a ScheduleConfig, got "
                             f"{type(self.schedule).__name__}")
        for field, default in DEFAULTS[self.name]._asdict().items():
            if getattr(self, field) is None:
                object.__setattr__(self, field, default)
        if not 0.0 <= self.b1 < 1.0:
            raise ValueError(f"{name}.b1 must be in [0, 1), got {self.b1!r}")
        if not 0.0 < self.b2 < 1.0:
            raise ValueError(f"{name}.b2 must be in (0, 1), got {self.b2!r}")
        if not self.eps > 0.0:
            raise ValueError(f"{name}.eps must be positive, got {self.eps!r}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"{name}.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0.0:
            raise ValueError(f"{name}.clip_grad_norm must be positive or None, "
                             f"got {self.clip_grad_norm!r}")
        if not isinstance(self.parameter_scaling, bool):
            raise ValueError(f"{name}.parameter_scaling must be a bool, "
                             f"got {self.parameter_scaling!r}")


def _adamw(cfg: OptimizerConfig, logical_axes: Any) -> optax.GradientTransformation:
    adam = optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps)  # elementwise: no matrix view needed
    if not cfg.parameter_scaling:
        return adam
    return optax.chain(adam, layer_matrices(optax.scale_by_param_block_rms(), logical_axes))


def _adafactor(cfg: OptimizerConfig, logical_axes: Any) -> optax.GradientTransformation:
    # The order is optax.adafactor's (and t5x's): normalise, clip, parameter scale, momentum.
    parts = [optax.scale_by_factored_rms(decay_rate=cfg.b2, epsilon=cfg.eps),
             optax.clip_by_block_rms(ADAFACTOR_UPDATE_CLIP)]
    if cfg.parameter_scaling:
        parts.append(optax.scale_by_param_block_rms())
    if cfg.b1 > 0.0:
        # Momentum of the update before the learning rate (optax's and t5x's average it after).
        parts.append(optax.ema(cfg.b1, debias=False))
    return layer_matrices(optax.chain(*parts), logical_axes)


# Optimizer name -> the direction of its update (before weight decay and the learning rate).
OPTIMIZERS: dict[str, Callable[[OptimizerConfig, Any], optax.GradientTransformation]] = {
    "adamw": _adamw, "adafactor": _adafactor}


def make_optimizer(cfg: OptimizerConfig, logical_axes: Any) -> optax.GradientTransformation:
    """The optax transformation for parameters whose logical axes are `logical_axes`
    (`model.logical_axes()`: the parameter tree with axis-name tuples at its leaves)."""
    parts = []
    if cfg.clip_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    parts.append(OPTIMIZERS[cfg.name](cfg, logical_axes))
    if cfg.weight_decay > 0.0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay,
                                               mask=weight_decay_mask(logical_axes)))
    parts.append(optax.scale_by_learning_rate(make_schedule(cfg.schedule)))
    return optax.chain(*parts)
