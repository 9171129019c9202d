"""Preference optimisation through the training loop: DPO learns its pairs, the stored reference
scores are the reference weights' own, a run resumed halfway ends where a straight run ends,
and a directory or pairs file that does not fit is refused with the reason."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset, lora
from arch_compare.models.hf.checkpoint import CheckpointError
from arch_compare.models.loading import load_params
from arch_compare.preference.batches import pair_batches
from arch_compare.preference.objective import PreferenceConfig, sequence_logps
from arch_compare.preference.pairs import PairFileError, PreferencePair, read_pairs, write_pairs
from arch_compare.recipes import LoraConfig
from arch_compare.trainer.checkpoints import Checkpoints
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig
from arch_compare.trainer.preference_data import REFERENCE_FILE
from arch_compare.trainer.recipes import FULL
from arch_compare.trainer.steps import abstract_train_state
from tests.multidevice_helpers import run_with_fake_devices
from tests.trainer.conftest import LENGTHS, TASK

PAIRS = 4  # per step
DPO = PreferenceConfig("dpo", beta=0.1)
ADAMW = optim.OptimizerConfig("adamw", optim.ScheduleConfig(3e-3))
SUBJECTS = ("the old librarian", "every decoder", "this dataset", "each experiment",
            "the blue notebook", "a careful student", "the final score", "my neighbour")
CHOSEN = ("{s} reads a difficult question with great care.",
          "{s} explains the final score to everyone.")
REJECTED = ("No.", "I do not know anything about {s}, sorry.")


def preference_pairs() -> list[PreferencePair]:
    """Sixteen pairs: a careful sentence about the prompt's subject preferred over a refusal."""
    pairs = []
    for i, subject in enumerate(SUBJECTS):
        for j in range(2):
            pairs.append(PreferencePair(
                f"Tell me something about {subject} (question {2 * i + j}).",
                CHOSEN[j].format(s=subject).capitalize(),
                REJECTED[(i + j) % 2].format(s=subject)))
    return pairs


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_pairs(path, preference_pairs())
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, run_training):
    """preset -> a run directory of 4 ordinary steps: the policy's start and the reference."""
    runs = {}

    def get(preset: str):
        if preset not in runs:
            runs[preset] = tmp_path_factory.mktemp(f"base-{preset}")
            run_training(runs[preset], preset, steps=4)
        return runs[preset]
    return get


def preference_run(run_training, model_dir, preset, base, pairs_path, steps, **config):
    settings = {"preference": DPO, "preference_pairs": str(pairs_path),
                "initial_checkpoint_path": str(base), "optimizer": ADAMW,
                "data": DataConfig(TASK, LENGTHS, batch_size=PAIRS, seed=3), **config}
    return run_training(model_dir, preset, steps, **settings)


def model_and_vocabulary(preset, vocabulary_path):
    config = get_preset(preset)
    return build_model(config), vocabulary_for_model(config, vocabulary_path(config))


def stored_reference(model_dir) -> dict[str, np.ndarray]:
    with np.load(model_dir / REFERENCE_FILE) as stored:
        return {key: stored[key] for key in stored.files}


def numpy_logps(model, params, row: dict[str, np.ndarray]) -> float:
    """One row's summed log-probability of its weighted targets: the model's logits, then a
    float64 log-softmax in numpy (no padding rows, no batching, no reference_logps)."""
    logits = np.asarray(jax.jit(model.logits)(params, {k: v[None] for k, v in row.items()})[0],
                        np.float64)  # [l, v]
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    targets = row["decoder_target_tokens"]
    picked = log_probs[np.arange(len(targets)), targets]
    return float(np.sum(picked * row["decoder_loss_weights"]))


def policy_scores(model, params, vocabulary, pairs_path_) -> tuple[np.ndarray, np.ndarray]:
    """(chosen [n], rejected [n]) summed log-probabilities of every kept pair under `params`."""
    batches = pair_batches(model, vocabulary, read_pairs(pairs_path_), feature_lengths=LENGTHS,
                           batch_size=PAIRS)
    score = jax.jit(lambda p, b: sequence_logps(model, p, b)[0])
    chosen = np.concatenate([np.asarray(score(params, b["chosen"]))[:rows]
                             for b, rows in zip(batches.batches, batches.rows)])
    rejected = np.concatenate([np.asarray(score(params, b["rejected"]))[:rows]
                               for b, rows in zip(batches.batches, batches.rows)])
    return chosen, rejected


