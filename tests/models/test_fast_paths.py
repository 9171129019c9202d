"""The training step's faster formulations against the straightforward ones they replace.

Each fast path (attention and the MLP's activations with their backward passes written out, one
matmul for a gated MLP's two up projections, projections over one token axis, the loss and
accuracy sharing one maximum) is checked, values and gradients, against an independent
reference: JAX's own `jax.nn.dot_product_attention`, the MLP written out with plain JAX,
`jnp.tensordot` over the unmerged axes, optax's cross-entropy with an argmax. HF parity
(test_hf_parity.py) checks the whole models end to end.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from arch_compare.models import zoo
from arch_compare.models.fast_paths import over_tokens
from arch_compare.models.layers import ACTIVATION_FUNCTIONS, Mlp, dot_product_attention
from arch_compare.trainer.steps import cross_entropy_and_correct

TOLERANCE = {"float32": 2e-5, "bfloat16": 2e-2}


def _attention_inputs(dtype, heads, kv_heads, bias_batch):
    keys = jax.random.split(jax.random.key(0), 5)
    b, q, k, e = 2, 5, 7, 8
    query = jax.random.normal(keys[0], (b, q, heads, e), dtype)
    key = jax.random.normal(keys[1], (b, k, kv_heads, e), dtype)
    value = jax.random.normal(keys[2], (b, k, kv_heads, e), dtype)
    bias = jax.random.normal(keys[3], (bias_batch, heads, q, k), dtype)
    mask = jax.random.bernoulli(keys[4], 0.7, (b, 1, q, k))
    mask = mask.at[1, 0, 2].set(False)  # one query sees no key at all (a padding row)
    return query, key, value, bias, mask


# (dtype, query heads, kv heads, bias batch, with bias, with mask): plain multi-head, grouped and
# multi-query heads; T5's shared bias and a per-example one; no mask (an encoder without padding).
ATTENTION_CASES = [("float32", 4, 2, 2, True, True), ("float32", 4, 4, 1, False, False),
                   ("float32", 4, 4, 1, True, True), ("bfloat16", 4, 1, 1, True, True)]


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: "-".join(map(str, c)))
def test_einsum_attention_matches_jax(case):
    """Values and the gradients of queries, keys, values and the bias (the backward pass is
    written out in `fast_paths.attention_core`; a shared bias's gradient is its sum over rows)."""
    dtype, heads, kv_heads, bias_batch, with_bias, with_mask = case
    query, key, value, bias, mask = _attention_inputs(jnp.dtype(dtype), heads, kv_heads,
                                                      bias_batch)
    mask = mask if with_mask else None

    def heads_first(query, key, value, bias, **kwargs):  # ours takes keys/values as [b, g, k, e]
        return dot_product_attention(query, jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2),
                                     bias=bias, **kwargs)

    def theirs(query, key, value, bias, **kwargs):
        return jax.nn.dot_product_attention(query, key, value, bias=bias, **kwargs)

    @functools.partial(jax.jit, static_argnums=0)
    def outputs_and_grads(attention):
        call = lambda q, k, v, b: attention(q, k, v, b if with_bias else None, mask=mask,
                                            scale=0.3)
        loss = lambda *a: jnp.sum(jnp.sin(call(*a).astype(jnp.float32)))
        return (call(query, key, value, bias),
                jax.grad(loss, argnums=(0, 1, 2, 3))(query, key, value, bias))

    ours, reference = outputs_and_grads(heads_first), outputs_and_grads(theirs)
    tolerance = TOLERANCE[dtype]
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   atol=5 * tolerance, rtol=5 * tolerance)
    if with_bias:  # the bias gradient is not trivially zero
        assert np.abs(np.asarray(ours[1][3], np.float32)).max() > 1e-3


def test_attention_keeps_one_score_sized_array_for_the_backward_pass(capsys):
    """What the written-out backward pass is for: of the [b, g, n, k] arrays, only the
    probabilities are saved (the derived gradient of the same expression kept two,
    `jax.nn.dot_product_attention`'s three; a layer scan copies each into stacked buffers)."""
    query, key, value, bias, mask = _attention_inputs(jnp.float32, 4, 2, 1)
    loss = lambda q, k, v, b: jnp.sum(dot_product_attention(
        q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), bias=b, mask=mask, scale=0.3))
    print_saved_residuals(loss, query, key, value, bias)
    saved = capsys.readouterr().out.splitlines()
    b, q, k = query.shape[0], query.shape[1], key.shape[1]
    score_sized = [line for line in saved if line.startswith(f"f32[{b},2,{2 * q},{k}]")]
    assert len(score_sized) == 1, saved


def _mlp(activation, gated, use_bias):
    cfg = zoo.llama(16, 1, 2, 24, vocab_size=32).replace(
        use_bias=use_bias, mlp_activation=activation, mlp_gated=gated)
    mlp = Mlp(cfg, rngs=nnx.Rngs(0))
    if use_bias:  # non-zero biases, so that adding them to the wrong half would show
        for i, name in enumerate(["wi_0", "wi_1"] if gated else ["wi"]):
            dense = getattr(mlp, name)
            dense.bias[...] = jax.random.normal(jax.random.key(i + 1), dense.bias.shape)
    return mlp


