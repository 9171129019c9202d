"""Collection throughput: prompts/s with 1 request in flight against 8, 32, 64, against a loopback
fake of OpenAI's chat endpoint (`tests/imitation/fake_openai_chat.py`) in a process of its own.

    .venv/bin/python benchmarks/collection_throughput.py                   # 1,000 prompts, ~2 min
    .venv/bin/python benchmarks/collection_throughput.py --concurrency 1 32 --retry-after 0.1

The server answers after `--latency` seconds and refuses every `--rate-limit-every`-th request with
HTTP 429 and `Retry-After: --retry-after`; after each such refusal every worker waits that long
(collection backs off together), so at 32 in flight a long Retry-After, not the collector, bounds
the speed. Every leg asks the same number of new prompts into a fresh cache, with
`backoff=0.01` s for the retried prompt. Besides wall time, each line shows what the server saw:
the most requests it had in flight at once, the 429s it sent, and prompts it answered more than
once (none expected: a refused request is not answered).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the fake server lives with the tests

from arch_compare.imitation.collection import collect  # noqa: E402
from arch_compare.imitation.openai_chat import OpenAIChatTarget  # noqa: E402
from arch_compare.imitation.targets import GenerationSettings, Prompt  # noqa: E402
from tests.imitation.fake_openai_chat import FakeOpenAIChatProcess  # noqa: E402


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def most_in_flight(log) -> int:
    events = sorted([(e.started, 1) for e in log] + [(e.finished, -1) for e in log])
    running = best = 0
    for _, change in events:
        running += change
        best = max(best, running)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rate-limit-every", type=int, default=20)
    parser.add_argument("--retry-after", default="0.01")
    args = parser.parse_args()

    print(f"{cpu_model()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, Python {platform.python_version()}")
    print(f"fake server: {args.latency * 1e3:g} ms latency, a 429 every {args.rate_limit_every}th "
          f"request with Retry-After: {args.retry_after} s; {args.prompts} prompts per leg\n")
    settings = GenerationSettings(max_tokens=64)
    rows = []
    with FakeOpenAIChatProcess(latency=args.latency, rate_limit_every=args.rate_limit_every,
                               retry_after=args.retry_after) as server, \
            tempfile.TemporaryDirectory() as directory:
        target = OpenAIChatTarget(server.base_url, model="fake", timeout=60)
        for concurrency in args.concurrency:
            prompts = [Prompt.from_text(f"c{concurrency}-{i}", f"Question {i}, leg {concurrency}?")
                       for i in range(args.prompts)]
            began = time.monotonic()
            result = collect(target, prompts, settings, Path(directory) / f"{concurrency}.jsonl",
                             concurrency=concurrency, backoff=0.01, progress=False)
            wall = time.monotonic() - began
            log = [entry for entry in server.log if entry.started >= began]
            answered = [entry.prompt for entry in log if entry.status == 200]
            rows.append((concurrency, wall, result.collected, most_in_flight(log),
                         sum(entry.status == 429 for entry in log),
                         len(answered) - len(set(answered))))
    base = rows[0][1] / args.prompts
    print("| in flight | wall s | prompts/s | ms per prompt | vs first | server: most in flight "
          "| 429s | answered twice |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for concurrency, wall, collected, in_flight, refused, twice in rows:
        per_prompt = wall / args.prompts
        print(f"| {concurrency} | {wall:.2f} | {args.prompts / wall:.1f} | {per_prompt * 1e3:.2f} "
              f"| {base / per_prompt:.1f}x | {in_flight} | {refused} | {twice} |"
              + ("" if collected == args.prompts else f" only {collected} collected"))
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
