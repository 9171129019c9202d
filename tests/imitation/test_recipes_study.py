"""Fine-tuning recipes as a study axis: the configuration's errors, the plan (run ids, steps,
order, what each run records), and one tiny study run in-process with every recipe on its one
cell (`recipes_study.gin`: gpt2-tiny, 8 broad examples), shared by the tests below: the rows and
their labels, `wise` at alpha 0 and 1 reproducing the base and full runs exactly, `lora`
evaluated with its merged weights, `mix` trained on both tasks, the comparisons of every recipe
run, and a database written before recipes."""

import dataclasses
import json
import sqlite3
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from arch_compare.cli import study as study_cli
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.imitation import config as study_config
from arch_compare.imitation import evaluation, plan as plan_lib, study_recipes
from arch_compare.results import ResultsStore, Run
from arch_compare_tasks import demo_world

RECIPES_STUDY = Path(__file__).with_name("recipes_study.gin")
CELL = "imitation/gpt2-tiny/broad/8"
BASE = "base/gpt2-tiny"
LABELS = ("mix", "l2sp", "lora", "wise@0", "wise@0.5", "wise@1")
TASKS = ("demo_facts_known", "demo_style")


# --- configuration -------------------------------------------------------------------------------

def _config(recipes, **changes):
    fields = dict(
        name="s", directory="/tmp/s", target={"kind": "function", "name": "t", "function": "x:y"},
        models=[{"preset": "t5-tiny", "vocabulary": "/v", "base_checkpoint": "/b"},
                {"preset": "gpt2-tiny", "vocabulary": "/v",
                 "pretraining": {"task": "demo_pretraining", "steps": 2}}],
        sources=[{"name": "broad", "prompts_task": "demo_broad_prompts", "amounts": [4, 8]},
                 {"name": "chosen", "prompts_task": "demo_local_prompts", "amounts": [4],
                  "selection": {"strategies": ["diversity"]}}],
        evaluations=[{"task": "demo_style", "kind": "style"}],
        training={"feature_lengths": {"inputs": 8, "targets": 8}, "batch_size": 2,
                  "optimizer": {"name": "adamw", "schedule": {"peak_learning_rate": 1e-3}}})
    return study_config.StudyConfig(**{**fields, **changes}, recipes=recipes)


L2SP = {"name": "pull", "kind": "l2sp", "l2sp_weight": 0.1}


@pytest.mark.parametrize("recipes, message", [
    ([L2SP | {"models": ["gpt2-tiyn"]}],
     r"recipe 'pull': models \['gpt2-tiyn'\] are not in the study"),
    ([L2SP | {"sources": ["local"]}], r"recipe 'pull': sources \['local'\] are not in the study"),
    ([L2SP | {"amounts": [5]}], r"recipe 'pull': amounts \[5\] are not in the study"),
    ([L2SP | {"sources": ["chosen"]}], "recipe 'pull': selects no cell"),
    ([{"name": "mixed", "kind": "mix", "mix_rate": 0.2}],
     "recipe 'mixed': model 't5-tiny' is not pre-trained here.*give the recipe a mix_task"),
    ([{"name": "again", "kind": "full"}], "recipe 'again': every cell has its 'full' run"),
    ([L2SP | {"name": "w@0.5"}, {"name": "w", "kind": "wise", "wise_alphas": [0.5]}],
     "run labels repeat"),
    ([L2SP | {"lambda": 1.0}], r"recipes\[0\]: unknown key\(s\) lambda"),
    ([L2SP, L2SP], "recipe names repeat"),
])
def test_recipe_configuration_errors_name_the_recipe(recipes, message):
    with pytest.raises(ValueError, match=message):
        _config(recipes)


def test_a_mix_recipe_on_a_checkpoint_model_needs_its_own_text_and_records_it():
    config = _config([{"name": "mixed", "kind": "mix", "mix_rate": 0.2,
                       "mix_task": "pretraining_text_fixture"}])
    mixed = [p for p in plan_lib.plan(config) if p.run.recipe == "mixed"]
    assert {p.run.config["recipe"]["mix_task"] for p in mixed} == {"pretraining_text_fixture"}
    # A study without recipes keeps the configuration (and so the database hash) it had.
    assert "recipes" not in _config([]).to_dict() and "recipes" in config.to_dict()