@pytest.mark.parametrize("activation", sorted(ACTIVATION_FUNCTIONS))
@pytest.mark.parametrize("gated,use_bias", [(True, False), (True, True), (False, True)])
def test_mlp_matches_the_plain_expression(activation, gated, use_bias):
    """One matmul for a gated MLP's two up projections, and the activation's written-out
    backward pass, against the MLP written out with plain JAX."""
    graph, params = nnx.split(_mlp(activation, gated, use_bias))
    x = jax.random.normal(jax.random.key(3), (2, 3, 16))
    act = ACTIVATION_FUNCTIONS[activation]

    def written_out(p, x):
        up = lambda w: x @ w["kernel"] + (w["bias"] if use_bias else 0.0)
        hidden = act(up(p["wi_0"])) * up(p["wi_1"]) if gated else act(up(p["wi"]))
        return hidden @ p["wo"]["kernel"] + (p["wo"]["bias"] if use_bias else 0.0)

    plain = nnx.to_pure_dict(params)
    fused = lambda p, x: nnx.merge(graph, p)(x)

    @functools.partial(jax.jit, static_argnums=0)
    def outputs_and_grads(mlp, p):
        # Gradients of the parameters and of the input (the custom backward pass returns both).
        return mlp(p, x), jax.grad(lambda p, x: jnp.sum(jnp.sin(mlp(p, x))), argnums=(0, 1))(p, x)

    ours = outputs_and_grads(fused, params)
    ours = (ours[0], (nnx.to_pure_dict(ours[1][0]), ours[1][1]))
    theirs = outputs_and_grads(written_out, plain)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gated", [True, False])
def test_mlp_keeps_only_the_activation_inputs_for_the_backward_pass(capsys, gated):
    """What the activation's written-out backward pass is for: of the [b, l, f] arrays, only the
    activation's inputs (gate and up, or the one projection) and the down projection's input are
    saved; the derived gradient of GELU's tanh form kept five more gated, four plain."""
    graph, params = nnx.split(_mlp("gelu_tanh", gated, False))
    x = jax.random.normal(jax.random.key(3), (2, 3, 16))
    print_saved_residuals(lambda p, x: jnp.sum(nnx.merge(graph, p)(x)), params, x)
    saved = capsys.readouterr().out.splitlines()
    hidden_sized = [line for line in saved if line.startswith(("f32[2,3,24]", "f32[6,24]"))]
    assert len(hidden_sized) == (3 if gated else 2), saved


# (x's shape, kernel's shape, contracted axes): [b, l, d] -> [h, e] (a query projection), heads
# back to d (the output projection), a decode step's [b, 1, d], and no leading axis at all.
OVER_TOKENS_CASES = [((2, 3, 6), (6, 4, 5), 1), ((2, 3, 4, 5), (4, 5, 6), 2),
                     ((4, 1, 6), (6, 7), 1), ((6,), (6, 7), 1)]


@pytest.mark.parametrize("case", OVER_TOKENS_CASES, ids=lambda c: f"{c[0]}x{c[1]}")
def test_over_tokens_matches_tensordot(case):
    x_shape, kernel_shape, contracted = case
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape)

    def outputs_and_grads(project):
        loss = lambda x, k: jnp.sum(jnp.sin(project(x, k, contracted)))
        return project(x, kernel, contracted), jax.grad(loss, argnums=(0, 1))(x, kernel)

    ours = outputs_and_grads(over_tokens)
    theirs = outputs_and_grads(lambda x, k, n: jnp.tensordot(x, k, axes=n))
    assert ours[0].shape == x_shape[:len(x_shape) - contracted] + kernel_shape[contracted:]
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("project,copies_gradient", [
    (over_tokens, False), (lambda x, k, n: jnp.tensordot(x, k, axes=n), True)],
    ids=["over_tokens", "tensordot"])
def test_output_head_gradient_is_not_transposed(project, copies_gradient):
    """The reason for `over_tokens`: a kernel gradient over [b, l] makes XLA copy the [b, l, v]
    gradient into [v, b * l] first. The plain tensordot is checked too, so that this test
    notices when XLA stops doing so (and the fast path has no reason left)."""
    b, l, d, v = 2, 12, 16, 64
    x, kernel = jnp.ones((b, l, d)), jnp.ones((d, v))
    targets = jnp.zeros((b, l), jnp.int32)
    loss = lambda x, k: jnp.sum(cross_entropy_and_correct(project(x, k, 1), targets)[0])
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    transposed = {f"f32[{v},{b * l}]", f"f32[{v},{b},{l}]"}
    assert any(shape in hlo for shape in transposed) == copies_gradient


def test_cross_entropy_and_correct_match_optax_and_argmax():
    logits = 4.0 * jax.random.normal(jax.random.key(0), (3, 5, 11))  # no exact ties
    targets = jax.random.randint(jax.random.key(1), (3, 5), 0, 11)
    targets = targets.at[0].set(jnp.argmax(logits[0], axis=-1))  # some right, some wrong
    losses, correct = cross_entropy_and_correct(logits, targets)
    np.testing.assert_allclose(
        losses, optax.softmax_cross_entropy_with_integer_labels(logits, targets), rtol=1e-6)
    expected = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    np.testing.assert_array_equal(correct, expected)
    assert 5 <= float(correct.sum()) < 15
    ours = jax.grad(lambda l: jnp.sum(cross_entropy_and_correct(l, targets)[0]))(logits)
    theirs = jax.grad(lambda l: jnp.sum(
        optax.softmax_cross_entropy_with_integer_labels(l, targets)))(logits)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
