"""Tiny training runs shared by the trainer tests."""

import pytest

from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train
from arch_compare_tasks import catalogue  # noqa: F401  (registers the fixture tasks)

TASK = "imitation_sharegpt_fixture"
LENGTHS = {"inputs": 96, "targets": 48}


@pytest.fixture(scope="session")
def vocabulary_path(sentencepiece_model_path, bpe_tokenizer_path):
    """The fixture vocabulary for a family: byte-level BPE for GPT-2, SentencePiece otherwise."""
    return lambda config: bpe_tokenizer_path if config.family == "gpt2" else (
        sentencepiece_model_path)


@pytest.fixture(scope="session")
def run_training(vocabulary_path):
    def run(model_dir, preset, steps, overrides=None, **config):
        model_config = get_preset(preset, overrides)
        vocabulary = vocabulary_for_model(model_config, vocabulary_path(model_config))
        settings = {"checkpoint_period": 4, "optimizer": optim.OptimizerConfig(
            "adamw", optim.ScheduleConfig(3e-3)), **config}
        data = settings.pop("data", DataConfig(TASK, LENGTHS, batch_size=4))
        return train(build_model(model_config), vocabulary,
                     TrainConfig(model_dir=str(model_dir), data=data, train_steps=steps,
                                 **settings), progress=False)
    return run
