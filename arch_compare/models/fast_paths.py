"""Formulations chosen for how XLA:CPU compiles them, where the plain expression is slow.

Each function computes exactly what its plain JAX expression would: `over_tokens` only reshapes
around the matmul; the others write out their gradient. `tests/models/test_fast_paths.py`
checks values and gradients against the plain formulations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def over_tokens(x: jax.Array, kernel: jax.Array, num_contracted: int) -> jax.Array:
    """`jnp.tensordot(x, kernel, num_contracted)` with x's leading axes merged into one token
    axis for the matmul: x [*lead, *in], kernel [*in, *out] -> [*lead, *out].

    The kernel's gradient is then a product over one token axis. Over [b, l] it would contract
    two axes, and XLA canonicalises such a product by copying both operands into a transposed
    order first: for a [2048, 512] x [512, 32000] output head that copy of the [b, l, v]
    gradient, plus the slower matmul it feeds, cost about 0.3 s of a 3.8 s LLaMA step.
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


@jax.custom_vjp
def add_shared_by_rows(x: jax.Array, shared: jax.Array) -> jax.Array:
    """x [b, ...] + shared [1, ...], the same addend for every row (T5's relative position bias
    over a batch of attention scores)."""
    return x + shared


def _add_shared_by_rows_forward(x, shared):
    return x + shared, None


def _add_shared_by_rows_backward(_, grad):
    # The shared addend's gradient sums grad over its rows. As a reduction over the leading axis
    # XLA:CPU took 19 ms for [8, 8, 256, 256] (5% of a T5 training step); as a contraction with a
    # vector of ones, 3.9 ms. (A chain of row additions took 0.5 ms on one device, but with the
    # rows split over devices it would move rows between them; a contraction over the batch
    # axis stays a local product and one all-reduce.)
    ones = jnp.ones(grad.shape[:1], grad.dtype)  # [b]
    return grad, jnp.tensordot(ones, grad, axes=1)[None]


add_shared_by_rows.defvjp(_add_shared_by_rows_forward, _add_shared_by_rows_backward)
