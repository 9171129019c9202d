"""Formulations chosen for how XLA:CPU compiles them, where the plain expression is slow.

Each function computes exactly what its plain JAX expression would: `over_tokens` only reshapes
around the matmul; the others write out their gradient. `tests/models/test_fast_paths.py`
checks values and gradients against the plain formulations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp


def over_tokens(x: jax.Array, kernel: jax.Array, num_contracted: int) -> jax.Array:
    """`jnp.tensordot(x, kernel, num_contracted)` with x's leading axes merged into one token
    axis for the matmul: x [*lead, *in], kernel [*in, *out] -> [*lead, *out].

    The kernel's gradient is then a product over one token axis. Over [b, l] it would contract
    two axes, and XLA canonicalises such a product by copying both operands into a transposed
    order first: for a [2048, 512] x [512, 32000] output head that copy of the [b, l, v]
    gradient, plus the slower matmul it feeds, cost about 0.3 s (a 6-layer LLaMA step, every
    projection merged: 3.9 -> 3.4 s on a 2-core CPU).
    """
    lead = x.shape[:x.ndim - num_contracted]
    tokens = x.reshape((-1,) + x.shape[len(lead):])  # [t, *in]
    y = jnp.tensordot(tokens, kernel, axes=num_contracted)  # [t, *out]
    return y.reshape(lead + y.shape[1:])


@jax.custom_vjp
def two_projections(x: jax.Array, kernel_0: jax.Array, kernel_1: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """x [..., d] through two [d, f] kernels -> ([..., f], [..., f]), as one matmul over the
    kernels stacked into [d, 2, f] at call time: XLA:CPU runs one [d, 2f] matmul faster than two
    [d, f] ones (the parameters stay two kernels)."""
    both = jnp.einsum("...d,dnf->...nf", x, jnp.stack([kernel_0, kernel_1], axis=1))
    return both[..., 0, :], both[..., 1, :]


def _two_projections_forward(x, kernel_0, kernel_1):
    return two_projections(x, kernel_0, kernel_1), (x, kernel_0, kernel_1)


def _two_projections_backward(saved, grads):
    # Written out because the derived backward pass transposes the stacked [..., 2, f] gradient
    # for the kernels' gradients, through pads and a transposing copy XLA:CPU ran at about
    # 1 GB/s (3% of a LLaMA step); here each kernel's gradient is one matmul over the tokens.
    x, kernel_0, kernel_1 = saved
    grad_0, grad_1 = grads  # [..., f] each
    stacked = jnp.stack([grad_0, grad_1], axis=-2)  # [..., 2, f]
    grad_x = jnp.einsum("...nf,dnf->...d", stacked, jnp.stack([kernel_0, kernel_1], axis=1))
    tokens = x.reshape(-1, x.shape[-1])  # [t, d]
    kernel_grad = lambda grad: tokens.T @ grad.reshape(-1, grad.shape[-1])  # [d, f]
    return grad_x, kernel_grad(grad_0), kernel_grad(grad_1)


two_projections.defvjp(_two_projections_forward, _two_projections_backward)


# What a masked score becomes: finite (a row with every key masked stays a uniform softmax, not
# NaN), and far enough below any real score that its probability is exactly zero.
MASKED_SCORE = -0.7 * float(jnp.finfo(jnp.float32).max)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attention_core(rows: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
                   mask: jax.Array | None, scale: float) -> jax.Array:
    """softmax(scale * rows key^T + bias, masked) value over (b, g) blocks.

    rows: [b, g, n, e]; key, value: [b, g, k, e]; bias: [1 or b, g, n, k] float32 (a batch of one
    is shared by every row: T5's relative position bias); mask: [b, 1, n, k] bool -> [b, g, n, e].
    Scores and softmax in float32, the probabilities multiply the values in the values' dtype.
    """
    return _attention_forward(rows, key, value, bias, mask, scale)[0]


def _attention_forward(rows, key, value, bias, mask, scale):
    scores = jnp.einsum("bgne,bgke->bgnk", rows, key,
                        preferred_element_type=jnp.float32) * scale  # [b, g, n, k]
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = jnp.where(mask, scores, MASKED_SCORE)
    probs = jax.nn.softmax(scores, axis=-1)  # [b, g, n, k] float32
    out = jnp.einsum("bgnk,bgke->bgne", probs.astype(value.dtype), value)
    # The backward pass needs only the bias's batch size; residuals are arrays, so it travels
    # as the shape of an empty one.
    bias_rows = None if bias is None else jnp.zeros((bias.shape[0], 0), jnp.float32)
    return out, (rows, key, value, bias_rows, mask, probs)


def _attention_backward(scale, saved, grad_out):
    # Written out so that the probabilities are the only [b, g, n, k] array kept for the backward
    # pass (the derived gradient of the same expression kept two, which a layer scan then copies
    # into stacked buffers and back), and the bias gradient is a contraction (below).
    rows, key, value, bias_rows, mask, probs = saved
    grad_probs = jnp.einsum("bgne,bgke->bgnk", grad_out, value,
                            preferred_element_type=jnp.float32)  # [b, g, n, k]
    grad_scores = probs * (grad_probs - jnp.sum(grad_probs * probs, axis=-1, keepdims=True))
    if mask is not None:  # a row with every key masked has uniform probabilities, no gradient
        grad_scores = jnp.where(mask, grad_scores, 0.0)
    grad_value = jnp.einsum("bgnk,bgne->bgke", probs.astype(value.dtype), grad_out)
    grad_logits = (grad_scores * scale).astype(rows.dtype)
    grad_rows = jnp.einsum("bgnk,bgke->bgne", grad_logits, key)
    grad_key = jnp.einsum("bgnk,bgne->bgke", grad_logits, rows)
    if bias_rows is None:
        grad_bias = None
    elif bias_rows.shape[0] == 1:
        # The shared bias's gradient sums over the batch rows. As a reduction over the leading
        # axis XLA:CPU took 19 ms for [8, 8, 256, 256] (5% of a T5 training step); as a
        # contraction with a vector of ones, 3.9 ms, and with the rows split over devices it
        # stays a local product and one all-reduce.
        ones = jnp.ones(grad_scores.shape[:1], grad_scores.dtype)  # [b]
        grad_bias = jnp.tensordot(ones, grad_scores, axes=1)[None]
    else:
        grad_bias = grad_scores
    return grad_rows, grad_key, grad_value, grad_bias, None


attention_core.defvjp(_attention_forward, _attention_backward)


# The activations below keep only their inputs for the backward pass, which recomputes the
# activation from them. The derived gradient keeps every intermediate of the activation instead
# ([b, l, f] each: five for GELU's tanh form, three for SiLU), and a layer scan copies each into a
# stacked buffer and back. Measured on a 2-core CPU, 6 x 512 models, batch 8 x 256, scanned
# layers: T5 v1.1's step 5.49 -> 5.29 s, LLaMA's 3.43 -> 3.28, GPT-2's 3.90 -> 3.80 (unrolled:
# 1-2% for T5 and LLaMA, none for GPT-2). The recomputed values are bit-identical, so training
# is too.

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def activate(activation: Callable[[jax.Array], jax.Array], pre: jax.Array) -> jax.Array:
    """activation(pre), elementwise; the backward pass keeps `pre` only."""
    return activation(pre)


def _activate_forward(activation, pre):
    return activation(pre), pre


def _activate_backward(activation, pre, grad):
    return (jax.vjp(activation, pre)[1](grad)[0],)


activate.defvjp(_activate_forward, _activate_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def activate_gated(activation: Callable[[jax.Array], jax.Array], gate: jax.Array,
                   up: jax.Array) -> jax.Array:
    """activation(gate) * up, elementwise ([..., f] each); the backward pass keeps gate and up."""
    return activation(gate) * up


def _activate_gated_forward(activation, gate, up):
    return activation(gate) * up, (gate, up)


def _activate_gated_backward(activation, saved, grad):
    gate, up = saved
    activated, activation_vjp = jax.vjp(activation, gate)
    return activation_vjp(grad * up)[0], grad * activated


activate_gated.defvjp(_activate_gated_forward, _activate_gated_backward)