# Whole runs (a base run, then DPO): `make test-scale`; `make test` has the step's learning
# (test_preference_steps.py) and a DPO run through the command line (tests/cli).
@pytest.mark.scale
@pytest.mark.parametrize("preset", ["gpt2-tiny", "t5-tiny"])
def test_dpo_learns_its_pairs_and_stores_the_reference_scores(
        tmp_path, run_training, vocabulary_path, pairs_path, base_run, preset):
    model, vocabulary = model_and_vocabulary(preset, vocabulary_path)
    base = base_run(preset)
    result = preference_run(run_training, tmp_path / "dpo", preset, base, pairs_path, steps=12,
                            eval_period=6, eval_batches=2)
    assert result.pairs.kept == len(preference_pairs()), result.pairs.describe()
    reference = load_params(model, base)

    # The stored scores are the reference weights' own, row by row, computed here another way.
    stored = stored_reference(tmp_path / "dpo")
    rows = pair_batches(model, vocabulary, preference_pairs(), feature_lengths=LENGTHS,
                        batch_size=1)
    direct = {side: np.array([numpy_logps(model, reference, {k: v[0] for k, v in
                                                              batch[side].items()})
                              for batch in rows.batches]) for side in ("chosen", "rejected")}
    for side in ("chosen", "rejected"):
        difference = np.max(np.abs(stored[f"reference_{side}_logps"] - direct[side]))
        print(f"{preset}: stored vs numpy reference {side} log-probabilities, max |diff| "
              f"{difference:.2e}")
        assert difference < 1e-4  # float32 sums of up to ~40 tokens' log-probabilities

    # The trained policy ranks its pairs as preferred (at the reference it ranks none: h = 0).
    chosen, rejected = policy_scores(model, result.state.params, vocabulary, pairs_path)
    margins = DPO.beta * ((chosen - stored["reference_chosen_logps"])
                          - (rejected - stored["reference_rejected_logps"]))  # [n]
    accuracy = float(np.mean(margins > 0))
    print(f"{preset}: after 12 DPO steps accuracy {accuracy:.2f}, mean margin "
          f"{margins.mean():.3f}, min {margins.min():.3f}; logged losses "
          f"{[round(v, 3) for v in result.losses.values()]}")
    assert accuracy >= 0.9
    assert margins.mean() > 1.0
    assert result.losses[12] < 0.5 * result.losses[1]

    # Everything an ordinary run writes, with the preference metrics and settings.
    logged = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text()
              .splitlines()]
    train_logged = [entry for entry in logged if entry["kind"] == "train"]
    assert [entry["step"] for entry in train_logged] == list(range(1, 13))
    # The evaluation reads data.task's validation split: the token loss, as in any run.
    assert [(e["step"], sorted(e)) for e in logged if e["kind"] == "validation"] == [
        (step, ["accuracy", "kind", "loss", "step"]) for step in (6, 12)]
    logged = train_logged
    assert logged[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)  # policy = reference
    assert logged[-1]["preference_accuracy"] >= 0.75 and logged[-1]["pairs"] == PAIRS
    recorded = json.loads((tmp_path / "dpo" / "execution.json").read_text())["recipe"]
    assert recorded["preference"]["beta"] == DPO.beta
    assert recorded["preference"]["reference"] == str(base.absolute())
    assert any((tmp_path / "dpo" / "tensorboard").iterdir())


def final_position(model_dir, preset) -> int:
    model = build_model(get_preset(preset))
    optimizer = optim.make_optimizer(ADAMW, model.logical_axes())
    checkpoints = Checkpoints(model_dir, get_preset(preset))
    try:
        return checkpoints.restore(abstract_train_state(optimizer, model.abstract_params(),
                                                        FULL))[1]
    finally:
        checkpoints.close()


@pytest.mark.scale
@pytest.mark.parametrize("preset", ["gpt2-tiny", "t5-tiny"])
def test_a_resumed_run_equals_a_straight_one_and_rescores_the_reference_not_the_policy(
        tmp_path, run_training, vocabulary_path, pairs_path, base_run, preset, caplog):
    model, vocabulary = model_and_vocabulary(preset, vocabulary_path)
    base = base_run(preset)
    straight = preference_run(run_training, tmp_path / "straight", preset, base, pairs_path,
                              steps=8)
    halfway = preference_run(run_training, tmp_path / "resumed", preset, base, pairs_path,
                             steps=4)
    # Stored scores from other pairs (a changed fingerprint): the resumed run must score the
    # reference again, from its checkpoint, not from the policy it restores.
    stored = stored_reference(tmp_path / "resumed")
    with (tmp_path / "resumed" / REFERENCE_FILE).open("wb") as out:
        np.savez(out, fingerprint=np.asarray("other pairs"),
                 reference_chosen_logps=stored["reference_chosen_logps"] + 1.0,
                 reference_rejected_logps=stored["reference_rejected_logps"])
    policy_chosen, _ = policy_scores(model, halfway.state.params, vocabulary, pairs_path)
    moved = np.max(np.abs(policy_chosen - stored["reference_chosen_logps"]))
    assert moved > 1e-2  # the halfway policy's scores are not the reference's
    with caplog.at_level("WARNING"):
        resumed = preference_run(run_training, tmp_path / "resumed", preset, base, pairs_path,
                                 steps=8)
    assert "scoring the reference again" in caplog.text
    assert resumed.resumed_from == 4
    rescored = stored_reference(tmp_path / "resumed")
    for key in ("reference_chosen_logps", "reference_rejected_logps"):
        np.testing.assert_allclose(rescored[key], stored[key], atol=1e-6)
    differences = jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b)))),
        straight.state.params, resumed.state.params))
    print(f"{preset}: 8 straight vs 4 + 4 resumed DPO steps, max parameter difference "
          f"{max(differences):.2e} (halfway policy moved {moved:.3f} nats from the reference)")
    assert max(differences) <= 1e-6
    for step in (5, 6, 7, 8):
        assert resumed.losses[step] == pytest.approx(straight.losses[step], abs=1e-6)
    assert final_position(tmp_path / "resumed", preset) == final_position(
        tmp_path / "straight", preset) == 8


