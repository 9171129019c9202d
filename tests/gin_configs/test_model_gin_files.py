"""Every shipped model gin file parses and yields exactly its preset."""

from pathlib import Path

import gin
import pytest

from arch_compare.models import PRESETS

ROOT = Path(__file__).resolve().parents[2] / "gin_configs" / "models"
GIN_FILES = sorted(ROOT.rglob("*.gin"))


def preset_of(path: Path) -> str:
    return f"{path.parent.name}-{path.stem}"


def test_one_gin_file_per_preset():
    assert sorted(preset_of(p) for p in GIN_FILES) == sorted(PRESETS)


def _macro(name: str):
    return gin.query_parameter(f"{name}/macro.value")


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: preset_of(p))
def test_model_gin_file_builds_its_preset(path):
    gin.clear_config()
    try:
        gin.parse_config_file(str(path))
        gin.finalize()
        config = _macro("MODEL_CONFIG").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert config == PRESETS[preset_of(path)]


def test_overrides_macro_changes_fields():
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            [str(ROOT / "llama" / "tiny.gin")],
            ["MODEL_CONFIG_OVERRIDES = {'dtype': 'bfloat16', 'num_layers': 3}"])
        config = _macro("MODEL_CONFIG").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert (config.dtype, config.num_layers) == ("bfloat16", 3)
    assert config.replace(dtype="float32", num_layers=2) == PRESETS["llama-tiny"]
