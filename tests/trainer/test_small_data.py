"""Small amounts and oversized records: the training pipeline tokenizes each record once, cuts a
huge one before the tokenizer sees it (with the same tokens a whole read would give), shuffles
within the data it has, and Ctrl-C stops a run within seconds, leaving it resumable."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from arch_compare.data.converters import feature_converter_for
from arch_compare.data.vocabularies import HuggingFaceTokenizerVocabulary, vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.trainer import data as data_lib
from arch_compare.trainer.data import BatchIterator, DataConfig, provider_examples
from arch_compare.trainer.interrupts import TrainingInterrupted
from arch_compare.trainer.loop import evaluate_loss
from arch_compare.trainer.steps import make_eval_step
from arch_compare_tasks import catalogue
from arch_compare_tasks.registry import seqio_provider

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "fixtures" / "vocab_corpus.txt"
LENGTHS = {"inputs": 32, "targets": 16}
EXAMPLES = 8


def write_records(path: Path, big_chars: int = 0) -> Path:
    """EXAMPLES training records and one validation record (ShareGPT); record 3's answer is
    `big_chars` characters of corpus text when that is set."""
    lines = [line for line in CORPUS.read_text().splitlines() if line.strip()]
    records = []
    for i in range(EXAMPLES + 1):
        answer = " ".join(lines[i * 3:i * 3 + 3])
        if i == 3 and big_chars:
            text = " ".join(lines)
            answer = (text * (big_chars // len(text) + 1))[:big_chars]
        records.append({"id": f"r{i}", "conversations": [
            {"from": "human", "value": lines[40 + i]}, {"from": "gpt", "value": answer}]})
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def register(name: str, path: Path) -> str:
    catalogue.register_imitation_task(name, path, "sharegpt", validation_examples=1,
                                      replace=True)
    return name


@pytest.fixture(scope="module")
def vocabularies(sentencepiece_model_path, bpe_tokenizer_path):
    return {"gpt2": vocabulary_for_model(get_preset("gpt2-tiny"), bpe_tokenizer_path),
            "t5": vocabulary_for_model(get_preset("t5-tiny"), sentencepiece_model_path)}


def rows(dataset, n=None):
    """Token features and ids (a cut record's `*_pretokenized` text is cut too, by design)."""
    dataset = dataset if n is None else dataset.take(n)
    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()
             if not k.endswith("_pretokenized")} for row in dataset.as_numpy_iterator()]


def seqio_rows(provider, lengths):
    """seqio's own pipeline, in file order, nothing cut: the reference."""
    return rows(provider.get_dataset(dict(lengths), split="train", shuffle=False,
                                     use_cached=False))


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_tokens_equal_seqios_for_normal_and_oversized_records(tmp_path, vocabularies, family,
                                                              caplog):
    vocabulary = vocabularies[family]
    normal = seqio_provider(register("small_normal", write_records(tmp_path / "a.json")),
                            vocabulary)
    ours, [stats] = provider_examples(normal, LENGTHS, "train", shuffle=False, seed=0,
                                      repeat=False)
    assert rows(ours) == seqio_rows(normal, LENGTHS)
    assert (stats.examples, stats.cut) == (EXAMPLES, 0)

    # 40,000 characters against a limit of 16 tokens x CHARS_PER_TOKEN: cut, same tokens.
    big = seqio_provider(register("small_big", write_records(tmp_path / "b.json", 40_000)),
                         vocabulary)
    ours, [stats] = provider_examples(big, LENGTHS, "train", shuffle=False, seed=0,
                                      repeat=False)
    reference = seqio_rows(big, LENGTHS)
    assert rows(ours) == reference
    assert len(reference[3]["targets"]) == LENGTHS["targets"]  # the cut record still fills it
    assert (stats.examples, stats.cut) == (EXAMPLES, 1)
    assert stats.char_limits == {name: data_lib.CHARS_PER_TOKEN * length
                                 for name, length in LENGTHS.items()}
    with caplog.at_level(logging.WARNING):
        iterator = BatchIterator(big, feature_converter_for(get_preset(f"{family}-tiny"),
                                                            vocabulary),
                                 DataConfig("small_big", LENGTHS, batch_size=4))
    iterator.close()
    said = [r.getMessage() for r in caplog.records if "before tokenizing" in r.getMessage()]
    assert said == [f"small_big: 1 of {EXAMPLES} examples had text longer than the feature "
                    f"lengths can hold; cut to inputs 2,048 / targets 1,024 characters before "
                    f"tokenizing"]
    assert iterator.cut_records == 1


