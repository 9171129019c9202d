"""Wall time of `arch-compare` commands that should answer at once, and whether they import JAX
or TensorFlow.

Each command runs `--repeats` times in a fresh interpreter (`python -m arch_compare ...`, output
discarded) after one warm-up run that is not counted (it fills the page cache); the table gives
the median and the range (slowest - fastest). One more run under `python -X importtime` says
whether `jax` or `tensorflow` was imported.

`--tree DIR` (repeatable) times the `arch_compare` package of another checkout, e.g. before a
change:

    mkdir /tmp/cli_before && git archive 1597444 arch_compare budgets | tar -x -C /tmp/cli_before
    .venv/bin/python benchmarks/cli_startup.py --tree /tmp/cli_before --tree . --repeats 5

Trees run alternately (A, B, A, B, ...) so both see the same drift in machine load. The machine's
load is printed with the table: the 1-minute load average at the start and end, and the CPU the
rest of the machine used meanwhile (from /proc/stat, less this script's own children), in cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "--help": ["--help"],
    "report --help": ["report", "--help"],
    "pairwise --help": ["pairwise", "--help"],
    "budget --model llama-7b --tokens 1e9": ["budget", "--model", "llama-7b", "--tokens", "1e9"],
    "presets --help": ["presets", "--help"],
    "study --help": ["study", "--help"],
    "train --help": ["train", "--help"],
}
HEAVY = ("jax", "tensorflow")


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def check_tree(tree: Path) -> None:
    """The tree's own package is the one `python -m arch_compare` runs (not the installed one)."""
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; "
         "print(u.find_spec('arch_compare').origin)"],
        env=_env(tree), cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)
    if Path(found.stdout.strip()).resolve() != (tree / "arch_compare" / "__init__.py").resolve():
        raise SystemExit(f"{tree}: arch_compare resolves to {found.stdout.strip()} instead")


def wall_seconds(tree: Path, argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "arch_compare", *argv], env=_env(tree),
                            cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{tree}: arch-compare {' '.join(argv)} exited {result.returncode}:\n"
                         f"{result.stderr[-2000:]}")
    return seconds


def heavy_imports(tree: Path, argv: list[str]) -> set[str]:
    """Which of HEAVY `-X importtime` lists (each line ends with the module's dotted name)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "arch_compare", *argv],
                            env=_env(tree), cwd=tempfile.gettempdir(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:")}
    return {name for name in HEAVY if name in names}


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path,
                        help="checkout whose arch_compare to time (repeatable; default: this one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--command", action="append", choices=tuple(COMMANDS),
                        help="commands to time (repeatable; default: all)")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in (args.tree or [REPO])]
    commands = args.command or list(COMMANDS)
    for tree in trees:
        check_tree(tree)

    load_before = os.getloadavg()[0]
    busy0, total0 = _busy_jiffies()
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    times: dict[tuple[str, Path], list[float]] = {}
    imported: dict[tuple[str, Path], set[str]] = {}
    for name in commands:
        for tree in trees:
            wall_seconds(tree, COMMANDS[name])  # warm-up, not counted
            imported[(name, tree)] = heavy_imports(tree, COMMANDS[name])
        for repeat in range(args.repeats):
            for tree in trees:
                times.setdefault((name, tree), []).append(wall_seconds(tree, COMMANDS[name]))
        print(f"  {name}: " + ", ".join(
            f"{tree.name or tree}: {statistics.median(times[(name, tree)]):.2f} s"
            for tree in trees), file=sys.stderr, flush=True)
    busy1, total1 = _busy_jiffies()
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)

    cores = os.cpu_count() or 1
    own_jiffies = ((own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)) \
        * os.sysconf("SC_CLK_TCK")
    others = max(0.0, (busy1 - busy0 - own_jiffies) / (total1 - total0) * cores)
    print(f"\nmachine: {cores} cores; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"others used {others:.2f} cores on average meanwhile; {args.repeats} runs each, "
          f"after one warm-up")
    print("\n| command | tree | wall s (median) | range | imports jax? | imports TF? |")
    print("|---|---|---|---|---|---|")
    for name in commands:
        for tree in trees:
            values = times[(name, tree)]
            print(f"| `{name}` | {tree} | {statistics.median(values):.2f} | "
                  f"{max(values) - min(values):.2f} | "
                  f"{'yes' if 'jax' in imported[(name, tree)] else 'no'} | "
                  f"{'yes' if 'tensorflow' in imported[(name, tree)] else 'no'} |")


if __name__ == "__main__":
    main()