@pytest.fixture(scope="module")
def demo_vocabulary(tmp_path_factory):
    return demo_world.write_vocabularies(tmp_path_factory.mktemp("world"))["DEMO_BPE"]


@pytest.fixture(scope="module")
def recipes_config(tmp_path_factory, demo_vocabulary):
    directory = tmp_path_factory.mktemp("recipes")
    return study_cli.study_config([str(RECIPES_STUDY)], [f"STUDY_DIR='{directory}'",
                                                        f"VOCABULARY='{demo_vocabulary}'"])


def test_the_plan_puts_each_recipe_after_its_cell_with_its_steps(recipes_config):
    planned = plan_lib.plan(recipes_config)
    assert [p.run.run_id for p in planned] == [BASE, CELL, *(f"{CELL}/{label}" for label in
                                                             LABELS), "target/demo-target"]
    by_id = {p.run.run_id: p for p in planned}
    full = by_id[CELL]
    assert (full.steps, full.run.recipe, full.recipe) == (2, "full", None)  # 8 examples, batch 4
    steps = {label: by_id[f"{CELL}/{label}"].steps for label in LABELS}
    # Same imitation examples: mixing half pre-training text doubles the steps; wise trains none.
    assert steps == {"mix": 4, "l2sp": 2, "lora": 2, "wise@0": 0, "wise@0.5": 0, "wise@1": 0}
    for label in LABELS:
        item = by_id[f"{CELL}/{label}"]
        assert item.run.recipe == label and item.run.selection == "random"
        assert (item.run.data_source, item.run.data_examples) == ("broad", 8)
        assert item.run.config["recipe"]["label"] == label
        assert item.run.config["training"]["steps"] == item.steps
    mix = by_id[f"{CELL}/mix"].run.config["recipe"]
    assert (mix["kind"], mix["mix_rate"], mix["mix_task"]) == ("mix", 0.5, "demo_pretraining")
    assert by_id[f"{CELL}/l2sp"].run.config["recipe"]["l2sp_weight"] == 0.01
    assert by_id[f"{CELL}/lora"].run.config["recipe"]["lora"]["rank"] == 4
    wise = by_id[f"{CELL}/wise@0.5"]
    assert (wise.run.config["recipe"]["alpha"], wise.full_run) == (0.5, CELL)
    # The budget prices each recipe: mixing's extra steps, no training for wise (evaluations
    # only, the same as any run's).
    estimates = plan_lib.estimates(recipes_config, planned)
    assert estimates[f"{CELL}/mix"]["train_flops"] == pytest.approx(
        2 * estimates[CELL]["train_flops"])
    assert estimates[f"{CELL}/wise@0.5"]["train_flops"] == 0
    assert (estimates[f"{CELL}/wise@0.5"]["evaluation_flops"]
            == estimates[CELL]["evaluation_flops"] > 0)


# --- the study -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recipes_study(recipes_config):
    """The study run once in-process; the LoRA run's trained tree and merged weights kept."""
    from arch_compare.imitation.study import StudyRunner
    captured, lines = {}, []
    real_merged = study_recipes.merged

    def merged(model, recipe, params):
        result = real_merged(model, recipe, params)
        captured.update(model=model, recipe=recipe, trained=params, merged=result)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study_recipes, "merged", merged)
        outcome = StudyRunner(recipes_config, progress=False, echo=lines.append).run(yes=True)
    assert outcome.failed == [], lines
    with ResultsStore(outcome.database, read_only=True) as store:
        runs = {run.run_id: run for run in store.runs("recipes")}
        metrics = {(m.run_id, m.task, m.metric): m.value for m in store.metrics("recipes")}
        predictions = {(p.run_id, p.task): [] for p in store.predictions("recipes")}
        for p in store.predictions("recipes"):
            predictions[p.run_id, p.task].append(p.output)
        comparisons = store.comparisons("recipes")
    return dataclasses.make_dataclass("Study", ["runs", "metrics", "predictions", "comparisons",
                                                "captured", "lines", "directory"])(
        runs, metrics, predictions, comparisons, captured, lines,
        Path(recipes_config.directory))


