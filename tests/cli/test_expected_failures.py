"""What a user sees when a command cannot do its job: expected failures (their input, their files,
their network, their memory) end in one `arch-compare CMD: error: ...` line and exit 2; a bug ends
in one line naming the log file that holds its traceback; commands that only read leave the files
they were pointed at exactly as they were; a set-up that does not fit is not priced as if it did;
`convert` exports what `train` writes."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file

from arch_compare.budget import RunSpec, estimate_run
from arch_compare.budget.memory import MemoryShortfall
from arch_compare.cli import main, presets
from arch_compare.models import build_model, get_preset
from arch_compare.models.hf import save_hf_checkpoint
from arch_compare.results import ResultsStore
from arch_compare.trainer.checkpoints import Checkpoints
from arch_compare.trainer.steps import TrainState
from tests.report.fixture_study import build_study


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and a digest of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"arch-compare {command}: error: "), err
    return lines[0]


# -- databases that are not a study's results ------------------------------------------------------

def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")


def _pairwise(path: Path) -> None:
    from arch_compare.pairwise.store import PairwiseStore
    PairwiseStore(str(path)).engine.dispose()


def _damaged(path: Path) -> None:
    """A results database whose header is intact and whose pages past the schema are not."""
    build_study(path)
    with path.open("r+b") as file:
        file.seek(4096 * 3)
        file.write(b"\xff" * 4096 * 3)


NOT_RESULTS = {
    "missing": (lambda path: None, "no such study directory or results database"),
    "random bytes": (lambda path: path.write_bytes(np.random.default_rng(0).bytes(5000)),
                     "not an arch_compare results database: {path} (file is not a database)"),
    "text": (lambda path: path.write_text("model,score\nllama,3\n"),
             "not an arch_compare results database: {path} (file is not a database)"),
    "other sqlite": (_foreign, "not an arch_compare results database: {path} (no 'runs' table; "
                               "its tables: notes)"),
    "pairwise": (_pairwise, "not an arch_compare results database: {path} (no 'runs' table; "
                            "its tables: pairwise_"),
    "damaged": (_damaged, "{path}: database disk image is malformed"),
}


@pytest.mark.parametrize("kind", NOT_RESULTS)
def test_report_refuses_what_is_not_a_results_database_and_leaves_it_as_it_was(
        kind, tmp_path, capsys):
    make, message = NOT_RESULTS[kind]
    path = tmp_path / "given" / "results.sqlite"
    path.parent.mkdir()
    make(path)
    before = snapshot(path.parent)
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 2
    assert message.format(path=path) in one_error_line(capsys.readouterr().err, "report")
    assert snapshot(path.parent) == before  # nothing created, nothing changed, no -wal / -shm
    assert not (tmp_path / "report").exists()


def test_report_reads_a_study_without_changing_its_database(tmp_path, capsys):
    (tmp_path / "study").mkdir()
    database = build_study(tmp_path / "study" / "results.sqlite")
    before = snapshot(database.parent)
    assert main(["report", str(database), "--out", str(tmp_path / "report")]) == 0
    assert snapshot(database.parent) == before
    assert (tmp_path / "report" / "report.html").is_file()


def test_study_plan_creates_nothing(tmp_path, capsys, sentencepiece_model_path,
                                    bpe_tokenizer_path):
    demo = Path(__file__).resolve().parents[2] / "gin_configs" / "experiments" / "demo_study.gin"
    vocabularies = tmp_path / "vocabularies"
    vocabularies.mkdir()
    for path in (sentencepiece_model_path, bpe_tokenizer_path):
        (vocabularies / path.name).write_bytes(path.read_bytes())
    spm, bpe = vocabularies / sentencepiece_model_path.name, vocabularies / bpe_tokenizer_path.name
    before = snapshot(tmp_path)
    assert main(["study", "--plan", f"--gin_file={demo}",
                 f"--gin.STUDY_DIR='{tmp_path / 'study'}'", f"--gin.DEMO_BPE='{bpe}'",
                 f"--gin.DEMO_SENTENCEPIECE_LLAMA='{spm}'",
                 f"--gin.DEMO_SENTENCEPIECE_T5='{spm}'"]) == 0, capsys.readouterr().err
    assert "runs fit" in capsys.readouterr().out
    assert snapshot(tmp_path) == before and not (tmp_path / "study").exists()


@pytest.mark.parametrize("kind", ["other sqlite", "pairwise"])
def test_a_study_will_not_adopt_another_programs_sqlite_file(kind, tmp_path):
    path = tmp_path / "results.sqlite"
    NOT_RESULTS[kind][0](path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"not an arch_compare results database: .* \(no 'runs'"):
        ResultsStore(path)  # as the study runner opens it, to write
    assert snapshot(tmp_path) == before


# -- the registry of expected failures -------------------------------------------------------------

def _out_of_memory():
    # A real XLA error: the CPU client refuses to allocate a tebibyte.
    jax.jit(lambda: jnp.ones((2**38,), jnp.float32))().block_until_ready()


def _raise(error):
    def run(args):
        raise error
    return run


EXPECTED = {
    "unreadable file": (_raise(PermissionError(13, "Permission denied", "/data/prompts.jsonl")),
                        "/data/prompts.jsonl: Permission denied"),
    "a directory for a file": (_raise(IsADirectoryError(21, "Is a directory", "/data")),
                               "/data: Is a directory"),
    "unreachable host": (_raise(urllib.error.URLError(
        ConnectionRefusedError(111, "Connection refused"))), "cannot reach it ("),
    "refused request": (_raise(urllib.error.HTTPError("http://127.0.0.1:8000/v1/chat/completions",
                                                      401, "Unauthorized", {}, None)),
                        "http://127.0.0.1:8000/v1/chat/completions: HTTP 401 Unauthorized"),
    "dropped connection": (_raise(ConnectionResetError(104, "Connection reset by peer")),
                           "Connection reset by peer"),
    "database": (_raise(sqlite3.DatabaseError("database disk image is malformed")),
                 "database error: database disk image is malformed"),
    "memory estimate": (_raise(MemoryShortfall("llama-7b needs 93.1 GiB per device; 80 GiB")),
                        "llama-7b needs 93.1 GiB per device"),
    "XLA out of memory": (lambda args: _out_of_memory(),
                          "out of device memory: RESOURCE_EXHAUSTED: Out of memory allocating"),
}


@pytest.mark.parametrize("kind", EXPECTED)
def test_an_expected_failure_is_one_line_and_exit_2(kind, monkeypatch, capsys):
    run, message = EXPECTED[kind]
    monkeypatch.delenv("ARCH_COMPARE_TRACEBACK", raising=False)
    monkeypatch.setattr(presets, "run", run)
    assert main(["presets"]) == 2
    assert message in one_error_line(capsys.readouterr().err, "presets")


def test_a_bug_is_one_line_pointing_at_its_traceback(monkeypatch, capsys):
    def run(args):
        return len(args.names) + None  # a TypeError: not among the expected failures

    monkeypatch.delenv("ARCH_COMPARE_TRACEBACK", raising=False)
    monkeypatch.setattr(presets, "run", run)
    assert main(["presets"]) == 1
    line, = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("arch-compare presets: internal error: TypeError: unsupported operand")
    log = Path(line.split("(traceback in ")[1].split(";")[0])
    try:
        assert line.endswith("; please report it)")
        text = log.read_text()
        assert text.startswith("arch-compare presets\n")
        assert "Traceback (most recent call last)" in text and "len(args.names) + None" in text
    finally:
        log.unlink()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    monkeypatch.setattr(presets, "run", _raise(KeyboardInterrupt()))
    assert main(["presets"]) == 130
    assert capsys.readouterr().err.strip() == "arch-compare presets: interrupted"


def test_the_user_sees_one_line_and_no_library_chatter(tmp_path):
    """As a user meets it: a fresh interpreter; nothing but the error line on stderr, nothing on
    stdout, exit 2, the file left alone, and TensorFlow (4 s of start-up, and its log lines)
    never imported by a command that does not read data."""
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    env = {name: value for name, value in os.environ.items()
           if name not in ("TF_CPP_MIN_LOG_LEVEL", "ARCH_COMPARE_TRACEBACK")}
    script = ("import sys; from arch_compare.cli import main; code = main(); "
              "sys.exit(99 if 'tensorflow' in sys.modules else code)")
    result = subprocess.run([sys.executable, "-c", script, "report", str(corrupt), "--out",
                             str(tmp_path / "report")], capture_output=True, text=True,
                            env={**env, "JAX_PLATFORMS": "cpu"}, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"arch-compare report: error: not an arch_compare results database: "
                             f"{corrupt} (file is not a database)\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corrupt.sqlite"]


def test_a_command_that_reads_data_starts_without_tensorflows_log_lines():
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    # `tasks` reads its data through seqio: TensorFlow starts (exit 99 if it did not).
    script = ("import sys; from arch_compare.cli import main; code = main(); "
              "sys.exit(code if 'tensorflow' in sys.modules else 99)")
    result = subprocess.run([sys.executable, "-c", script, "tasks", "imitation_sharegpt_fixture"],
                            capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"},
                            timeout=120)
    assert result.returncode == 0
    assert "imitation_sharegpt_fixture" in result.stdout
    assert result.stderr == ""  # no "I0000 ... oneDNN custom operations are on", no cuInit


def test_every_gin_configured_command_is_registered():
    from arch_compare.cli import COMMANDS, runs
    assert set(runs.RUN_COMMANDS) <= set(COMMANDS)
    assert all(COMMANDS[name].load() is command for name, command in runs.RUN_COMMANDS.items())


# -- budget: a set-up that does not fit ------------------------------------------------------------

def test_budget_exits_1_naming_what_does_not_fit_and_what_would(capsys):
    assert main(["budget", "--model", "llama-7b", "--model", "llama-65b", "--tokens", "1e9",
                 "--chips", "1", "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert [row["model"] for row in json.loads(captured.out)] == ["llama-7b", "llama-65b"]
    more_chips = estimate_run(RunSpec("llama-7b", tokens=1e9, chips=1)).min_chips
    assert estimate_run(RunSpec("llama-65b", tokens=1e9)).min_chips is None  # at any count
    with_remat = estimate_run(RunSpec("llama-65b", tokens=1e9, remat=True)).min_chips
    assert captured.err.splitlines() == [
        "arch-compare budget: 2 run(s) do not fit:",
        f"  llama-7b on 1 x a100-80gb: needs {more_chips} chips (--chips {more_chips})",
        f"  llama-65b on 1 x a100-80gb: fits with --remat on {with_remat} chips"]
    assert main(["budget", "--model", "llama-7b", "--tokens", "1e9",
                 "--chips", str(more_chips)]) == 0


# -- eval: seqio's notes about its own API ---------------------------------------------------------

def test_seqio_evaluator_notes_are_dropped_or_reworded(caplog):
    import seqio
    import tensorflow as tf

    from arch_compare.cli import filter_library_noise

    filter_library_noise()  # as main() does
    vocabulary = seqio.PassThroughVocabulary(size=64)
    features = {name: seqio.Feature(vocabulary, add_eos=False) for name in ("inputs", "targets")}
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {"inputs": [[3, 4, 5]], "targets": [[6, 7]]}), splits=["validation"])
    seqio.TaskRegistry.add_provider("noise_probe", seqio.Task(
        "noise_probe", source, output_features=features,
        metric_fns=[lambda targets, predictions: {}]))
    try:
        with caplog.at_level("WARNING"):
            seqio.Evaluator("noise_probe", seqio.EncDecFeatureConverter(pack=False),
                            eval_split="validation", use_memory_cache=False,
                            sequence_length={"inputs": 16, "targets": 8})
            from absl import logging
            logging.warning("a real warning still shows")
    finally:
        seqio.TaskRegistry.remove("noise_probe")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "evaluation: the feature lengths {'inputs': 16, 'targets': 8} are longer than the "
        "longest example needs ({'inputs': 3, 'targets': 2}); shorter ones would compute less",
        "a real warning still shows"]


# -- convert: what train writes -------------------------------------------------------------------

def test_convert_exports_a_training_directory_and_any_of_its_steps(tmp_path, capsys):
    model = build_model(get_preset("llama-tiny"))
    rng = np.random.default_rng(0)
    saved = {}
    checkpoints = Checkpoints(tmp_path / "run", model.config)
    for step in (2, 4):
        params = jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype),
                              model.abstract_params())
        checkpoints.save(TrainState(np.int32(step), params, optax.sgd(0.1).init(params)),
                         data_position=step)
        saved[step] = params
    checkpoints.close()
    for source, step in ((tmp_path / "run", 4), (tmp_path / "run" / "checkpoints" / "2", 2)):
        out = tmp_path / f"hf-{source.name}"
        assert main(["convert", str(source), str(out), "--to", "hf"]) == 0
        assert f"{tmp_path / 'run'}@{step} -> {out} (hf)" in capsys.readouterr().out
        # The same tensors the exporter writes from the parameters saved at that step.
        expected = save_hf_checkpoint(model, saved[step], tmp_path / f"expected-{step}")
        got = load_file(out / "model.safetensors")
        want = load_file(expected / "model.safetensors")
        assert sorted(got) == sorted(want)
        for name in want:
            assert np.array_equal(got[name], want[name]), name
