"""Optimizers and schedules: schedule values at known steps, AdamW against optax.adamw, clipping,
the weight-decay mask, Adafactor on each layer's matmul matrix (against optax.adafactor and the
budget module), and parameter scaling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arch_compare import optim
from arch_compare.budget import optimizer_state_bytes, parameter_tensors
from arch_compare.models import PRESETS, build_model

PEAK = 0.01


def constant(peak=PEAK):
    return optim.ScheduleConfig(peak)


def run(tx, params, grads_per_step):
    """Apply `tx` for each gradient tree in turn; returns the updates of every step."""
    state, update = tx.init(params), jax.jit(tx.update)  # one compile, not op-by-op dispatch
    all_updates = []
    for grads in grads_per_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        all_updates.append(updates)
    return all_updates


def random_trees(like, steps, seed=0, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), steps)
    leaves, treedef = jax.tree.flatten(like)
    return [treedef.unflatten([scale * jax.random.normal(jax.random.fold_in(key, i), x.shape)
                               for i, x in enumerate(leaves)]) for key in keys]


def assert_trees_close(a, b, rtol=1e-5, atol=0.0):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def state_bytes(tx, abstract_params) -> int:
    state = jax.eval_shape(tx.init, abstract_params)
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))


# --- schedules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("decay", list(optim.DECAYS))
def test_warmup_rises_linearly_from_zero_to_the_peak(decay):
    schedule = optim.make_schedule(optim.ScheduleConfig(PEAK, 100, decay, 1100, 0.1))
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(PEAK / 2)
    assert float(schedule(100)) == pytest.approx(PEAK)


@pytest.mark.parametrize("decay, quarter, middle, end", [
    ("constant", PEAK, PEAK, PEAK),
    ("linear", PEAK * (1 - 0.9 / 4), PEAK * (1 + 0.1) / 2, PEAK * 0.1),
    # cos(pi/4) and cos(pi/2) = 0: halfway to the floor at the middle, like linear, not before
    ("cosine", PEAK * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2), PEAK * (0.1 + 0.9 / 2),
     PEAK * 0.1),
    ("rsqrt", PEAK * math.sqrt(100 / 350), PEAK * math.sqrt(100 / 600),
     PEAK * math.sqrt(100 / 1100)),
], ids=["constant", "linear", "cosine", "rsqrt"])
def test_decay_quarter_midpoint_and_end(decay, quarter, middle, end):
    schedule = optim.make_schedule(optim.ScheduleConfig(PEAK, 100, decay, 1100, 0.1))
    assert float(schedule(350)) == pytest.approx(quarter, rel=1e-5)
    assert float(schedule(600)) == pytest.approx(middle, rel=1e-5)
    assert float(schedule(1100)) == pytest.approx(end, rel=1e-5)


def test_linear_and_cosine_stay_at_the_floor_after_total_steps():
    for decay in optim.DECAYS_WITH_AN_END:
        schedule = optim.make_schedule(optim.ScheduleConfig(PEAK, 10, decay, 110, 0.25))
        assert float(schedule(5000)) == pytest.approx(PEAK * 0.25)


def test_rsqrt_halves_at_four_times_the_warmup():
    schedule = optim.make_schedule(optim.ScheduleConfig(PEAK, 1000, "rsqrt"))
    assert float(schedule(4000)) == pytest.approx(PEAK / 2)


def test_no_warmup_starts_at_the_peak():
    schedule = optim.make_schedule(optim.ScheduleConfig(PEAK, 0, "linear", 10))
    assert float(schedule(0)) == pytest.approx(PEAK)


@pytest.mark.parametrize("kwargs, field", [
    (dict(peak_learning_rate=0.0), "peak_learning_rate"),
    (dict(peak_learning_rate=PEAK, warmup_steps=-1), "warmup_steps"),
    (dict(peak_learning_rate=PEAK, warmup_steps=1.5), "warmup_steps"),
    (dict(peak_learning_rate=PEAK, decay="exponential"), "decay"),
    (dict(peak_learning_rate=PEAK, decay="linear"), "total_steps"),
    (dict(peak_learning_rate=PEAK, warmup_steps=10, decay="cosine", total_steps=10), "total_steps"),
    (dict(peak_learning_rate=PEAK, warmup_steps=10, total_steps=5), "total_steps"),
    (dict(peak_learning_rate=PEAK, decay="rsqrt"), "warmup_steps"),
    (dict(peak_learning_rate=PEAK, final_fraction=1.5), "final_fraction"),
])
def test_schedule_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        optim.ScheduleConfig(**kwargs)


# --- optimizer configs ---------------------------------------------------------------------------

def test_unset_hyperparameters_take_each_optimizers_defaults():
    adamw = optim.OptimizerConfig("adamw", constant())
    adafactor = optim.OptimizerConfig("adafactor", constant())
    assert (adamw.b1, adamw.b2, adamw.eps) == (0.9, 0.999, 1e-8)
    assert (adafactor.b1, adafactor.b2, adafactor.eps) == (0.0, 0.8, 1e-30)
    assert optim.OptimizerConfig("adafactor", constant(), b1=0.9).b1 == 0.9


@pytest.mark.parametrize("kwargs, field", [
    (dict(name="sgd"), "name"),
    (dict(schedule=0.01), "schedule"),
    (dict(b1=1.0), "b1"),
    (dict(b2=0.0), "b2"),
    (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(clip_grad_norm=0.0), "clip_grad_norm"),
    (dict(parameter_scaling="yes"), "parameter_scaling"),
])
def test_optimizer_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        optim.OptimizerConfig(**{"name": "adamw", "schedule": constant(), **kwargs})


# --- matrix views --------------------------------------------------------------------------------

def _views_and_shapes(preset):
    model = build_model(PRESETS[preset])
    views = {v.path: v for v in jax.tree.leaves(optim.matrix_views(model.logical_axes()))}
    shapes = {jax.tree_util.keystr(keys, simple=True, separator="/"): leaf.shape
              for keys, leaf in jax.tree_util.tree_leaves_with_path(model.abstract_params())}
    return views, shapes


def test_kernels_are_seen_as_fan_in_by_fan_out_matrices_per_layer():
    views, shapes = _views_and_shapes("ul2-tiny")  # heads x head_dim = 128, d_model = 64
    expect = {
        "encoder/blocks/self_attention/q/kernel": (2, 64, 128),  # (embed | heads, kv)
        "encoder/blocks/self_attention/k/kernel": (2, 64, 128),  # (embed | kv_heads, kv)
        "encoder/blocks/self_attention/o/kernel": (2, 128, 64),  # (heads, kv | embed)
        "decoder/blocks/mlp/wi_0/kernel": (2, 64, 128),
        "decoder/blocks/mlp/wo/kernel": (2, 128, 64),
        "decoder/blocks/pre_mlp_norm/scale": (2, 64),  # a vector per layer
        "encoder_relative_bias/embedding": (1, 32, 4),  # unstacked: one "layer"
        "token_embed/embedding": (1, 512, 64),
        "output_head/projection/kernel": (1, 64, 512),
        "decoder/final_norm/scale": (1, 64),
    }
    for path, matrices in expect.items():
        assert views[path].matrices_shape(shapes[path]) == matrices, path


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "t5-tiny", "ul2-tiny",
                                    "t5-11b", "llama2-70b"])
def test_matrix_sides_agree_with_the_budget_module(preset):
    """Both modules must factor the same matrices, or the budget's Adafactor memory is wrong."""
    views, shapes = _views_and_shapes(preset)
    tensors = {t.path: t for t in parameter_tensors(PRESETS[preset])}
    assert set(tensors) == set(views)
    for path, tensor in tensors.items():
        view = views[path]
        ours = view.matrices_shape(shapes[path])
        assert ours[0] == math.prod(tensor.shape[:tensor.stacked]), path
        budget_sides = tensor.matrix_shape[tensor.stacked:]
        if view.is_matrix:
            assert ours[1:] == budget_sides, path
        else:  # the budget writes a vector as [n] or [n, 1]: n numbers per layer either way
            assert len(ours) == 2 and budget_sides in ((ours[1],), (ours[1], 1)), path


