import dataclasses
import itertools
import math
import os
from fractions import Fraction

import pytest

from arch_compare.evaluation.humaneval import (check_completion, evaluate_samples, load_problems,
                                               pass_at_k, pass_at_k_metric)
from arch_compare.evaluation.sandbox import SandboxLimits, Status

PROBLEMS = load_problems()
FIRST = PROBLEMS["HumanEval/0"]
WRONG = "    return not any(numbers)\n"  # a plausible but wrong body for HumanEval/0
SHORT = SandboxLimits(timeout_s=1.0, cpu_s=30, memory_bytes=256 * 2**20, max_processes=8,
                      max_output_bytes=4096)


def processes_mentioning(marker: str) -> list[str]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(entry)
        except OSError:
            continue  # exited while we looked
    return found


def test_every_canonical_solution_passes():
    samples = [(task_id, problem["canonical_solution"]) for task_id, problem in PROBLEMS.items()]
    report = evaluate_samples(samples, ks=(1, 10), workers=2, progress=False)
    passed = sum(problem.num_correct for problem in report.problems.values())
    failures = {task_id: problem.results[0].detail for task_id, problem in report.problems.items()
                if not problem.num_correct}
    assert (len(report.problems), passed, failures) == (164, 164, {})
    assert report.pass_at_k == {"pass@1": 1.0}  # one sample each: pass@10 is not defined


def test_a_wrong_solution_fails_with_the_assertion():
    result = check_completion(FIRST, WRONG)
    assert result.status is Status.FAILED and result.detail.startswith("AssertionError")


def test_exiting_before_the_tests_is_not_a_pass():
    result = check_completion(FIRST, "    import sys\n    sys.exit(0)\nimport sys\nsys.exit(0)\n")
    assert result.exit_code == 0 and result.status is Status.FAILED
    assert "before the tests finished" in result.detail


# A program stopped by a resource limit still needs a moment to die (a MemoryError traceback, say);
# under a loaded machine (the suite runs on both cores) 1 s of wall clock can run out first, so
# those cases get more, and only the infinite loop is meant to meet the timeout.
RESOURCE_CASES = dataclasses.replace(SHORT, timeout_s=5.0)


@pytest.mark.parametrize("body, statuses, limits", [
    ("    import os\n    while True:\n        os.fork()\n", {Status.RESOURCE_LIMIT},
     RESOURCE_CASES),
    ("    while True:\n        pass\n", {Status.TIMEOUT}, SHORT),
    ("    hoard = []\n    while True:\n        hoard.append(bytearray(10**7))\n",
     {Status.RESOURCE_LIMIT}, RESOURCE_CASES),
], ids=["fork_bomb", "infinite_loop", "memory_hog"])
def test_hostile_completions_fail_in_time_and_leave_nothing(body, statuses, limits):
    result = check_completion(FIRST, body, limits)
    assert result.status in statuses
    assert result.duration_s < limits.timeout_s + 1.5
    assert processes_mentioning(result.workdir) == []


def test_network_access_fails_the_problem():
    body = "    import socket\n    socket.create_connection(('127.0.0.1', 80), timeout=1)\n"
    result = check_completion(FIRST, body, SHORT)
    assert result.status is Status.FAILED and "network access is disabled" in result.detail


@pytest.mark.parametrize("n, c, k, expected", [
    (2, 1, 1, 0.5), (5, 0, 3, 0.0), (5, 3, 3, 1.0), (10, 1, 1, 0.1), (4, 2, 2, 5 / 6),
    (3, 3, 1, 1.0),
])
def test_pass_at_k_hand_checked_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_enumerating_every_subset():
    for n in range(1, 8):
        for c, k in itertools.product(range(n + 1), range(1, n + 1)):
            subsets = list(itertools.combinations(range(n), k))
            hits = sum(any(index < c for index in subset) for subset in subsets)
            assert pass_at_k(n, c, k) == pytest.approx(hits / len(subsets), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_many_samples():
    for n, c, k in [(200, 3, 50), (1000, 1, 100), (100_000, 7, 100)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(2, 3, 1), (3, 1, 0), (3, 1, 4), (-1, 0, 1), (2.0, 1, 1)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_evaluate_samples_groups_by_problem_and_averages():
    samples = [("HumanEval/0", FIRST["canonical_solution"]), ("HumanEval/1", "    return []\n"),
               ("HumanEval/0", WRONG), ("HumanEval/1", "    return None\n")]
    report = evaluate_samples(samples, ks=(1, 2, 10), progress=False)
    first, other = report.problems["HumanEval/0"], report.problems["HumanEval/1"]
    assert [r.passed for r in first.results] == [True, False]  # sample order is kept
    assert (other.num_samples, other.num_correct) == (2, 0)
    # pass@1 = (1/2 + 0) / 2; pass@2 = (1 + 0) / 2; pass@10 needs 10 samples per problem.
    assert report.pass_at_k == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}


def test_metric_takes_task_ids_as_targets():
    targets = [b"HumanEval/2", "HumanEval/2", "HumanEval/2"]
    predictions = [PROBLEMS["HumanEval/2"]["canonical_solution"], "    return 0.0\n",
                   "    return number\n"]
    scores = pass_at_k_metric(targets, predictions, ks=(1, 3))
    assert scores == {"pass@1": pytest.approx(1 / 3), "pass@3": 1.0}


def test_bad_samples_are_refused_by_position():
    with pytest.raises(ValueError, match="sample 1 names unknown task id 'HumanEval/999'"):
        evaluate_samples([("HumanEval/0", "pass"), ("HumanEval/999", "pass")], progress=False)
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        pass_at_k_metric(["HumanEval/0", "HumanEval/0"], ["    pass\n"])
