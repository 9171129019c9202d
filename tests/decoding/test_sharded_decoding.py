"""On 8 simulated CPU devices, decoding, scoring, `arch-compare eval` and a model target run on a
training mesh (parameters split, batch rows over data x fsdp) and answer exactly as one device.

One subprocess does it all (its compiled programs dominate the time). XLA's CPU backend compiles
there at optimisation level 0, which halves compile time; one-device references are computed in
the same process with the same flags, so only the mesh differs between the compared runs.
"""


import numpy as np
import pytest

from tests.multidevice_helpers import run_with_fake_devices

# Multi-device / multi-process equivalence: `make test-scale` (CI runs it after `make test`).
pytestmark = pytest.mark.scale

SOURCE = """
import json, os
os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
import sys, time
import jax, numpy as np
from arch_compare.cli import main
start = time.time()
tick = lambda what: print(f"{{time.time() - start:.1f}}s {{what}}", file=sys.stderr, flush=True)
from arch_compare.decoding import placement
from arch_compare.decoding.search import DecodeConfig, generate, score
from arch_compare.execution import ExecutionConfig
from arch_compare.imitation.model_target import ModelTarget
from arch_compare.imitation.targets import GenerationSettings, Prompt
from arch_compare.models.native import save_model
from arch_compare.partitioning import MeshConfig, make_mesh
from tests.decoding.test_cached_decoding import PROMPTS, lively_model

root, vocabulary, eval_argv = {root!r}, {vocabulary!r}, {eval_argv!r}
MESHES = {{"1": MeshConfig(), "fsdp4_tensor2": MeshConfig(fsdp=4, tensor=2),
           "data8": MeshConfig(data=8)}}
# Data parallelism only replicates parameters: one architecture shows its batch split suffices.
SKIP = {{("ul2-tiny", "data8")}}
report = {{"decoding": {{}}}}
rng = np.random.default_rng(0)
for name in ("llama-tiny", "ul2-tiny"):
    model, params = lively_model(name)
    host = jax.device_get(params)
    # 3 rows: padded to 4 (fsdp 4) and to 8 (data 8), trimmed back.
    batch = {{"encoder_input_tokens": rng.integers(3, 400, (3, 6)),
              "decoder_input_tokens": rng.integers(3, 400, (3, 5)),
              "decoder_target_tokens": rng.integers(3, 400, (3, 5)),
              "decoder_loss_weights": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])}}
    for label, config in MESHES.items():
        if (name, label) in SKIP:
            continue
        mesh = make_mesh(config, jax.devices()[:config.num_devices])
        placed = placement.place_params(model, host, mesh)
        greedy = generate(model, placed, PROMPTS, DecodeConfig(max_new_tokens=9))
        beam = generate(model, placed, PROMPTS, DecodeConfig(max_new_tokens=9, method="beam",
                                                              num_beams=4))
        q = placed["decoder"]["blocks"]["self_attention"]["q"]["kernel"]
        report["decoding"][f"{{name}}/{{label}}"] = {{
            "greedy": greedy.tokens.tolist(), "greedy_scores": greedy.scores.tolist(),
            "beam": beam.tokens.tolist(), "beam_scores": beam.scores.tolist(),
            "score": score(model, placed, batch, mesh=mesh).tolist(),
            "q_shard": list(q.addressable_shards[0].data.shape), "q_global": list(q.shape),
            "devices": len(q.sharding.device_set)}}
        if label == "1":  # how far float32 rounding alone moves this model's scores
            moved = {{"greedy_scores": 0.0, "score": 0.0}}
            for _ in range(4):
                nudged = jax.tree.map(lambda x: x * (1 + 1e-7 * rng.standard_normal(x.shape)
                                                     ).astype(np.float32), host)
                moved["greedy_scores"] = max(moved["greedy_scores"], np.abs(generate(
                    model, nudged, PROMPTS, DecodeConfig(max_new_tokens=9)).scores
                    - greedy.scores).max().item())
                moved["score"] = max(moved["score"], np.abs(
                    score(model, nudged, batch) - score(model, host, batch)).max().item())
            report["decoding"][f"{{name}}/rounding"] = moved
        tick(f"{{name}} {{label}}")

# A checkpoint for `arch-compare eval` and a model target: the lively llama's weights.
model, params = lively_model("llama-tiny")
checkpoint = save_model(f"{{root}}/llama", model, jax.device_get(params))
for label, mesh in (("1", []), ("fsdp4_tensor2", ["--gin.MESH_FSDP=4", "--gin.MESH_TENSOR=2"])):
    output = f"{{root}}/eval_{{label}}"
    assert main(["eval", *eval_argv, f"--gin.CHECKPOINT_PATH='{{checkpoint}}'",
                 f"--gin.OUTPUT_PATH='{{output}}'", *mesh]) == 0
    report[f"eval/{{label}}"] = json.loads(open(f"{{output}}/metrics.json").read())
    tick(f"eval {{label}}")

prompts = [Prompt.from_text(str(i), text) for i, text in
           enumerate(["What is the capital of France?", "Name a colour.", "Count to three."])]
settings = GenerationSettings(max_tokens=6)
for label, execution in (("1", None), ("data2_fsdp2_tensor2", {{"mesh": {{"data": 2, "fsdp": 2, "tensor": 2}}}})):
    target = ModelTarget.load(checkpoint, vocabulary, batch_size=3, execution=execution)
    q = target.params["decoder"]["blocks"]["self_attention"]["q"]["kernel"]
    report[f"target/{{label}}"] = {{
        "text": [reply.text for reply in target.complete(prompts, settings)],
        "mesh": dict(target.mesh.shape) if target.mesh is not None else None,
        "q_shard": list(placement.shard_shapes(q))}}
    tick(f"target {{label}}")
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory, sentencepiece_model_path):
    from tests.cli.test_train_cli import EVAL, MODEL, inference_flags

    root = tmp_path_factory.mktemp("sharded")
    flags = [flag for flag in inference_flags("", "", sentencepiece_model_path,
                                              EVAL_TASKS="['mmlu_5shot_fixture']")
             if "CHECKPOINT_PATH" not in flag and "OUTPUT_PATH" not in flag]
    argv = [f"--gin_file={MODEL}", f"--gin_file={EVAL}", *flags]
    return run_with_fake_devices(SOURCE.format(root=str(root),
                                               vocabulary=str(sentencepiece_model_path),
                                               eval_argv=argv))


@pytest.mark.parametrize("name, mesh", [("llama-tiny", "fsdp4_tensor2"), ("llama-tiny", "data8"),
                                        ("ul2-tiny", "fsdp4_tensor2")])
def test_meshes_decode_and_score_as_one_device(report, name, mesh):
    single, run = report["decoding"][f"{name}/1"], report["decoding"][f"{name}/{mesh}"]
    assert single["devices"] == 1 and run["devices"] == 8
    assert len(run["greedy"]) == len(run["score"]) == 3  # the padding rows are trimmed
    assert run["greedy"] == single["greedy"]
    assert run["beam"] == single["beam"]
    # fsdp and tensor parallelism add partial sums in another order. The random "lively" weights
    # make some models ill-conditioned (ul2-tiny's scores move by up to ~1e-4 when every weight
    # moves by 1e-7, float32's rounding), so the tolerance is 1e-5 plus twice the most that four
    # such random nudges of every weight (relative 1e-7) move this model's scores on one device.
    rounding = report["decoding"][f"{name}/rounding"]
    for key, nudge in (("greedy_scores", "greedy_scores"), ("beam_scores", "greedy_scores"),
                       ("score", "score")):
        np.testing.assert_allclose(run[key], single[key], atol=1e-5 + 2 * rounding[nudge],
                                   rtol=0, err_msg=key)
    # The outputs vary (a constant model would pass any comparison).
    assert len({tuple(row) for row in single["greedy"]}) == 3
    assert rounding["greedy_scores"] < 1e-3  # a loose tolerance would make a weak test


def test_parameters_are_split_as_in_training(report):
    # q kernel [layers, embed, heads, kv]: embed over fsdp, heads over tensor; data replicates.
    for name in ("llama-tiny", "ul2-tiny"):
        layers, embed, heads, kv = report["decoding"][f"{name}/fsdp4_tensor2"]["q_global"]
        assert report["decoding"][f"{name}/fsdp4_tensor2"]["q_shard"] == [layers, embed // 4,
                                                                         heads // 2, kv]
    data8 = report["decoding"]["llama-tiny/data8"]
    assert data8["q_shard"] == data8["q_global"]


def test_eval_on_a_mesh_writes_the_same_metrics(report):
    single, sharded = report["eval/1"], report["eval/fsdp4_tensor2"]
    # Rank classification: every answer's score decides, so a shifted score would show.
    assert set(single) == {"mmlu_5shot_fixture"}
    assert set(sharded) == set(single)
    for task, metrics in single.items():
        assert sharded[task] == pytest.approx(metrics, abs=1e-6), task


def test_a_model_target_on_a_mesh_answers_the_same_text(report):
    single, sharded = report["target/1"], report["target/data2_fsdp2_tensor2"]
    assert sharded["text"] == single["text"]
    assert any(single["text"])
    assert single["mesh"] is None
    assert sharded["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    layers, embed, heads, kv = single["q_shard"]
    assert sharded["q_shard"] == [layers, embed // 2, heads // 2, kv]