def test_weight_decay_mask_by_logical_axes_not_rank():
    mask = optim.weight_decay_mask(build_model(PRESETS["gpt2-tiny"]).logical_axes())
    attention = mask["decoder"]["blocks"]["self_attention"]
    assert attention["q"]["kernel"] and attention["o"]["kernel"]
    assert not attention["q"]["bias"]  # (layers, heads, kv): 3-D, but a vector per layer
    assert not mask["decoder"]["blocks"]["pre_mlp_norm"]["scale"]
    assert not mask["decoder"]["final_norm"]["bias"]
    assert mask["token_embed"]["embedding"] and mask["position_embed"]["embedding"]


def test_mismatched_parameters_are_named():
    axes = {"w": ("embed", "mlp"), "b": ("mlp",)}
    tx = optim.make_optimizer(optim.OptimizerConfig("adafactor", constant()), axes)
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        tx.init({"w": jnp.ones((4, 8))})
    with pytest.raises(ValueError, match="parameter w has shape \\(4, 8, 2\\)"):
        tx.init({"w": jnp.ones((4, 8, 2)), "b": jnp.ones((8,))})


# --- AdamW ---------------------------------------------------------------------------------------

SMALL_AXES = {
    "q": {"kernel": ("layers", "embed", "heads", "kv"), "bias": ("layers", "heads", "kv")},
    "norm": {"scale": ("layers", "embed")},
    "embedding": ("vocab", "embed"),
}