def test_resuming_with_other_preference_settings_or_as_a_token_run_is_refused(
        tmp_path, run_training, pairs_path, base_run):
    base = base_run("gpt2-tiny")
    preference_run(run_training, tmp_path / "run", "gpt2-tiny", base, pairs_path, steps=1)
    with pytest.raises(CheckpointError, match=r"another recipe \(preference: .*beta"):
        preference_run(run_training, tmp_path / "run", "gpt2-tiny", base, pairs_path, steps=2,
                       preference=PreferenceConfig("dpo", beta=0.2))
    with pytest.raises(CheckpointError, match="another recipe"):
        run_training(tmp_path / "run", "gpt2-tiny", steps=2)


def test_a_bad_line_in_the_pairs_file_is_the_pairs_modules_error(tmp_path, run_training,
                                                                 base_run):
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, preference_pairs()[:2])
    with path.open("a") as out:
        out.write(json.dumps({"prompt": "Hello?", "chosen": "Hi."}) + "\n")
    with pytest.raises(PairFileError, match=r"pairs\.jsonl:3: missing key\(s\) 'rejected'"):
        preference_run(run_training, tmp_path / "run", "gpt2-tiny", base_run("gpt2-tiny"), path,
                       steps=1)


@pytest.mark.parametrize("fields, message", [
    ({"preference": DPO, "preference_pairs": "p.jsonl"},
     "preference needs initial_checkpoint_path"),
    ({"preference": DPO, "initial_checkpoint_path": "base"}, "preference needs preference_pairs"),
    ({"preference_pairs": "p.jsonl", "initial_checkpoint_path": "base"},
     "preference_pairs is set but TrainConfig.preference is None"),
    ({"preference_reference": "ref"}, "preference_reference is set"),
    ({"preference": {"beta": 0.1, "los": "dpo"}, "preference_pairs": "p.jsonl",
      "initial_checkpoint_path": "base"}, "TrainConfig.preference: unknown key"),
    ({"preference": DPO, "preference_pairs": "p.jsonl", "initial_checkpoint_path": "base",
      "data": DataConfig(TASK, LENGTHS, batch_size=4, pack=True)}, "data.pack must be False"),
    ({"preference": DPO, "preference_pairs": "p.jsonl", "initial_checkpoint_path": "base",
      "data": DataConfig(TASK, LENGTHS, batch_size=4, trim_padding=True)},
     "data.trim_padding must be False"),
])
def test_preference_fields_are_validated(fields, message):
    settings = {"model_dir": "run", "train_steps": 1, "optimizer": ADAMW,
                "data": DataConfig(TASK, LENGTHS, batch_size=4), **fields}
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_a_dict_preference_is_read_as_a_preference_config():
    config = TrainConfig(model_dir="run", train_steps=1, optimizer=ADAMW,
                         data=DataConfig(TASK, LENGTHS, batch_size=4),
                         preference={"loss": "ipo", "beta": 0.5}, preference_pairs="p.jsonl",
                         initial_checkpoint_path="base")
    assert config.preference == PreferenceConfig("ipo", beta=0.5)
    assert config.reference_path == "base"


