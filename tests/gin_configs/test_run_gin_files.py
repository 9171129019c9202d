"""Every shipped run and experiment gin file parses and builds its run configuration."""

from pathlib import Path

import gin
import pytest

from arch_compare.cli import runs, study
from arch_compare.imitation.config import StudyConfig
from arch_compare.preference.objective import PreferenceConfig
from arch_compare.trainer.inference import InferenceConfig
from arch_compare.trainer.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[2] / "gin_configs"
RUN_FILES = sorted((ROOT / "runs").glob("*.gin"))
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.gin"))
MODEL_FILE = str(ROOT / "models" / "t5" / "tiny.gin")
PLACEHOLDERS = {"MODEL_DIR": "'/tmp/x'", "MIXTURE_OR_TASK_NAME": "'imitation_hc3_fixture'",
                "TASK_FEATURE_LENGTHS": "{'inputs': 8, 'targets': 8}", "TRAIN_STEPS": "10",
                "BATCH_SIZE": "2", "VOCABULARY_PATH": "'/tmp/spm.model'",
                "CHECKPOINT_PATH": "'/tmp/x/checkpoints'", "OUTPUT_PATH": "'/tmp/out'",
                "EVAL_TASKS": "['nq_open_3shot_fixture']", "STUDY_DIR": "'/tmp/study'",
                "DEMO_BPE": "'/tmp/tokenizer.json'", "DEMO_SENTENCEPIECE_LLAMA": "'/tmp/l.model'",
                "DEMO_SENTENCEPIECE_T5": "'/tmp/t5.model'", "BROAD_FILE": "'/data/s.json'",
                "LOCAL_FILE": "'/data/nq.jsonl'",
                "TARGET_BASE_URL": "'http://127.0.0.1:8000/v1'",
                "PREFERENCE_PAIRS": "'/tmp/pairs.jsonl'", "INITIAL_CHECKPOINT_PATH": "'/tmp/base'",
                **{name: f"'/models/{name.lower()}'" for name in (
                    "GPT2_XL", "GPT2_VOCABULARY", "LLAMA_7B", "LLAMA_VOCABULARY", "T5_XXL",
                    "UL2_20B", "T5_VOCABULARY")}}
# What each run file configures: eval and infer build an InferenceConfig, training a TrainConfig.
BUILDS = {"eval.gin": InferenceConfig, "infer.gin": InferenceConfig}


def unset(name):
    return str(gin.query_parameter(f"{name}/macro.value")) == "%gin.REQUIRED"


def build(files, built=TrainConfig):
    """Parse `files`, give placeholder values to the required macros they leave unset, build."""
    required = runs._required_in(files)
    runs.parse_gin(files, [])
    bindings = [f"{name} = {PLACEHOLDERS[name]}" for name in required if unset(name)]
    runs.parse_gin(files, bindings)
    try:
        runs.check_required(files)
        return required, gin.get_configurable(built)()
    finally:
        gin.clear_config()


@pytest.mark.parametrize("path", RUN_FILES + EXPERIMENTS, ids=lambda p: p.name)
def test_gin_file_parses_and_declares_its_required_macros(path):
    files = [str(path)] if path in EXPERIMENTS else [MODEL_FILE, str(path)]
    text = path.read_text()
    built = BUILDS.get(path.name, TrainConfig)
    if "arch_compare.cli.study.configure" in text:  # a study: the whole grid in one config
        built = study.configure
    required, config = build(files, built)
    for name in runs._required_in([str(path)]):
        assert name in text.split("from __gin__")[0], f"{name} missing from the header"
    assert isinstance(config, StudyConfig if built is study.configure else built)


def test_every_t5x_macro_is_required_by_finetune():
    required = runs._required_in([str(ROOT / "runs" / "finetune.gin")])
    assert {"MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS",
            "BATCH_SIZE"} <= set(required)


def test_preference_is_finetune_with_dpo_on_pairs_by_default():
    """preference.gin includes finetune.gin: its required macros stay required (and listed), its
    run is the same but for the preference fields, which default to DPO against the start."""
    finetune = ROOT / "runs" / "finetune.gin"
    preference = ROOT / "runs" / "preference.gin"
    required = runs._required_in([str(preference)])
    assert set(runs._required_in([str(finetune)])) | {"PREFERENCE_PAIRS"} <= set(required)
    assert required["INITIAL_CHECKPOINT_PATH"] == str(preference)
    _, plain = build([MODEL_FILE, str(finetune)])
    _, config = build([MODEL_FILE, str(preference)])
    assert config.preference == PreferenceConfig("dpo", beta=0.1, label_smoothing=0.0)
    assert (config.preference_pairs, config.initial_checkpoint_path) == ("/tmp/pairs.jsonl",
                                                                         "/tmp/base")
    assert config.preference_reference is None and config.reference_path == "/tmp/base"
    assert config.data.task is None  # read only to evaluate
    assert config.execution == plain.execution
    assert (config.train_steps, config.data.feature_lengths, config.data.batch_size) == (
        plain.train_steps, plain.data.feature_lengths, plain.data.batch_size)