def small_params(seed=0):
    shapes = {"q": {"kernel": (2, 8, 2, 4), "bias": (2, 2, 4)}, "norm": {"scale": (2, 8)},
              "embedding": (16, 8)}
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, s) for k, s in zip(keys, leaves)])


def test_adamw_equals_optax_adamw():
    schedule = optim.ScheduleConfig(PEAK, 2, "cosine", 6, 0.1)
    cfg = optim.OptimizerConfig("adamw", schedule, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1)
    params = small_params()
    grads = random_trees(params, 5)
    reference = optax.adamw(optim.make_schedule(schedule), b1=0.8, b2=0.95, eps=1e-6,
                            weight_decay=0.1, mask=optim.weight_decay_mask(SMALL_AXES))
    ours = run(optim.make_optimizer(cfg, SMALL_AXES), params, grads)
    theirs = run(reference, params, grads)
    assert_trees_close(ours, theirs, rtol=1e-6)
    assert float(jnp.abs(ours[-1]["q"]["kernel"]).max()) > 0


def test_clipping_rescales_gradients_above_the_global_norm():
    params = small_params()
    big, small = random_trees(params, 2, scale=30.0)[0], random_trees(params, 2, seed=1)[1]
    big_norm = float(optax.global_norm(big))
    assert big_norm > 1.0  # the first step is clipped, the second (norm 0.5) is not
    small = jax.tree.map(lambda g: g * 0.5 / float(optax.global_norm(small)), small)
    cfg = optim.OptimizerConfig("adamw", constant(), clip_grad_norm=1.0)
    clipped = run(optim.make_optimizer(cfg, SMALL_AXES), params, [big, small])
    by_hand = run(optax.adamw(PEAK, weight_decay=0.0), params,
                  [jax.tree.map(lambda g: g / big_norm, big), small])
    unclipped = run(optax.adamw(PEAK, weight_decay=0.0), params, [big, small])
    assert_trees_close(clipped, by_hand, rtol=1e-5)
    # Adam's second step sees the first gradient's size, so clipping changes it.
    difference = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), clipped[1], unclipped[1])
    assert max(jax.tree.leaves(difference)) > 1e-4


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_weight_decay_leaves_norm_scales_and_biases_alone(name):
    model = build_model(PRESETS["gpt2-tiny"])
    params = jax.tree.map(lambda s: jnp.full(s.shape, 2.0), model.abstract_params())
    cfg = optim.OptimizerConfig(name, constant(0.5), weight_decay=0.1)
    tx = optim.make_optimizer(cfg, model.logical_axes())
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
    blocks = updates["decoder"]["blocks"]
    # zero gradients: the update is the decay alone, lr * weight_decay * p = 0.5 * 0.1 * 2
    np.testing.assert_allclose(blocks["mlp"]["wi"]["kernel"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(updates["token_embed"]["embedding"], -0.1, rtol=1e-6)
    untouched = (blocks["pre_mlp_norm"]["scale"], blocks["pre_mlp_norm"]["bias"],
                 blocks["self_attention"]["q"]["bias"], updates["decoder"]["final_norm"]["scale"])
    for update in untouched:
        assert float(jnp.abs(update).max()) == 0.0


# --- Adafactor -----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["t5.1.1-xxl", "llama-7b"])
def test_adafactor_state_matches_the_budget(preset):
    model = build_model(PRESETS[preset])  # abstract: nothing is allocated
    tx = optim.make_optimizer(optim.OptimizerConfig("adafactor", constant()), model.logical_axes())
    ours = state_bytes(tx, model.abstract_params())
    budget = optimizer_state_bytes(PRESETS[preset], "adafactor")
    # Beyond the statistics: a step counter per layer and parameter, optax's (1,)-placeholders
    # for the statistics a parameter does not use, and the schedule's counter.
    assert 0 <= ours - budget < 8 * 1024


def test_adafactor_first_moment_is_opt_in():
    model = build_model(PRESETS["llama-7b"])
    sizes = {b1: state_bytes(optim.make_optimizer(
        optim.OptimizerConfig("adafactor", constant(), b1=b1), model.logical_axes()),
        model.abstract_params()) for b1 in (0.0, 0.9)}
    assert sizes[0.9] - sizes[0.0] == pytest.approx(4 * model.param_count(), rel=1e-4)


# d_model 128 and heads x head_dim 2 x 64: large enough for optax to factor (>= 128).
FACTOR_AXES = {"q": ("embed", "heads", "kv"), "o": ("heads", "kv", "embed"), "norm": ("embed",)}
FACTOR_SHAPES = {"q": (128, 2, 64), "o": (2, 64, 128), "norm": (128,)}
FACTOR_MATRICES = {"q": (128, 128), "o": (128, 128), "norm": (128,)}


def _random(shapes, seed):
    return {name: jax.random.normal(jax.random.key(seed + i), shape)
            for i, (name, shape) in enumerate(shapes.items())}


@pytest.mark.parametrize("scaling, b1, schedule", [
    (False, 0.0, optim.ScheduleConfig(PEAK, 2, "linear", 6)),
    (True, 0.0, optim.ScheduleConfig(PEAK, 2, "linear", 6)),
    # optax averages lr-scaled updates, we scale the average: equal while lr is constant
    (True, 0.9, constant()),
])
def test_matrix_view_equals_optax_adafactor_on_reshaped_parameters(scaling, b1, schedule):
    cfg = optim.OptimizerConfig("adafactor", schedule, b1=b1, parameter_scaling=scaling)
    params = _random(FACTOR_SHAPES, 0)
    grads = [_random(FACTOR_SHAPES, 10 * step) for step in range(1, 5)]
    ours = run(optim.make_optimizer(cfg, FACTOR_AXES), params, grads)

    def reshape(tree, shapes):
        return {name: tree[name].reshape(shapes[name]) for name in tree}
    reference = optax.adafactor(optim.make_schedule(schedule), momentum=b1 or None,
                                multiply_by_parameter_scale=scaling)
    theirs = run(reference, reshape(params, FACTOR_MATRICES),
                 [reshape(g, FACTOR_MATRICES) for g in grads])
    assert_trees_close(ours, [reshape(u, FACTOR_SHAPES) for u in theirs], rtol=1e-5, atol=1e-9)
    # The raw shapes would not factor at all: optax pairs 128 with head_dim 64 < 128.
    raw = optax.adafactor(1.0).init(params)[0]
    assert raw.v["q"].shape == (128, 2, 64)
    direction_state = optim.make_optimizer(cfg, FACTOR_AXES).init(params)[0]
    factored = direction_state["q"][0]  # the first of the chain: scale_by_factored_rms
    assert factored.v_row.shape == factored.v_col.shape == (1, 128)  # [layers, side]


def test_stacked_layers_update_like_separate_parameters():
    """Per layer: factored statistics, update clipping and parameter scale (t5x's batch axis)."""
    axes = {"q": ("layers", "embed", "heads", "kv")}
    layer_scale = jnp.array([0.1, 1.0, 10.0])[:, None, None, None]  # very different RMS per layer
    params = {"q": layer_scale * jax.random.normal(jax.random.key(0), (3, 128, 2, 64))}
    grads = [{"q": layer_scale * jax.random.normal(jax.random.key(s), (3, 128, 2, 64))}
             for s in (1, 2, 3)]
    cfg = optim.OptimizerConfig("adafactor", constant(), parameter_scaling=True)
    ours = run(optim.make_optimizer(cfg, axes), params, grads)
    for layer in range(3):
        def matrix(tree):
            return {"q": tree["q"][layer].reshape(128, 128)}
        theirs = run(optax.adafactor(PEAK), matrix(params), [matrix(g) for g in grads])
        for ours_step, theirs_step in zip(ours, theirs):
            np.testing.assert_allclose(matrix(ours_step)["q"], theirs_step["q"], rtol=1e-5,
                                       atol=1e-9)


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_parameter_scaling_is_proportional_to_each_layers_rms(name):
    axes = {"w": ("layers", "embed", "mlp")}
    pattern = jax.random.normal(jax.random.key(0), (8, 16))
    rms = jnp.sqrt(jnp.mean(pattern ** 2))
    params = {"w": jnp.stack([0.5 * pattern / rms, 3.0 * pattern / rms])}  # RMS 0.5 and 3
    grad = jax.random.normal(jax.random.key(1), (8, 16))
    grads = {"w": jnp.stack([grad, grad])}  # the same gradient in both layers

    def first_update(scaling):
        cfg = optim.OptimizerConfig(name, constant(), parameter_scaling=scaling)
        tx = optim.make_optimizer(cfg, axes)
        return tx.update(grads, tx.init(params), params)[0]["w"]

    plain, scaled = first_update(False), first_update(True)
    np.testing.assert_allclose(plain[1], plain[0], rtol=1e-6)
    np.testing.assert_allclose(scaled[0], 0.5 * plain[0], rtol=1e-5)
    np.testing.assert_allclose(scaled[1], 3.0 * plain[1], rtol=1e-5)
