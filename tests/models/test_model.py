"""The wrappers on tiny random models: metadata, shapes, and packing/padding equivalences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_compare.models import PRESETS, build_model
from arch_compare.models.zoo import TINY_PRESETS

AXIS_NAMES = {"layers", "vocab", "embed", "heads", "kv_heads", "kv", "mlp", "relpos_buckets",
              "position"}


@functools.cache
def tiny_model(name):
    model = build_model(PRESETS[name])
    return model, model.init(jax.random.key(0))


@pytest.fixture(params=TINY_PRESETS)
def tiny(request):
    return tiny_model(request.param)


def test_every_parameter_has_logical_axes(tiny):
    model, params = tiny
    axes = model.logical_axes()
    shapes = jax.tree.map(lambda x: x.shape, params)
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    flat_shapes = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(flat_axes) == len(flat_shapes) > 0
    for names, shape in zip(flat_axes, flat_shapes):
        assert len(names) == len(shape) and set(names) <= AXIS_NAMES, (names, shape)
    blocks = axes["decoder"]["blocks"]
    assert blocks["self_attention"]["q"]["kernel"] == ("layers", "embed", "heads", "kv")
    assert blocks["mlp"]["wo"]["kernel"] == ("layers", "mlp", "embed")


def test_init_matches_abstract_shapes(tiny):
    model, params = tiny
    abstract = model.abstract_params()
    assert jax.tree.structure(abstract) == jax.tree.structure(params)
    for want, got in zip(jax.tree.leaves(abstract), jax.tree.leaves(params)):
        assert (want.shape, want.dtype) == (got.shape, got.dtype)


def _random_tokens(rng, length, vocab):
    return rng.integers(2, vocab, size=(1, length))


def test_packed_examples_match_separate_runs(tiny):
    """Two examples packed in one row (segment ids + positions) give the logits of each alone."""
    model, params = tiny
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    lengths = (5, 4)
    if model.config.is_encoder_decoder:
        input_lengths = (6, 3)
        inputs = [_random_tokens(rng, n, vocab) for n in input_lengths]
        targets = [_random_tokens(rng, n, vocab) for n in lengths]
        alone = [model.logits(params, {"encoder_input_tokens": i, "decoder_input_tokens": t})
                 for i, t in zip(inputs, targets)]
        packed = {
            "encoder_input_tokens": np.concatenate(inputs, axis=1),
            "encoder_segment_ids": np.concatenate(
                [np.full((1, n), k + 1) for k, n in enumerate(input_lengths)], axis=1),
            "encoder_positions": np.concatenate([np.arange(n)[None] for n in input_lengths], 1),
        }
    else:
        targets = [_random_tokens(rng, n, vocab) for n in lengths]
        alone = [model.logits(params, {"decoder_input_tokens": t}) for t in targets]
        packed = {}
    packed.update({
        "decoder_input_tokens": np.concatenate(targets, axis=1),
        "decoder_segment_ids": np.concatenate(
            [np.full((1, n), k + 1) for k, n in enumerate(lengths)], axis=1),
        "decoder_positions": np.concatenate([np.arange(n)[None] for n in lengths], axis=1),
    })
    together = np.asarray(model.logits(params, packed))
    np.testing.assert_allclose(together[:, :lengths[0]], alone[0], atol=1e-5)
    np.testing.assert_allclose(together[:, lengths[0]:], alone[1], atol=1e-5)


@pytest.mark.parametrize("name", ["t5-tiny", "ul2-tiny"])
def test_encoder_padding_does_not_change_logits(name):
    model, params = tiny_model(name)
    rng = np.random.default_rng(1)
    inputs = _random_tokens(rng, 6, model.config.vocab_size)
    targets = _random_tokens(rng, 4, model.config.vocab_size)
    padded = np.pad(inputs, ((0, 0), (0, 5)))  # 0 is the padding id
    short = model.logits(params, {"encoder_input_tokens": inputs, "decoder_input_tokens": targets})
    long = model.logits(params, {"encoder_input_tokens": padded, "decoder_input_tokens": targets})
    np.testing.assert_allclose(short, long, atol=1e-5)


def test_decoder_is_causal(tiny):
    """Changing a later token leaves the logits of earlier positions unchanged."""
    model, params = tiny
    rng = np.random.default_rng(2)
    targets = _random_tokens(rng, 6, model.config.vocab_size)
    changed = targets.copy()
    changed[0, 4] = (changed[0, 4] + 1) % model.config.vocab_size
    batch = lambda t: ({"encoder_input_tokens": targets, "decoder_input_tokens": t}
                       if model.config.is_encoder_decoder else {"decoder_input_tokens": t})
    before = np.asarray(model.logits(params, batch(targets)))
    after = np.asarray(model.logits(params, batch(changed)))
    np.testing.assert_allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert np.abs(before[:, 4:] - after[:, 4:]).max() > 1e-4


def test_missing_feature_is_named(tiny):
    model, params = tiny
    with pytest.raises(KeyError, match="decoder_input_tokens"):
        model.logits(params, {"targets": jnp.zeros((1, 3), jnp.int32)})


def test_bfloat16_parameters_and_activations():
    config = PRESETS["llama-tiny"].replace(dtype="bfloat16", param_dtype="bfloat16")
    model = build_model(config)
    params = model.init(jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("bfloat16")}
    logits = model.logits(params, {"decoder_input_tokens": jnp.ones((1, 4), jnp.int32)})
    assert logits.dtype == jnp.bfloat16 and bool(jnp.isfinite(logits).all())


def _batch_for(model, seed, target_length, input_length):
    rng = np.random.default_rng(seed)
    batch = {"decoder_input_tokens": _random_tokens(rng, target_length, 512)}
    if model.config.is_encoder_decoder:
        batch["encoder_input_tokens"] = _random_tokens(rng, input_length, 512)
    return batch


@pytest.mark.parametrize("name", ["llama-tiny", "t5-tiny"])
def test_unrolled_layers_equal_scanned_layers(name):
    model, params = tiny_model(name)
    unrolled = build_model(PRESETS[name].replace(scan_layers=False))
    batch = _batch_for(model, 3, 12, 9)
    np.testing.assert_allclose(unrolled.logits(params, batch), model.logits(params, batch),
                               atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2-tiny", "ul2-tiny"])
def test_rematerialised_layers_give_the_same_gradients(name):
    model, params = tiny_model(name)
    remat = build_model(PRESETS[name].replace(remat="block"))
    batch = _batch_for(model, 4, 10, 7)

    def loss(m):
        return lambda p: jnp.mean(jax.nn.log_softmax(m.logits(p, batch))[..., 5])

    plain, rematerialised = jax.grad(loss(model))(params), jax.grad(loss(remat))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain, rematerialised)
