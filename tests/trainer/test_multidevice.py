"""On 8 simulated CPU devices, every mesh trains exactly like one device, with sharded params."""

import pytest

from tests.multidevice_helpers import run_with_fake_devices

SOURCE = """
import json, sys
import jax, numpy as np, sentencepiece
from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.execution import ExecutionConfig
from arch_compare.partitioning import MeshConfig
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
    report["x".join(map(str, mesh))] = {{
        "losses": [result.losses[s] for s in (1, 2, 3)],
        "q_shard": list(q.addressable_shards[0].data.shape), "q_global": list(q.shape),
        "devices": len(q.sharding.device_set)}}
print(json.dumps(report))
"""
CASES = {
    "llama": ("llama-tiny", {"num_heads": 8, "head_dim": 8, "num_kv_heads": 8}),
    "t5": ("t5-tiny", {"num_heads": 8, "head_dim": 8}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_meshes_give_the_same_loss_per_step_as_one_device(case, tmp_path,
                                                          sentencepiece_model_path):
    preset, overrides = CASES[case]
    report = run_with_fake_devices(SOURCE.format(preset=preset, overrides=overrides,
                                                 vocabulary=str(sentencepiece_model_path),
                                                 root=str(tmp_path)))
    single = report.pop("1x1x1")
    assert single["devices"] == 1
    for mesh, run in report.items():
        assert run["losses"] == pytest.approx(single["losses"], abs=1e-5), mesh
        assert run["devices"] == 8
    # q kernel [layers, embed, heads, kv]: embed over fsdp, heads over tensor
    assert report["8x1x1"]["q_shard"] == report["8x1x1"]["q_global"]  # data parallel: replicated
    layers, embed, heads, kv = report["2x2x2"]["q_global"]
    assert report["2x2x2"]["q_shard"] == [layers, embed // 2, heads // 2, kv]
    assert report["1x1x8"]["q_shard"] == [layers, embed, heads // 8, kv]