class CountingVocabulary(HuggingFaceTokenizerVocabulary):
    """Records the length of every text the tokenizer is handed inside tf.data."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def _encode_scalar(self, s: bytes):
        self.seen.append(len(s.decode("utf-8")))  # characters
        return super()._encode_scalar(s)

    def __hash__(self):  # a vocabulary of its own: its own seqio task, not a cached one
        return id(self)

    def __eq__(self, other):
        return self is other


def test_each_record_is_tokenized_once_and_never_whole_when_oversized(tmp_path,
                                                                     bpe_tokenizer_path):
    vocabulary = CountingVocabulary(bpe_tokenizer_path)
    task = register("small_counted", write_records(tmp_path / "c.json", 1_000_000))
    batches = BatchIterator(seqio_provider(task, vocabulary),
                            feature_converter_for(get_preset("gpt2-tiny"), vocabulary),
                            DataConfig(task, LENGTHS, batch_size=4))
    for _ in range(12):  # six epochs of 8 examples
        next(batches)
    batches.close()
    # inputs and targets of each example, once: the later epochs read the cache. (seqio's
    # repeat-then-shuffle read the split ~125 times to fill its 1,000-example buffer.)
    assert len(vocabulary.seen) == 2 * EXAMPLES
    # The 1 MB answer reached the tokenizer cut to its limit.
    assert max(vocabulary.seen) == data_lib.CHARS_PER_TOKEN * LENGTHS["targets"]


def test_each_epoch_is_a_permutation_and_the_order_is_deterministic(tmp_path, vocabularies):
    provider = seqio_provider(register("small_epochs", write_records(tmp_path / "d.json")),
                              vocabularies["t5"])

    def order(seed):
        dataset, _ = provider_examples(provider, LENGTHS, "train", shuffle=True, seed=seed,
                                       repeat=True)
        return [row["id"] for row in rows(dataset, 4 * EXAMPLES)]

    ids = order(7)
    epochs = [ids[i:i + EXAMPLES] for i in range(0, len(ids), EXAMPLES)]
    every = sorted(set(ids))
    assert len(every) == EXAMPLES
    assert all(sorted(epoch) == every for epoch in epochs)  # each example once per epoch
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled between epochs
    assert order(7) == ids and order(8) != ids


def test_a_mixture_samples_its_cached_tasks(vocabularies):
    provider = seqio_provider("imitation_sharegpt_fixture_with_pretraining", vocabularies["t5"])
    dataset, stats = provider_examples(provider, LENGTHS, "train", shuffle=True, seed=0,
                                       repeat=True)
    sample = rows(dataset, 40)
    assert [s.task.split("#")[0] for s in stats] == ["imitation_sharegpt_fixture",
                                                     "pretraining_text_fixture"]
    assert all(set(row) == {"inputs", "targets"} for row in sample)
    assert all(len(row["targets"]) <= LENGTHS["targets"] for row in sample)


SCRIPT = """
import json, sys
from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train
from arch_compare_tasks import catalogue

model_dir, vocabulary, records, steps = sys.argv[1:5]
catalogue.register_imitation_task("small_sigint", records, "sharegpt", validation_examples=1)
config = get_preset("gpt2-tiny")
result = train(build_model(config), vocabulary_for_model(config, vocabulary),
               TrainConfig(model_dir=model_dir, train_steps=int(steps), checkpoint_period=5,
                           data=DataConfig("small_sigint", {"inputs": 32, "targets": 16},
                                           batch_size=4, seed=3),
                           optimizer=optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e-3))),
               progress=False)
print(json.dumps({"resumed_from": result.resumed_from, "cut": result.data[0].cut,
                  "examples": result.data[0].examples}))
