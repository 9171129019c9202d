"""The mesh, the logical-axis rules and the shardings they produce.

Specs are planned in this (one-device) process against `AbstractMesh`es, which carry only axis
sizes; the placement of real arrays and the sharded forward pass run in a subprocess with 8 fake
CPU devices (see `multidevice_helpers`).
"""

import functools
import textwrap

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from arch_compare import partitioning as pt
from arch_compare.models import PRESETS, build_model
from arch_compare.models.zoo import TINY_PRESETS
from tests.multidevice_helpers import run_with_fake_devices

MESH_SHAPES = [(8, 1, 1), (2, 2, 2), (1, 1, 8), (1, 8, 1)]


def abstract_mesh(shape):
    return AbstractMesh(shape, pt.MESH_AXES)


@functools.cache
def model(name):
    return build_model(PRESETS[name])


def specs_of(name, mesh_shape):
    m = model(name)
    return pt.param_partition_specs(m.logical_axes(), m.abstract_params(),
                                    abstract_mesh(mesh_shape))


def spec_leaves(tree):
    return jax.tree.leaves(tree, is_leaf=lambda node: isinstance(node, P))


def mesh_axes_in(spec):
    """Every mesh axis a spec names, with repeats (a tuple entry names several)."""
    names = []
    for entry in spec:
        names.extend(() if entry is None else (entry,) if isinstance(entry, str) else entry)
    return names


# --- the table -------------------------------------------------------------------------------


def test_rules_cover_every_logical_axis_the_models_use():
    used = set()
    for name in TINY_PRESETS:
        axes = model(name).logical_axes()
        used.update(n for names in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
                    for n in names)
    assert {"vocab", "embed", "heads", "kv_heads", "kv", "mlp", "layers", "relpos_buckets",
            "position"} <= used
    assert used <= set(pt.LOGICAL_AXIS_RULES), used - set(pt.LOGICAL_AXIS_RULES)


def test_rules_name_only_mesh_axes_and_never_put_parameters_on_data():
    for name, target in pt.LOGICAL_AXIS_RULES.items():
        spec = pt.logical_to_partition_spec((name,))
        assert set(mesh_axes_in(spec)) <= set(pt.MESH_AXES), (name, target)
        if name != "batch":  # parameters are replicated across the data axis
            assert "data" not in mesh_axes_in(spec), name


def test_logical_to_partition_spec_follows_the_table():
    assert pt.logical_to_partition_spec(("layers", "embed", "heads", "kv")) == \
        P(None, "fsdp", "tensor", None)
    assert pt.logical_to_partition_spec(("batch", "length")) == P(("data", "fsdp"), None)


def test_a_mesh_axis_taken_earlier_leaves_the_later_dimension_unsharded():
    # batch already uses fsdp, so embed (-> fsdp) is left alone in an activation.
    assert pt.logical_to_partition_spec(("batch", "length", "embed")) == \
        P(("data", "fsdp"), None, None)
    rules = {"a": "tensor", "b": "tensor", "c": ("data", "fsdp"), "d": "fsdp"}
    assert pt.logical_to_partition_spec(("a", "b"), rules) == P("tensor", None)
    # A partial overlap also leaves the whole later dimension unsharded.
    assert pt.logical_to_partition_spec(("d", "c"), rules) == P("fsdp", None)
    assert pt.logical_to_partition_spec(("c", "d", "a"), rules) == P(("data", "fsdp"), None,
                                                                      "tensor")


# --- parameter specs -------------------------------------------------------------------------