@pytest.mark.scale
def test_lora_dpo_trains_the_adapters_only_and_l2sp_adds_its_penalty(
        tmp_path, run_training, pairs_path, base_run):
    base = base_run("gpt2-tiny")
    model = build_model(get_preset("gpt2-tiny"))
    config = LoraConfig(rank=4)
    result = preference_run(run_training, tmp_path / "lora", "gpt2-tiny", base, pairs_path,
                            steps=10, lora=config,
                            optimizer=optim.OptimizerConfig("adamw", optim.ScheduleConfig(2e-2)))
    frozen, adapters = lora.split(result.state.params)
    jax.tree.map(np.testing.assert_array_equal, frozen, load_params(model, base))
    assert result.trainable_params == lora.adapter_count(model.with_lora(config)) == sum(
        leaf.size for leaf in jax.tree.leaves(adapters))
    logged = [json.loads(line) for line in (tmp_path / "lora" / "metrics.jsonl").read_text()
              .splitlines()]
    print("lora DPO losses", [round(entry["loss"], 3) for entry in logged],
          "accuracy", [entry["preference_accuracy"] for entry in logged])
    # B starts at zero: the policy starts at the reference.
    assert logged[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert np.mean([e["loss"] for e in logged[-3:]]) < 0.8 * np.log(2)
    assert np.mean([e["reward_margin"] for e in logged[-3:]]) > 0.1

    l2sp = preference_run(run_training, tmp_path / "l2sp", "gpt2-tiny", base, pairs_path,
                          steps=2, l2sp_weight=0.5)
    logged = [json.loads(line) for line in (tmp_path / "l2sp" / "metrics.jsonl").read_text()
              .splitlines()]
    assert logged[0]["l2sp_penalty"] == 0.0 < logged[1]["l2sp_penalty"]  # at the anchor, then not
    assert l2sp.execution["recipe"]["l2sp_weight"] == 0.5


MULTIDEVICE_SOURCE = """
import json
import jax, numpy as np
from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.execution import ExecutionConfig
from arch_compare.models import build_model, get_preset
from arch_compare.models.native import save_model
from arch_compare.partitioning import MeshConfig
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train
import arch_compare_tasks.catalogue

root, vocabulary_path, pairs = {root!r}, {vocabulary!r}, {pairs!r}
config = get_preset("t5-tiny")
model = build_model(config)
save_model(f"{{root}}/base", model, model.init(jax.random.key(5)))
report, params, scores = {{}}, {{}}, {{}}
for mesh in [(1, 1, 1), (2, 2, 2)]:
    name = "x".join(map(str, mesh))
    result = train(model, vocabulary_for_model(config, vocabulary_path), TrainConfig(
        model_dir=f"{{root}}/{{name}}", train_steps=3, checkpoint_period=3,
        data=DataConfig("imitation_sharegpt_fixture", {{"inputs": 96, "targets": 48}},
                        batch_size=8),
        optimizer=optim.OptimizerConfig("adamw", optim.ScheduleConfig(3e-3), eps=1e-3),
        execution=ExecutionConfig(mesh=MeshConfig(*mesh), microbatches=2),
        initial_checkpoint_path=f"{{root}}/base", preference=PreferenceConfig("dpo", beta=0.1),
        preference_pairs=pairs), progress=False)
    params[name] = jax.tree.map(np.asarray, result.state.params)
    with np.load(f"{{root}}/{{name}}/reference_logps.npz") as stored:
        scores[name] = np.concatenate([stored["reference_chosen_logps"],
                                       stored["reference_rejected_logps"]])
    leaf = jax.tree.leaves(result.state.params)[0]
    report[name] = {{"losses": [result.losses[s] for s in (1, 2, 3)],
                    "devices": len(leaf.sharding.device_set)}}
report["largest_param_difference"] = max(
    float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params["1x1x1"]),
                                                   jax.tree.leaves(params["2x2x2"])))
report["largest_score_difference"] = float(np.max(np.abs(scores["1x1x1"] - scores["2x2x2"])))
print(json.dumps(report))
"""


@pytest.mark.scale  # two t5-tiny runs in a fresh interpreter on 8 fake devices
def test_a_preference_run_on_eight_devices_equals_one_device(tmp_path, sentencepiece_model_path,
                                                              pairs_path):
    """Pair batches (nested features and reference scores) split by rows over data x fsdp,
    the reference scored on the mesh, two microbatches, heads over tensor. Adam's eps is 1e-3:
    at optax's 1e-8 a weight whose gradient is ~0 moves by about lr * sign(rounding noise), so
    two summation orders differed by 8.5e-4 (0.28 lr) while the losses agreed to 1e-5."""
    report = run_with_fake_devices(MULTIDEVICE_SOURCE.format(
        root=str(tmp_path), vocabulary=str(sentencepiece_model_path), pairs=str(pairs_path)))
    single, sharded = report["1x1x1"], report["2x2x2"]
    print(f"t5-tiny DPO losses {single['losses']} (1 device) {sharded['losses']} (8); "
          f"parameters differ by at most {report['largest_param_difference']:.1e}, reference "
          f"scores by {report['largest_score_difference']:.1e}")
    assert single["devices"] == 1 and sharded["devices"] == 8
    assert sharded["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert report["largest_param_difference"] < 1e-5
    assert report["largest_score_difference"] < 1e-4
    assert single["losses"][-1] < single["losses"][0]