"""


def run_script(model_dir, vocabulary, records, steps):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(model_dir), str(vocabulary),
                             str(records), str(steps)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged_steps(model_dir: Path) -> list[int]:
    path = model_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler during the test, as in a terminal. Tests started as a
    background job of a script inherit SIGINT ignored; train then installs no handler
    (interrupts.py), and a SIGINT sent to the process would be lost."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_training_at_a_step_boundary_and_a_rerun_resumes(tmp_path, run_training,
                                                                      python_sigint_handler):
    """In process: a real SIGINT once training has begun stops it between steps."""
    model_dir = tmp_path / "run"

    def interrupt_at_step_3():
        deadline = time.time() + 120
        while max(logged_steps(model_dir), default=0) < 3 and time.time() < deadline:
            time.sleep(0.01)
        # Only to train's handler: Python's own would raise in whatever the main thread runs.
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt_at_step_3, daemon=True)
    sender.start()
    with pytest.raises(TrainingInterrupted, match=r"^stopped by Ctrl-C after step \d+ of 10000; "
                                                  r"the newest checkpoint \(step \d+\) is kept"):
        run_training(model_dir, "gpt2-tiny", steps=10_000, checkpoint_period=2)
    sender.join()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert not [t for t in threading.enumerate() if t.name == "batch-prefetch" and t.is_alive()]
    newest = max(int(path.name) for path in (model_dir / "checkpoints").iterdir()
                 if path.name.isdigit())
    assert max(logged_steps(model_dir)) < 10  # stopped within a few steps of the signal
    result = run_training(model_dir, "gpt2-tiny", steps=newest + 1, checkpoint_period=2)
    assert result.resumed_from == newest and list(result.losses) == [newest + 1]


@pytest.mark.scale  # two fresh interpreters: ~60 s on a loaded 2-core machine
def test_ctrl_c_stops_training_within_seconds_and_a_rerun_resumes(tmp_path, bpe_tokenizer_path):
    """As a user meets it: a run on 8 examples, one of them 1 MB (which used to stall the first
    step for minutes), interrupted once it trains, then run again."""
    records = write_records(tmp_path / "data.json", 1_000_000)
    model_dir = tmp_path / "run"
    first = run_script(model_dir, bpe_tokenizer_path, records, 100_000)
    deadline = time.time() + 120
    while max(logged_steps(model_dir), default=0) < 7 and first.poll() is None:
        assert time.time() < deadline, "training never reached step 7"
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[1][-3000:]
    interrupted = time.time()
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    took = time.time() - interrupted
    assert took < 10, f"Ctrl-C took {took:.1f} s to stop training"
    assert first.returncode != 0
    assert "TrainingInterrupted: stopped by Ctrl-C after step" in stderr, stderr[-3000:]
    assert "run again to resume" in stderr
    assert stderr.count("1 of 8 examples had text longer than the feature lengths") == 1
    newest = max(int(path.name) for path in (model_dir / "checkpoints").iterdir()
                 if path.name.isdigit())
    assert newest >= 5 and newest % 5 == 0

    second = run_script(model_dir, bpe_tokenizer_path, records, newest + 1)
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1]) == {"resumed_from": newest, "cut": 1,
                                                            "examples": EXAMPLES}


def test_validation_loss_reads_the_examples_seqio_reads(tmp_path, vocabularies):
    config = get_preset("t5-tiny")
    model, vocabulary = build_model(config), vocabularies["t5"]
    params = model.init(jax.random.key(0))
    provider = seqio_provider(register("small_eval", write_records(tmp_path / "e.json")),
                              vocabulary)
    converter = model.feature_converter(vocabulary)
    ours = evaluate_loss(model, params, provider, converter,
                         DataConfig("small_eval", LENGTHS, batch_size=4), max_batches=2)
    # The reference: seqio's own pipeline, read in order, through the same eval step.
    step, totals = jax.jit(make_eval_step(model)), {"loss_sum": 0.0, "correct": 0.0, "weight": 0.0}
    examples = provider.get_dataset(dict(LENGTHS), split="train", shuffle=False, num_epochs=1)
    for batch in converter(examples, dict(LENGTHS)).batch(4).take(2).as_numpy_iterator():
        for name, value in jax.device_get(step(params, batch)).items():
            totals[name] += float(value)
    assert totals["weight"] > 0
    assert ours == pytest.approx({"loss": totals["loss_sum"] / totals["weight"],
                                  "accuracy": totals["correct"] / totals["weight"]}, rel=1e-6)