def test_llama_specs_on_a_2x2x2_mesh():
    specs = specs_of("llama-tiny", (2, 2, 2))  # d=64, h=4, g=2, f=128, v=512: all even
    block = specs["decoder"]["blocks"]
    attention, mlp = block["self_attention"], block["mlp"]
    assert attention["q"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert attention["k"]["kernel"] == attention["v"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert attention["o"]["kernel"] == P(None, "tensor", None, "fsdp")
    assert mlp["wi_0"]["kernel"] == mlp["wi_1"]["kernel"] == P(None, "fsdp", "tensor")
    assert mlp["wo"]["kernel"] == P(None, "tensor", "fsdp")
    assert block["pre_mlp_norm"]["scale"] == P(None, "fsdp")
    assert specs["token_embed"]["embedding"] == P("tensor", "fsdp")
    assert specs["output_head"]["projection"]["kernel"] == P("fsdp", "tensor")


def test_gpt2_and_t5_tables_and_biases():
    gpt2 = specs_of("gpt2-tiny", (2, 2, 2))
    assert gpt2["position_embed"]["embedding"] == P(None, "fsdp")
    assert gpt2["decoder"]["blocks"]["mlp"]["wi"]["bias"] == P(None, "tensor")
    assert gpt2["decoder"]["blocks"]["self_attention"]["q"]["bias"] == P(None, "tensor", None)
    t5 = specs_of("t5-tiny", (2, 2, 2))
    assert t5["encoder_relative_bias"]["embedding"] == P(None, "tensor")
    assert t5["decoder"]["blocks"]["cross_attention"]["k"]["kernel"] == \
        P(None, "fsdp", "tensor", None)


def test_data_only_mesh_replicates_every_parameter():
    for name in TINY_PRESETS:
        for spec in spec_leaves(specs_of(name, (8, 1, 1))):
            assert "data" not in mesh_axes_in(spec), (name, spec)


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES + [(1, 2, 4), (2, 4, 1)])
@pytest.mark.parametrize("name", TINY_PRESETS)
def test_no_mesh_axis_appears_twice_and_every_split_divides(name, mesh_shape):
    m = model(name)
    mesh = abstract_mesh(mesh_shape)
    specs = spec_leaves(pt.param_partition_specs(m.logical_axes(), m.abstract_params(), mesh))
    shapes = jax.tree.leaves(m.abstract_params())
    assert len(specs) == len(shapes) > 0
    for spec, leaf in zip(specs, shapes):
        axes = mesh_axes_in(spec)
        assert len(axes) == len(set(axes)), spec
        assert len(spec) == len(leaf.shape)
        for entry, size in zip(spec, leaf.shape):
            ways = 1
            for axis in mesh_axes_in(P(entry)):
                ways *= mesh_shape[pt.MESH_AXES.index(axis)]
            assert size % ways == 0, (spec, leaf.shape)


# --- shapes that do not divide ---------------------------------------------------------------


def test_dimensions_that_do_not_divide_fall_back_to_replicated():
    # llama-tiny has 4 query heads and 2 KV heads: an 8-way tensor axis divides neither, but
    # still divides d_ff (128) and the vocabulary (512).
    block = specs_of("llama-tiny", (1, 1, 8))["decoder"]["blocks"]
    assert block["self_attention"]["q"]["kernel"] == P(None, "fsdp", None, None)
    assert block["self_attention"]["k"]["kernel"] == P(None, "fsdp", None, None)
    assert block["mlp"]["wo"]["kernel"] == P(None, "tensor", "fsdp")
    # 4 heads divide a 4-way axis, 2 KV heads do not.
    block = specs_of("llama-tiny", (1, 1, 4))["decoder"]["blocks"]
    assert block["self_attention"]["q"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert block["self_attention"]["k"]["kernel"] == P(None, "fsdp", None, None)


def test_real_presets_fall_back_where_published_sizes_do_not_divide():
    # llama2-70b: 64 query heads but 8 KV heads on a 16-way tensor axis.
    attention = specs_of("llama2-70b", (1, 1, 16))["decoder"]["blocks"]["self_attention"]
    assert attention["q"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert attention["k"]["kernel"] == P(None, "fsdp", None, None)
    # GPT-2's vocabulary of 50257 is odd, so its (tied) embedding cannot split over tensor.
    specs = specs_of("gpt2-small", (1, 2, 2))
    assert specs["token_embed"]["embedding"] == P(None, "fsdp")
    assert specs["decoder"]["blocks"]["mlp"]["wi"]["kernel"] == P(None, "fsdp", "tensor")


def test_fit_spec_to_shape_checks_the_product_of_a_tuple_entry():
    mesh = abstract_mesh((2, 2, 1))
    assert pt.fit_spec_to_shape(P(("data", "fsdp"), None), (8, 3), mesh) == \
        P(("data", "fsdp"), None)
    # 6 is divisible by each axis (2) but not by their product (4).
    assert pt.fit_spec_to_shape(P(("data", "fsdp"), None), (6, 3), mesh) == P(None, None)


# --- batches ---------------------------------------------------------------------------------


def test_batch_sharding_splits_rows_over_data_and_fsdp():
    mesh = abstract_mesh((2, 2, 2))
    assert pt.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert pt.global_batch_size_ok(8, mesh) and pt.global_batch_size_ok(4, mesh)
    with pytest.raises(ValueError, match=r"global batch size 6 .* multiple of 4 .*data=2 x "
                                         r"fsdp=2.*try 4 or 8"):
        pt.global_batch_size_ok(6, mesh)
    with pytest.raises(ValueError, match="global batch size 0"):
        pt.global_batch_size_ok(0, mesh)
    # The tensor axis does not split the batch.
    assert pt.global_batch_size_ok(3, abstract_mesh((1, 1, 8)))


# --- the mesh and bad input ------------------------------------------------------------------


def test_mesh_config_validates_its_fields():
    assert pt.MeshConfig(2, 2, 2).num_devices == 8
    assert pt.MeshConfig(fsdp=4).shape == (1, 4, 1)
    for bad in ({"data": 0}, {"fsdp": -2}, {"tensor": 1.5}, {"tensor": True}):
        field = next(iter(bad))
        with pytest.raises(ValueError, match=f"MeshConfig.{field} must be a positive int"):
            pt.MeshConfig(**bad)


def test_make_mesh_on_one_device_and_the_device_count_error():
    mesh = pt.make_mesh(pt.MeshConfig())
    assert mesh.axis_names == pt.MESH_AXES and dict(mesh.shape) == {
        "data": 1, "fsdp": 1, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match=r"MeshConfig\(data=2, fsdp=2, tensor=2\) needs .* 8 "
                                         r"devices, but jax.devices\(\) has 1"):
        pt.make_mesh(pt.MeshConfig(2, 2, 2))
    with pytest.raises(ValueError, match="needs .* 4 devices, but the given devices has 1"):
        pt.make_mesh(pt.MeshConfig(tensor=4), devices=jax.devices()[:1])


def test_unknown_names_and_mismatched_trees_are_reported_with_their_key():
    with pytest.raises(KeyError, match="'joined_kv' has no partitioning rule"):
        pt.logical_to_partition_spec(("embed", "joined_kv"))
    with pytest.raises(ValueError, match=r"rule 'mlp' -> 'model' names unknown mesh axis model"):
        pt.logical_to_partition_spec(("mlp",), {"mlp": "model"})
    mesh = abstract_mesh((1, 1, 1))
    axes = {"w": ("embed", "nonsense")}
    shapes = {"w": jax.ShapeDtypeStruct((4, 4), "float32")}
    with pytest.raises(KeyError, match=r"parameter \['w'\]: logical axis 'nonsense'"):
        pt.param_partition_specs(axes, shapes, mesh)
    with pytest.raises(ValueError, match=r"parameter \['w'\]: logical axes \('embed',\) do not "
                                         r"match its shape \(4, 4\)"):
        pt.param_partition_specs({"w": ("embed",)}, shapes, mesh)
    with pytest.raises(ValueError, match="different trees"):
        pt.param_partition_specs({"v": ("embed", "mlp")}, shapes, mesh)
    with pytest.raises(ValueError, match="params and shardings have different trees"):
        pt.shard_params({"w": 1.0, "b": 2.0}, {"w": None})


def test_shard_params_on_one_device_keeps_values():
    m = model("llama-tiny")
    params = m.init(jax.random.key(0))
    mesh = pt.make_mesh(pt.MeshConfig())
    placed = pt.shard_params(params, pt.param_shardings(m.logical_axes(), params, mesh))
    for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(placed)):
        assert after.sharding.mesh == mesh
        assert (before == after).all()


# --- 8 fake devices --------------------------------------------------------------------------

# llama-tiny with 8 query heads (head_dim 8) and 2 KV heads: an 8-way tensor axis splits query
# heads, d_ff and the vocabulary but not the KV heads, so placement and fallback both run.
MULTIDEVICE_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from arch_compare import partitioning as pt
    from arch_compare.models import build_model, get_preset

    assert jax.device_count() == 8, jax.devices()
    model = build_model(get_preset("llama-tiny", {"num_heads": 8, "head_dim": 8}))
    params = model.init(jax.random.key(0))
    tokens = np.random.default_rng(0).integers(1, model.config.vocab_size, (8, 16))
    batch = {"decoder_input_tokens": jnp.asarray(tokens, jnp.int32)}
    reference = np.asarray(jax.jit(model.logits)(params, batch))  # one device
    report = {"reference_devices": len(jax.tree.leaves(params)[0].sharding.device_set)}
    for shape in %(meshes)r:
        mesh = pt.make_mesh(pt.MeshConfig(*shape))
        shardings = pt.param_shardings(model.logical_axes(), model.abstract_params(), mesh)
        placed = pt.shard_params(params, shardings)
        assert pt.global_batch_size_ok(8, mesh)
        placed_batch = jax.device_put(batch, pt.batch_sharding(mesh))
        logits = jax.jit(model.logits, in_shardings=(shardings, pt.batch_sharding(mesh)))(
            placed, placed_batch)
        leaves = jax.tree_util.tree_flatten_with_path(placed)[0]
        report[str(shape)] = {
            "params": {jax.tree_util.keystr(path): {
                "global": list(leaf.shape),
                "shard": list(leaf.addressable_shards[0].data.shape),
                "spec": [list(e) if isinstance(e, tuple) else e for e in leaf.sharding.spec],
                "devices": len(leaf.sharding.device_set)} for path, leaf in leaves},
            "batch_shard": list(placed_batch["decoder_input_tokens"]
                                .addressable_shards[0].data.shape),
            "logits_devices": len(logits.sharding.device_set),
            "max_abs_diff": float(np.max(np.abs(np.asarray(logits) - reference))),
            "reference_scale": float(np.max(np.abs(reference))),
        }

    # The encoder-decoder path (cross-attention, relative-position tables) on the 2x2x2 mesh.
    model = build_model(get_preset("t5-tiny"))
    params = model.init(jax.random.key(1))
    batch = {"encoder_input_tokens": jnp.asarray(tokens[:, :12], jnp.int32),
             "decoder_input_tokens": jnp.asarray(tokens[:, 4:], jnp.int32)}
    reference = np.asarray(jax.jit(model.logits)(params, batch))
    mesh = pt.make_mesh(pt.MeshConfig(2, 2, 2))
    shardings = pt.param_shardings(model.logical_axes(), model.abstract_params(), mesh)
    placed = pt.shard_params(params, shardings)
    # No in_shardings: jit takes the shardings of the already placed arguments.
    logits = jax.jit(model.logits)(placed, jax.device_put(batch, pt.batch_sharding(mesh)))
    cross_k = placed["decoder"]["blocks"]["cross_attention"]["k"]["kernel"]
    report["t5-tiny"] = {
        "cross_k_shard": list(cross_k.addressable_shards[0].data.shape),
        "logits_devices": len(logits.sharding.device_set),
        "max_abs_diff": float(np.max(np.abs(np.asarray(logits) - reference))),
        "reference_scale": float(np.max(np.abs(reference))),
    }
    print(json.dumps(report))
""") % {"meshes": [tuple(shape) for shape in MESH_SHAPES]}

# Shard shapes derived by hand from the rules (d=64, h=8, g=2, e=8, f=128, v=512, 2 layers).
ATTENTION = "['decoder']['blocks']['self_attention']"
MLP = "['decoder']['blocks']['mlp']"
EXPECTED_SHARDS = {
    (8, 1, 1): {f"{ATTENTION}['q']['kernel']": [2, 64, 8, 8],
                "['token_embed']['embedding']": [512, 64], "batch": [1, 16]},
    (2, 2, 2): {f"{ATTENTION}['q']['kernel']": [2, 32, 4, 8],
                f"{ATTENTION}['k']['kernel']": [2, 32, 1, 8],
                f"{ATTENTION}['o']['kernel']": [2, 4, 8, 32],
                f"{MLP}['wi_0']['kernel']": [2, 32, 64],
                f"{MLP}['wo']['kernel']": [2, 64, 32],
                "['token_embed']['embedding']": [256, 32],
                "['output_head']['projection']['kernel']": [32, 256],
                "['decoder']['final_norm']['scale']": [32], "batch": [2, 16]},
    (1, 1, 8): {f"{ATTENTION}['q']['kernel']": [2, 64, 1, 8],
                f"{ATTENTION}['k']['kernel']": [2, 64, 2, 8],  # 2 KV heads: replicated
                f"{ATTENTION}['o']['kernel']": [2, 1, 8, 64],
                f"{MLP}['wi_1']['kernel']": [2, 64, 16],
                "['token_embed']['embedding']": [64, 64],
                "['decoder']['final_norm']['scale']": [64], "batch": [8, 16]},
    (1, 8, 1): {f"{ATTENTION}['q']['kernel']": [2, 8, 8, 8],
                f"{MLP}['wo']['kernel']": [2, 128, 8],
                "['token_embed']['embedding']": [512, 8],
                "['decoder']['final_norm']['scale']": [8], "batch": [1, 16]},
}


@pytest.fixture(scope="module")
def multidevice_report():
    return run_with_fake_devices(MULTIDEVICE_SCRIPT, num_devices=8)


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_sharded_params_really_split(multidevice_report, mesh_shape):
    report = multidevice_report[str(mesh_shape)]
    sizes = dict(zip(pt.MESH_AXES, mesh_shape))
    for key, want in EXPECTED_SHARDS[mesh_shape].items():
        got = report["batch_shard"] if key == "batch" else report["params"][key]["shard"]
        assert got == want, (key, got, want)
    split = 0
    for key, leaf in report["params"].items():
        assert leaf["devices"] == 8, key
        # Each shard is the global shape divided by the mesh axes its spec names.
        expected = list(leaf["global"])
        for dim, entry in enumerate(leaf["spec"]):
            for axis in [] if entry is None else [entry] if isinstance(entry, str) else entry:
                expected[dim] //= sizes[axis]
        assert leaf["shard"] == expected, (key, leaf)
        split += leaf["shard"] != leaf["global"]
    # Only a data-parallel mesh keeps whole copies of every parameter on each device.
    assert (split == 0) == (mesh_shape == (8, 1, 1)), split


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_sharded_logits_equal_single_device_logits(multidevice_report, mesh_shape):
    report = multidevice_report[str(mesh_shape)]
    assert multidevice_report["reference_devices"] == 1
    assert report["logits_devices"] == 8
    assert report["reference_scale"] > 0.1  # the comparison is not between near-zeros
    assert report["max_abs_diff"] <= 1e-5, report["max_abs_diff"]


def test_encoder_decoder_sharded_logits_equal_single_device_logits(multidevice_report):
    report = multidevice_report["t5-tiny"]
    assert report["cross_k_shard"] == [2, 32, 2, 16]  # [layers, embed/fsdp, kv_heads/tensor, kv]
    assert report["logits_devices"] == 8
    assert report["reference_scale"] > 0.1
    assert report["max_abs_diff"] <= 1e-5, report["max_abs_diff"]
