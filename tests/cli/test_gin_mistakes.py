"""A user's gin mistakes stop the run before any compute, in words that say what to fix.

Every error here happens while the configuration is checked, before a model is built: the tests
run in-process (`main` returns the exit code) and take about a second each; one subprocess runs
the console script from another directory, as a user does.
"""

import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from arch_compare.cli import gin_checks, main, runs, study
from tests.gin_configs.test_run_gin_files import EXPERIMENTS, MODEL_FILE, PLACEHOLDERS, RUN_FILES

ROOT = Path(__file__).resolve().parents[2]
TINY_T5 = ROOT / "gin_configs" / "experiments" / "tiny_t5_imitation.gin"
DEMO = ROOT / "gin_configs" / "experiments" / "demo_study.gin"
DEMO_MACROS = {"STUDY_DIR": "'/tmp/study'", "DEMO_BPE": "'/tmp/tokenizer.json'",
               "DEMO_SENTENCEPIECE_LLAMA": "'/tmp/l.model'",
               "DEMO_SENTENCEPIECE_T5": "'/tmp/t.model'"}


def train_argv(model_dir, *files, **macros):
    macros = {"MODEL_DIR": f"'{model_dir}'", "VOCABULARY_PATH": "'/nowhere/spm.model'", **macros}
    return (["train"] + [f"--gin_file={f}" for f in files]
            + [f"--gin.{name}={value}" for name, value in macros.items()])


def test_a_misspelled_macro_on_the_command_line_is_refused_with_a_suggestion(tmp_path, capsys):
    assert main(train_argv(tmp_path / "run", TINY_T5, TRAIN_STEP="3")) == 2
    err = capsys.readouterr().err
    assert ("arch-compare train: error: --gin.TRAIN_STEP is not used by any configurable; "
            "did you mean TRAIN_STEPS?") in err
    assert not (tmp_path / "run").exists()  # refused before even config.gin is written


def test_a_misspelled_macro_in_a_user_gin_file_names_the_file_and_line(tmp_path, capsys):
    experiment = tmp_path / "my_experiment.gin"
    experiment.write_text("include 'gin_configs/experiments/tiny_t5_imitation.gin'\n"
                          "\n"
                          "LEARNING_RATE = 1e-3\n"
                          "TRAIN_STPES = 5\n")
    assert main(train_argv(tmp_path / "run", experiment)) == 2
    err = capsys.readouterr().err
    assert (f"{experiment}:4: TRAIN_STPES is not used by any configurable; "
            "did you mean TRAIN_STEPS?") in err
    assert "LEARNING_RATE" not in err  # spelled right and read: not reported
    assert not (tmp_path / "run").exists()


def test_a_macro_only_an_unused_configurable_reads_is_refused(tmp_path, capsys):
    # MESH = 'auto' replaces the MeshConfig that reads MESH_FSDP: the 8 would be ignored.
    argv = train_argv(tmp_path / "run", TINY_T5, MESH="'auto'", MESH_FSDP="8")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("--gin.MESH_FSDP is not used: only MeshConfig reads it, and this run never calls it"
            in err)


def test_a_flag_binding_a_configurable_the_run_never_calls_is_refused(tmp_path, capsys):
    argv = train_argv(tmp_path / "run", TINY_T5, MESH="'auto'",
                      **{"arch_compare.partitioning.MeshConfig.fsdp": "2"})
    assert main(argv) == 2
    assert ("--gin.arch_compare.partitioning.MeshConfig.fsdp is not used: this run never calls "
            "MeshConfig") in capsys.readouterr().err


SHARDED = ROOT / "tests" / "imitation" / "sharded_study.gin"


def test_alternatives_in_a_user_file_and_required_macros_pass_when_a_flag_picks_one():
    """sharded_study.gin defines GPT2, LLAMA, T5 and UL2 and requires every base checkpoint;
    `--gin.MODELS=[%GPT2]` leaves LLAMA (and LLAMA_BASE, a flag) unread, and that is fine."""
    bindings = [f"{name}='/x/{name.lower()}'" for name in runs._required_in([str(SHARDED)])]
    bindings.append("MODELS=[%GPT2]")
    try:
        runs.parse_gin([str(SHARDED)], [runs._as_gin_binding(b) for b in bindings])
        assert "LLAMA" not in gin_checks.reach(study.configure).macros
        assert "LLAMA_BASE" in runs._required_in([str(SHARDED)])
        runs.check_configuration(study.configure, [str(SHARDED)], bindings)
        # The same flags with one misspelled: refused.
        runs.parse_gin([str(SHARDED)], [runs._as_gin_binding(b) for b in bindings + ["MODEL=[]"]])
        with pytest.raises(ValueError, match="--gin.MODEL is not used by any configurable; "
                                             "did you mean MODELS"):
            runs.check_configuration(study.configure, [str(SHARDED)], bindings + ["MODEL=[]"])
    finally:
        gin.clear_config()


def test_an_unknown_parameter_of_a_configurable_names_the_file_and_line(tmp_path, capsys):
    experiment = tmp_path / "e.gin"
    experiment.write_text("include 'gin_configs/experiments/tiny_t5_imitation.gin'\n"
                          "arch_compare.cli.runs.train.foo = 1\n")
    assert main(train_argv(tmp_path / "run", experiment)) == 2
    err = capsys.readouterr().err
    assert "doesn't have a parameter named 'foo'" in err
    assert f'In file "{experiment}", line 2' in err