@pytest.mark.scale  # the tiny recipes study (about a minute of compiling): make test-scale
def test_every_recipe_run_is_a_row_with_its_label(recipes_study):
    runs = recipes_study.runs
    assert {run_id: run.status for run_id, run in runs.items()} == {
        run_id: "done" for run_id in (BASE, CELL, *(f"{CELL}/{l}" for l in LABELS),
                                      "target/demo-target")}
    assert runs[CELL].recipe == "full" and runs[BASE].recipe is None
    for label in LABELS:
        run = runs[f"{CELL}/{label}"]
        assert run.recipe == label and run.config["recipe"]["label"] == label
        for task in TASKS:  # evaluated like every run
            assert len(recipes_study.predictions[run.run_id, task]) == 6
    measured = {label: runs[f"{CELL}/{label}"].measured for label in LABELS}
    assert [measured[label]["steps"] for label in LABELS] == [4, 2, 2, 0, 0, 0]
    assert runs[CELL].measured["steps"] == 2
    # Training FLOPs: measured for what trained, none for an interpolation.
    assert measured["mix"]["flops"] == pytest.approx(2 * runs[CELL].measured["flops"])
    assert measured["wise@0.5"]["flops"] == 0 and measured["wise@0.5"]["interpolated"] == {
        "base": str(recipes_study.directory / "runs" / "base" / "gpt2-tiny"), "full": CELL,
        "alpha": 0.5}
    # What trained, as the trainer counted it, is what the budget priced: every weight, LoRA's
    # adapters (a small share of them), nothing for wise.
    trained = {run_id: (run.measured["trainable_parameters"],
                        run.estimate["trainable_parameters"]) for run_id, run in runs.items()
               if run.role == "imitation"}
    assert all(ours == priced for ours, priced in trained.values()), trained
    lora, full = trained[f"{CELL}/lora"][0], trained[CELL][0]
    assert 0 < lora < full / 10 and full == runs[CELL].parameters
    assert trained[f"{CELL}/wise@0.5"] == (0, 0)
    assert runs[f"{CELL}/lora"].estimate["train_flops"] < runs[CELL].estimate["train_flops"]
    # The adapters exported in PEFT's layout beside the run, for the base they were trained on.
    exported = Path(measured["lora"]["peft_adapters"])
    assert exported == recipes_study.directory / "runs" / CELL / "lora" / "peft_adapters"
    adapter_config = json.loads((exported / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (4, 8.0)
    assert (exported / "adapter_model.safetensors").stat().st_size > 0


@pytest.mark.scale  # the tiny recipes study (about a minute of compiling): make test-scale
def test_mix_trained_on_the_imitation_data_and_the_pre_training_text(recipes_study):
    mix = {entry["task"]: entry["examples"]
           for entry in recipes_study.runs[f"{CELL}/mix"].measured["data"]}
    assert set(mix) == {"study:recipes:broad:8", "demo_pretraining"}
    assert mix["study:recipes:broad:8"] == 8 and mix["demo_pretraining"] > 8
    full = recipes_study.runs[CELL].measured["data"]
    assert [entry["task"] for entry in full] == ["study:recipes:broad:8"]


@pytest.mark.scale  # the tiny recipes study (about a minute of compiling): make test-scale
def test_wise_at_alpha_0_and_1_is_the_base_and_the_full_run_exactly(recipes_study):
    for label, same_as in (("wise@0", BASE), ("wise@1", CELL)):
        for task in TASKS:
            assert (recipes_study.predictions[f"{CELL}/{label}", task]
                    == recipes_study.predictions[same_as, task]), (label, task)
        ours = {key[1:]: value for key, value in recipes_study.metrics.items()
                if key[0] == f"{CELL}/{label}"}
        theirs = {key[1:]: value for key, value in recipes_study.metrics.items()
                  if key[0] == same_as}
        assert ours == theirs and ours, label
    # The base and full runs differ, so the two checks above are not the same check.
    assert recipes_study.predictions[BASE, "demo_style"] != recipes_study.predictions[
        CELL, "demo_style"]


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    base = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, "bfloat16")}
    full = {"w": -np.arange(6, dtype=np.float32).reshape(2, 3) + 0.3,
            "b": np.full(3, 3.0, "bfloat16")}
    for alpha, expected in ((0.0, base), (1.0, full)):
        got = study_recipes.interpolate(base, full, alpha)
        for name in base:
            assert got[name].dtype == base[name].dtype
            np.testing.assert_array_equal(np.asarray(got[name]), expected[name])
    half = study_recipes.interpolate(base, full, 0.25)
    np.testing.assert_allclose(np.asarray(half["w"]), 0.75 * base["w"] + 0.25 * full["w"],
                               rtol=1e-6)
    assert np.asarray(half["b"]).tolist() == [1.5, 1.5, 1.5]


