"""On 8 simulated CPU devices, every mesh trains exactly like one device, with sharded params."""

import pytest

from tests.multidevice_helpers import run_with_fake_devices

# Multi-device / multi-process equivalence: `make test-scale` (CI runs it after `make test`).
pytestmark = pytest.mark.scale

SOURCE = """
import json, sys
import jax, numpy as np, sentencepiece
from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.execution import ExecutionConfig
from arch_compare.partitioning import MeshConfig, make_mesh, param_shardings
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train
import arch_compare_tasks.catalogue

preset, overrides, vocabulary_path, root = {preset!r}, {overrides!r}, {vocabulary!r}, {root!r}
config = get_preset(preset, overrides)
vocabulary = vocabulary_for_model(config, vocabulary_path)
report = {{}}
for mesh in [(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 1, 8)]:
    devices = int(np.prod(mesh))
    result = train(build_model(config), vocabulary, TrainConfig(
        model_dir=f"{{root}}/{{'x'.join(map(str, mesh))}}", train_steps=3, checkpoint_period=3,
        data=DataConfig("imitation_sharegpt_fixture", {{"inputs": 64, "targets": 32}},
                        batch_size=8),
        optimizer=optim.OptimizerConfig("adamw", optim.ScheduleConfig(3e-3)),
        execution=ExecutionConfig(mesh=MeshConfig(*mesh))), progress=False)
    q = result.state.params["decoder"]["blocks"]["self_attention"]["q"]["kernel"]
    mu_q = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(result.state.opt_state)[0]
            if "mu" in jax.tree_util.keystr(path)
            and "['self_attention']['q']['kernel']" in jax.tree_util.keystr(path)]
    report["x".join(map(str, mesh))] = {{
        "losses": [result.losses[s] for s in (1, 2, 3)],
        "q_shard": list(q.addressable_shards[0].data.shape), "q_global": list(q.shape),
        "mu_q_shard": list(mu_q[0].addressable_shards[0].data.shape),
        "devices": len(q.sharding.device_set)}}
if {auto}:
    # 'auto' with 2 microbatches: batch 8 must split over data x fsdp x 2, so the
    # data-parallel and fsdp meshes of tensor 1 are skipped (CPU: no memory size to check).
    result = train(build_model(config), vocabulary, TrainConfig(
        model_dir=f"{{root}}/auto", train_steps=3, checkpoint_period=3,
        data=DataConfig("imitation_sharegpt_fixture", {{"inputs": 64, "targets": 32}},
                        batch_size=8),
        optimizer=optim.OptimizerConfig("adamw", optim.ScheduleConfig(3e-3)),
        execution=ExecutionConfig(mesh="auto", microbatches=2)), progress=False)
    report["auto"] = {{"losses": [result.losses[s] for s in (1, 2, 3)],
                      "mesh": result.execution["mesh"], "devices": result.execution["devices"]}}
    # Random initialisation straight into shards: each device creates only its own.
    model = build_model(config)
    mesh = make_mesh(MeshConfig(1, 4, 2))
    params = model.init(jax.random.key(0), shardings=param_shardings(
        model.logical_axes(), model.abstract_params(), mesh))
    q = params["decoder"]["blocks"]["self_attention"]["q"]["kernel"]
    report["init"] = {{"q_shards": sorted({{tuple(s.data.shape) for s in q.addressable_shards}}),
                      "q_global": list(q.shape), "devices": len(q.sharding.device_set)}}
print(json.dumps(report))
"""
CASES = {
    "llama": ("llama-tiny", {"num_heads": 8, "head_dim": 8, "num_kv_heads": 8}, True),
    "t5": ("t5-tiny", {"num_heads": 8, "head_dim": 8}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_meshes_give_the_same_loss_per_step_as_one_device(case, tmp_path,
                                                          sentencepiece_model_path):
    preset, overrides, auto = CASES[case]
    report = run_with_fake_devices(SOURCE.format(preset=preset, overrides=overrides, auto=auto,
                                                 vocabulary=str(sentencepiece_model_path),
                                                 root=str(tmp_path)))
    if auto:
        # q kernel [layers, embed, heads, kv] created sharded: embed over fsdp 4, heads over tensor 2
        init = report.pop("init")
        layers, embed, heads, kv = init["q_global"]
        assert init["q_shards"] == [[layers, embed // 4, heads // 2, kv]]
        assert init["devices"] == 8
        picked = report.pop("auto")
        assert picked["mesh"] == {"data": 4, "fsdp": 1, "tensor": 2} and picked["devices"] == 8
        assert picked["losses"] == pytest.approx(report["1x1x1"]["losses"], abs=1e-5)
    single = report.pop("1x1x1")
    assert single["devices"] == 1
    for mesh, run in report.items():
        assert run["losses"] == pytest.approx(single["losses"], abs=1e-5), mesh
        assert run["devices"] == 8
    # q kernel [layers, embed, heads, kv]: embed over fsdp, heads over tensor
    assert report["8x1x1"]["q_shard"] == report["8x1x1"]["q_global"]  # data parallel: replicated
    layers, embed, heads, kv = report["2x2x2"]["q_global"]
    assert report["2x2x2"]["q_shard"] == [layers, embed // 2, heads // 2, kv]
    assert report["2x2x2"]["mu_q_shard"] == report["2x2x2"]["q_shard"]  # Adam's mu: same
    assert report["1x1x8"]["q_shard"] == [layers, embed, heads // 8, kv]