def test_a_misspelled_study_macro_is_refused_before_planning(capsys):
    argv = ["study", f"--gin_file={DEMO}", "--plan", "--gin.BROAD_AMOUNT=[8]",
            *[f"--gin.{name}={value}" for name, value in DEMO_MACROS.items()]]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert ("arch-compare study: error: --gin.BROAD_AMOUNT is not used by any configurable; "
            "did you mean BROAD_AMOUNTS?") in captured.err
    assert captured.out == ""  # no budget table: nothing was planned


def test_errors_from_configurables_carry_no_gin_call_stack(capsys):
    argv = ["study", f"--gin_file={DEMO}", "--plan", "--gin.BROAD_AMOUNTS=[0]",
            *[f"--gin.{name}={value}" for name, value in DEMO_MACROS.items()]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "arch-compare study: error: StudyConfig: data source 'broad': amounts" in err
    assert "In call to configurable" not in err and " at 0x" not in err


def test_demo_takes_gin_dot_name_like_every_command_and_checks_it(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--gin.CYPHER_AMOUNT=[16]"]) == 2
    err = capsys.readouterr().err
    assert ("arch-compare demo: error: --gin.CYPHER_AMOUNT is not used by any configurable; "
            "did you mean CYPHER_AMOUNTS?") in err
    assert not out.exists()  # refused before the demo's vocabularies were trained
    # A right one is applied: the configuration the demo would run has it.
    config = study.study_config([str(DEMO)], [f"{name}={value}" for name, value in
                                              DEMO_MACROS.items()] + ["CYPHER_AMOUNTS=[16]"])
    assert [source.amounts for source in config.sources if source.name == "cypher"] == [(16,)]


def _raised_through_gin(bindings, configurable):
    gin.clear_config()
    try:
        gin.parse_config(["from __gin__ import dynamic_registration", *bindings])
        with pytest.raises(Exception) as raised:
            gin.get_configurable(configurable)()
    finally:
        gin.clear_config()
    return raised.value


def test_plain_message_drops_gins_call_stack_and_names_the_configurable():
    # A missing argument: gin's TypeError names StudyConfig itself, and no prefix is added.
    error = _raised_through_gin(["import arch_compare.cli.study",
                                 "import arch_compare.imitation.config",
                                 "arch_compare.cli.study.configure.config = "
                                 "@arch_compare.imitation.config.StudyConfig()"],
                                study.configure)
    assert "In call to configurable 'StudyConfig'" in str(error)  # what gin shows
    message = gin_checks.plain_message(error)
    assert message.startswith("StudyConfig.__init__() missing")
    assert "In call to configurable" not in message and "0x" not in message
    # A KeyError whose text does not say where: the configurable is named, without quotes.
    from arch_compare.models import zoo
    error = _raised_through_gin(["import arch_compare.models.zoo",
                                 "arch_compare.models.zoo.get_preset.name = 'gpt2-tinyy'"],
                                zoo.get_preset)
    assert isinstance(error, KeyError)
    assert gin_checks.plain_message(error).startswith(
        "get_preset: unknown preset 'gpt2-tinyy'; did you mean gpt2-tiny")


ENTRY = {"finetune.gin": runs.train, "eval.gin": runs.evaluate, "infer.gin": runs.infer}


@pytest.mark.parametrize("path", RUN_FILES + EXPERIMENTS, ids=lambda p: p.name)
def test_every_macro_a_shipped_config_defines_is_read_by_its_run(path):
    """The check passes every shipped configuration, and no shipped file defines a macro its run
    never reads (that would be a typo in the shipped file)."""
    text = path.read_text()
    files = [str(path)] if path in EXPERIMENTS else [MODEL_FILE, str(path)]
    entry = ENTRY.get(path.name, study.configure if "arch_compare.cli.study.configure" in text
                      else runs.train)
    bindings = [f"{name}={PLACEHOLDERS[name]}" for name in runs._required_in(files)]
    try:
        runs.parse_gin(files, [runs._as_gin_binding(b) for b in bindings])
        runs.check_configuration(entry, files, bindings)  # the user's bindings: all read
        defined = {scope for scope, selector in gin.config._CONFIG if selector == gin_checks.MACRO}
        unread = defined - gin_checks.reach(entry).macros
    finally:
        gin.clear_config()
    assert not unread, f"{path.name} defines macros its run never reads: {sorted(unread)}"


def test_shipped_includes_from_another_directory_log_no_errors(tmp_path):
    """gin looks for `include 'gin_configs/...'` in the working directory first; that search
    must not print `ERROR:root:Path not found` (here the run stops at a typo, before compute)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    script = Path(sys.executable).with_name("arch-compare")
    result = subprocess.run([str(script), *train_argv(tmp_path / "run", TINY_T5, TRAIN_STEP="3")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Path not found" not in result.stderr and "ERROR" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "arch-compare train: error: --gin.TRAIN_STEP is not used by any configurable; "
        "did you mean TRAIN_STEPS?")
