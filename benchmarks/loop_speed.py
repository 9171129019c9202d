"""Steps per second of the whole training loop (`arch_compare.trainer.loop.train`) on tiny models.

What it measures is the loop, not the step: for tiny models on a CPU the host's work per step
(dispatch, reading metrics, logging, preparing the next batch) is a large share of the time, and
that is what an asynchronous loop hides. Each measurement is one `train` run of `--steps` steps
in a fresh interpreter (one checkpoint, at the end); the time each step's line reaches
`metrics.jsonl` is recorded (`MetricsWriter.write` wrapped), and

    steps/s = (steps - skip) / (time of line `steps` - time of line `skip`)

so set-up, compilation (in step 1) and the final checkpoint (after the last line) are left out.

`--tree DIR` (repeatable) times the `arch_compare` package of another checkout, e.g. the loop
before a change:

    git worktree add /tmp/loop_before fa16432
    .venv/bin/python benchmarks/loop_speed.py --tree /tmp/loop_before --tree . --repeats 3
    git worktree remove /tmp/loop_before

Trees are run alternately (tree A, tree B, tree A, ...) so both see the same drift in machine load;
the table gives the median over repeats and the range (slowest - fastest). Every tree must accept
`TrainConfig(model_dir, data, train_steps, optimizer, checkpoint_period, keep_checkpoints)`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "fixtures" / "vocab_corpus.txt"
TASK = "imitation_sharegpt_fixture"

WORKER = """
import json, sys, tempfile, time
from pathlib import Path
import arch_compare
from arch_compare import optim
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.models import build_model, get_preset
from arch_compare.trainer import metrics as metrics_module
from arch_compare.trainer.data import DataConfig
from arch_compare.trainer.loop import TrainConfig, train
import arch_compare_tasks.catalogue

preset, vocabulary_path, steps, skip, batch, inputs, targets = sys.argv[1:8]
steps, skip = int(steps), int(skip)
config = get_preset(preset)
vocabulary = vocabulary_for_model(config, vocabulary_path)
# When each step's metrics reach the log: both loops write one line per step, as soon as they hold
# its metrics on the host (the asynchronous loop one step later, which shifts every time alike).
written = {}
write = metrics_module.MetricsWriter.write
def timed(self, step, values, kind="train"):
    write(self, step, values, kind)
    written[step] = time.perf_counter()
metrics_module.MetricsWriter.write = timed
with tempfile.TemporaryDirectory() as root:
    run = TrainConfig(model_dir=root, train_steps=steps, checkpoint_period=steps,
                      keep_checkpoints=1,
                      data=DataConfig("%s", {"inputs": int(inputs), "targets": int(targets)},
                                      batch_size=int(batch)),
                      optimizer=optim.OptimizerConfig("adamw", optim.ScheduleConfig(1e-3)))
    train(build_model(config), vocabulary, run, progress=False)
print(json.dumps({"package": str(Path(arch_compare.__file__).parent),
                  "seconds": written[steps] - written[skip],
                  "steps_per_second": (steps - skip) / (written[steps] - written[skip])}))
""" % TASK


def vocabularies(directory: Path) -> dict[str, Path]:
    """The test suite's fixture vocabularies (tests/conftest.py), trained here: a SentencePiece
    model (T5, LLaMA) and a byte-level BPE tokenizer (GPT-2)."""
    import sentencepiece
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    prefix = directory / "spm"
    sentencepiece.SentencePieceTrainer.train(
        input=str(CORPUS), model_prefix=str(prefix), vocab_size=384, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.98, num_threads=1,
        minloglevel=2, byte_fallback=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train([str(CORPUS)], trainers.BpeTrainer(
        vocab_size=299, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    return {"gpt2": directory / "tokenizer.json", "other": prefix.with_suffix(".model")}


def measure(tree: Path, preset: str, vocabulary: Path, args, links: Path) -> dict:
    # The tree's own task catalogue (installed as `arch_compare_tasks` from its tasks/ folder).
    link = links / tree.name.replace("/", "_") / "arch_compare_tasks"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(tree / "tasks")
    env = {**os.environ, "PYTHONPATH": f"{tree}:{link.parent}", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", WORKER, preset, str(vocabulary), str(args.steps), str(args.skip),
         str(args.batch), str(args.inputs), str(args.targets)],
        cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{tree} {preset} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if Path(report["package"]).resolve() != (tree / "arch_compare").resolve():
        raise SystemExit(f"{tree}: imported arch_compare from {report['package']} instead")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path,
                        help="checkout whose arch_compare to time (repeatable; default: this one)")
    parser.add_argument("--models", default="gpt2-tiny,t5-tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip", type=int, default=20,
                        help="steps left out at the start (compilation, warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in (args.tree or [REPO])]
    print(f"CPU: {_cpu()}, {os.cpu_count()} cores; steps {args.skip}-{args.steps} timed, batch "
          f"{args.batch}, lengths {args.inputs} + {args.targets}; {args.repeats} repeats")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        vocab = vocabularies(scratch)
        rates: dict[tuple[str, str], list[float]] = {}
        for preset in args.models.split(","):
            vocabulary = vocab["gpt2"] if preset.startswith("gpt2") else vocab["other"]
            for repeat in range(args.repeats):
                for tree in trees:
                    report = measure(tree, preset, vocabulary, args, scratch / "links")
                    rates.setdefault((preset, str(tree)), []).append(report["steps_per_second"])
                    print(f"  {preset} {tree}: {report['steps_per_second']:.1f} steps/s "
                          f"({report['seconds']:.2f} s)", flush=True)
    # Paired by repeat (run back to back): the ratio to the first tree cancels most load drift.
    print("\n| model | tree | steps/s (median) | range | runs | / first tree, paired (median, "
          "range) |\n| --- | --- | --- | --- | --- | --- |")
    for (preset, tree), values in rates.items():
        first = rates[(preset, str(trees[0]))]
        ratios = [value / base for value, base in zip(values, first)]
        print(f"| {preset} | {tree} | {statistics.median(values):.1f} | "
              f"{min(values):.1f}-{max(values):.1f} | {len(values)} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