WISE_SHARDED = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from arch_compare.imitation import study_recipes
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("fsdp", "tensor"))
sharding = NamedSharding(mesh, P("fsdp", "tensor"))
base = {"w": jax.device_put(jnp.arange(32.0).reshape(4, 8), sharding)}
full = {"w": jax.device_put(-jnp.arange(32.0).reshape(4, 8), sharding)}
got = study_recipes.interpolate(base, full, 0.25)["w"]
print(json.dumps({"same": got.sharding.is_equivalent_to(sharding, 2),
                  "shards": len(got.addressable_shards),
                  "close": bool(np.allclose(np.asarray(got), 0.5 * np.arange(32.0).reshape(4, 8)))}))
"""


@pytest.mark.scale  # a 4-device subprocess: `make test-scale`
def test_interpolation_keeps_the_weights_shardings():
    from tests.multidevice_helpers import run_with_fake_devices
    assert run_with_fake_devices(WISE_SHARDED, num_devices=4) == {
        "same": True, "shards": 4, "close": True}


@pytest.mark.scale  # the tiny recipes study (about a minute of compiling): make test-scale
def test_lora_is_evaluated_with_its_merged_weights(recipes_study, recipes_config):
    captured = recipes_study.captured
    model, recipe = captured["model"], captured["recipe"]
    trained = traverse_util.flatten_dict(jax.device_get(captured["trained"]))
    merged = traverse_util.flatten_dict(jax.device_get(captured["merged"]))
    axes = traverse_util.flatten_dict(model.with_lora(recipe.lora).logical_axes(),
                                      is_leaf=lambda _, node: isinstance(node, tuple))
    adapted = [path[:-1] for path in trained if path[-1] == "lora_a"]
    assert adapted and not any(path[-1].startswith("lora_") for path in merged)
    assert set(merged) == {path for path in trained if not path[-1].startswith("lora_")}
    scale = recipe.lora.alpha / recipe.lora.rank
    moved = 0
    for where in adapted:  # W + scale * A @ B, in float64 here
        a, b = (np.asarray(trained[(*where, name)], np.float64) for name in ("lora_a", "lora_b"))
        kernel = np.asarray(trained[(*where, "kernel")], np.float64)
        lead = sum(name == "layers" for name in axes[(*where, "kernel")])
        rank = a.shape[-1]
        delta = np.matmul(a.reshape(*a.shape[:lead], -1, rank),
                          b.reshape(*b.shape[:lead], rank, -1)).reshape(kernel.shape)
        np.testing.assert_allclose(np.asarray(merged[(*where, "kernel")], np.float64),
                                   kernel + scale * delta, rtol=1e-5, atol=1e-6)
        moved += bool(np.any(b != 0))  # the adapters trained (B starts at zero)
    assert moved == len(adapted)
    # Decoding those weights again, outside the study, gives the answers it recorded.
    study_model = recipes_config.models[0]
    vocabulary = vocabulary_for_model(study_model.config, study_model.vocabulary)
    for task in TASKS:
        spec = next(e for e in recipes_config.evaluations if e.task == task)
        again = evaluation.model_predictions(
            model, captured["merged"], vocabulary, task, spec.split, spec.max_examples,
            feature_lengths=recipes_config.eval_feature_lengths,
            batch_size=recipes_config.eval_batch_size,
            max_new_tokens=recipes_config.decode_max_tokens, progress=False)
        assert again == recipes_study.predictions[f"{CELL}/lora", task], task


def test_a_bfloat16_base_is_merged_in_the_models_parameter_dtype():
    """The adapters' update is added in float32 (the run's param_dtype), not rounded into the
    frozen bfloat16 base: the merged kernel is the base widened plus scale * A @ B."""
    from arch_compare.models import build_model
    from arch_compare.models.zoo import get_preset
    from arch_compare.recipes import LoraConfig, Recipe
    model = build_model(get_preset("gpt2-tiny"))
    recipe = Recipe("lora", "lora", lora=LoraConfig(rank=2, alpha=2.0, targets=("q",),
                                                     base_dtype="bfloat16"))
    params = traverse_util.flatten_dict(model.with_lora(recipe.lora).init(jax.random.key(0)))
    where = next(path[:-1] for path in params if path[-1] == "lora_b")
    params[(*where, "lora_b")] = jax.random.normal(jax.random.key(1),
                                                   params[(*where, "lora_b")].shape) * 1e-3
    assert params[(*where, "kernel")].dtype == "bfloat16"
    merged = traverse_util.flatten_dict(study_recipes.merged(
        model, recipe, traverse_util.unflatten_dict(params)))
    assert {str(leaf.dtype) for leaf in merged.values()} == {"float32"}
    a, b = (np.asarray(params[(*where, name)], np.float64) for name in ("lora_a", "lora_b"))
    kernel = np.asarray(params[(*where, "kernel")].astype("float32"), np.float64)
    # scale alpha / rank = 1; [layers, d_model, heads, head_dim]
    delta = np.einsum("...dr,...rhe->...dhe", a, b)
    np.testing.assert_allclose(np.asarray(merged[(*where, "kernel")], np.float64),
                               kernel + delta, rtol=1e-6, atol=1e-8)
    assert np.abs(delta).max() > 0


@pytest.mark.scale  # the tiny recipes study (about a minute of compiling): make test-scale
def test_every_recipe_run_is_compared_with_its_base_and_its_full_run(recipes_study):
    headline = {("demo_facts_known", "fact_accuracy"), ("demo_style", "list_when_target_lists"),
                ("demo_style", "length_pearson")}
    found = {(c.run_id, c.baseline_run_id, c.task, c.metric): c
             for c in recipes_study.comparisons}
    for label in LABELS:
        for baseline in (BASE, CELL):
            for task, metric in headline:
                assert (f"{CELL}/{label}", baseline, task, metric) in found, (label, baseline)
    # Identical answers: a difference of exactly 0, an interval of [0, 0], not significant.
    for label, same_as in (("wise@0", BASE), ("wise@1", CELL)):
        for task, metric in headline:
            same = found[f"{CELL}/{label}", same_as, task, metric]
            if same.difference is not None:
                assert (same.difference, same.low, same.high, same.significant) == (
                    0.0, 0.0, 0.0, False)
    # The full run is compared with the base only: no recipe run is its baseline.
    assert not any(c.run_id == CELL and c.baseline_run_id != BASE
                   for c in recipes_study.comparisons)
    assert f"comparisons: {len(recipes_study.comparisons)} paired" in "\n".join(
        recipes_study.lines)


@pytest.mark.scale  # the tiny recipes study (about a minute of compiling): make test-scale
def test_running_the_study_again_skips_every_done_recipe_run(recipes_study, recipes_config):
    from arch_compare.imitation.study import StudyRunner
    outcome = StudyRunner(recipes_config, progress=False, echo=lambda *_: None).run(yes=True)
    assert (outcome.done, outcome.skipped, outcome.failed) == (0, len(recipes_study.runs), [])
    with ResultsStore(outcome.database, read_only=True) as store:  # the same rows, no more
        assert {run.run_id: run.measured for run in store.runs("recipes")} == {
            run_id: run.measured for run_id, run in recipes_study.runs.items()}
        assert len(store.comparisons("recipes")) == len(recipes_study.comparisons)


# --- the results database --------------------------------------------------------------------------

def test_a_database_written_before_recipes_reads_full_and_takes_labels(tmp_path):
    path = tmp_path / "old.sqlite"
    run = Run("imitation/m/broad/8", "imitation", "m", "decoder_only", "gpt2", {},
              data_source="broad", data_examples=8)
    with ResultsStore(path) as store:
        store.register_study("old", {}, tmp_path)
        store.put_run("old", run)
    with sqlite3.connect(path) as db:  # as it was before the column existed
        db.execute("ALTER TABLE runs DROP COLUMN recipe")
    with ResultsStore(path, read_only=True) as reader:
        assert reader.runs("old")[0].recipe == "full"
    with ResultsStore(path) as store:  # a writer adds the column back
        store.put_run("old", dataclasses.replace(run, run_id=f"{run.run_id}/wise@0.5",
                                                 recipe="wise@0.5"))
        assert [r.recipe for r in store.runs("old")] == ["full", "wise@0.5"]
