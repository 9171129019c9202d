"""A study laid out over several devices and several hosts records what one device records.

- One 8-fake-device process runs the tiny four-family study (tests/imitation/sharded_study.gin)
  twice: on one device and on an fsdp 4 x tensor 2 mesh; both record the same losses and metrics,
  and the sharded run's parameters really are split (the shard shapes its evaluation received).
- Two CPU processes on loopback (4 devices each, gloo collectives) run the study with --multihost
  on the same mesh, are SIGKILLed while a run is `running`, restarted, and record what the
  one-process run recorded, with no duplicated rows.

Tolerance: float32 sums are reordered when a batch and the weights are split over 8 devices, so a
loss agrees to ~1e-6 relative, not bitwise; one AdamW step (whose first update is g / (|g| + eps),
a sign-like function of each gradient) carries that into the next loss at well under 1e-3
relative. Greedy decoding picks the top token, and a near-tie can flip on such differences, so
sample texts are compared by count (at most a few of the 72 may differ) and a metric may differ
only for a run whose samples differ.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arch_compare.results import ResultsStore
from arch_compare.simulated_devices import widen_thread_pool
from arch_compare_tasks import demo_world

from tests.imitation.study_progress import statuses_so_far

# Multi-device / multi-process equivalence: `make test-scale` (CI runs it after `make test`).
pytestmark = pytest.mark.scale

STUDY = Path(__file__).with_name("sharded_study.gin")
ROOT = Path(__file__).resolve().parents[2]
SHARDED = "{'mesh': {'fsdp': 4, 'tensor': 2}}"
LOSS_TOLERANCE = 1e-3  # relative; see the module's docstring
MAX_DIFFERENT_SAMPLES = 4


@pytest.fixture(scope="module")
def vocabularies(tmp_path_factory):
    return demo_world.write_vocabularies(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


BASES = {"GPT2_BASE": "gpt2-tiny", "LLAMA_BASE": "llama-tiny", "T5_BASE": "t5-tiny",
         "UL2_BASE": "ul2-tiny"}


@pytest.fixture(scope="module")
def base_checkpoints(tmp_path_factory):
    """Random base models as this project's native checkpoints, one per family."""
    import jax

    from arch_compare.models import build_model, get_preset
    from arch_compare.models.native import save_model

    root = tmp_path_factory.mktemp("bases")
    paths = {}
    for seed, (macro, preset) in enumerate(BASES.items()):
        model = build_model(get_preset(preset))
        paths[macro] = str(save_model(root / preset, model, model.init(jax.random.key(seed))))
    return paths


@pytest.fixture(scope="module")
def inputs(vocabularies, base_checkpoints):
    return {**vocabularies, **base_checkpoints}


def _bindings(study_dir, inputs, execution):
    return [f"STUDY_DIR='{study_dir}'", f"EXECUTION={execution}",
            *(f"{macro}='{path}'" for macro, path in inputs.items())]


def _environment(jax_cache, devices):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                   "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    widen_thread_pool(environment)
    return environment


# One process, 8 devices: the study on one device and on fsdp 4 x tensor 2. The evaluation of
# each run is wrapped to record the shard shapes of the parameters it was given.
ONE_PROCESS = """
import json, sys
import jax
from arch_compare.cli import study as cli
from arch_compare.imitation import study

shards, current = {}, []
evaluate = study.StudyRunner._model_evaluation

def recording(self, run_id, study_model, execution, params):
    leaves = jax.tree_util.tree_leaves_with_path(params)
    shards.setdefault(current[-1], {})[run_id] = {jax.tree_util.keystr(path): [list(leaf.shape),
                      list(leaf.sharding.shard_shape(leaf.shape))] for path, leaf in leaves}
    return evaluate(self, run_id, study_model, execution, params)

study.StudyRunner._model_evaluation = recording
for name, bindings in json.loads(sys.argv[1]).items():
    current.append(name)
    config = cli.study_config([sys.argv[2]], bindings)
    outcome = study.run_study(config, yes=True, progress=False, echo=lambda *_: None)
    assert not outcome.failed, outcome
print(json.dumps(shards))
"""


def _rows(database):
    with ResultsStore(database) as store:
        runs = {run.run_id: run for run in store.runs("sharded")}
        metrics = {(m.run_id, m.task, m.metric): m.value for m in store.metrics("sharded")}
        samples = {(s.run_id, s.task, s.example_id): s.output for s in store.samples("sharded")}
        return runs, metrics, samples, store.row_counts("sharded")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, inputs, jax_cache):
    root = tmp_path_factory.mktemp("one_process")
    studies = {"one": _bindings(root / "one", inputs, "{}"),
               "sharded": _bindings(root / "sharded", inputs, SHARDED)}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS, json.dumps(studies), str(STUDY)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env=_environment(jax_cache, 8))
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"one process, two studies: {time.monotonic() - began:.0f} s")
    shards = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: _rows(root / name / "results.sqlite") for name in studies}, shards


def _compare(a, b):
    """(runs whose losses differ beyond the tolerance, differing samples, metric keys that differ
    for runs whose samples all agree)."""
    runs_a, metrics_a, samples_a, _ = a
    runs_b, metrics_b, samples_b, _ = b
    assert runs_a.keys() == runs_b.keys() and metrics_a.keys() == metrics_b.keys()
    assert samples_a.keys() == samples_b.keys()
    trained = [run_id for run_id, run in runs_a.items() if run.role == "imitation"]
    assert trained and all("loss" in runs_a[run_id].measured for run_id in trained)
    bad_losses = [run_id for run_id in trained if runs_a[run_id].measured["loss"]
                  != pytest.approx(runs_b[run_id].measured["loss"], rel=LOSS_TOLERANCE)]
    different = [key for key in samples_a if samples_a[key] != samples_b[key]]
    flipped_runs = {key[0] for key in different}
    bad_metrics = [key for key in metrics_a if key[0] not in flipped_runs
                   and metrics_a[key] != pytest.approx(metrics_b[key], rel=1e-6, abs=1e-9)]
    return bad_losses, different, bad_metrics


def test_fsdp_and_tensor_parallel_runs_record_what_one_device_records(one_process):
    studies, _ = one_process
    one, sharded = studies["one"], studies["sharded"]
    for runs, *_ in (one, sharded):
        assert {run.status for run in runs.values()} == {"done"} and len(runs) == 9
    bad_losses, different, bad_metrics = _compare(one, sharded)
    print(f"samples that differ between one device and fsdp 4 x tensor 2: {len(different)} of "
          f"{len(one[2])}")
    assert not bad_losses and not bad_metrics
    assert len(different) <= MAX_DIFFERENT_SAMPLES
    # What ran is recorded with each run: the study's settings and the trainer's record.
    run = sharded[0]["imitation/ul2-tiny/broad/8"]
    assert run.config["execution"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert run.measured["execution"]["mesh_description"] == "fsdp 4 x tensor 2"
    assert one[0]["imitation/ul2-tiny/broad/8"].config["execution"]["mesh"] == {
        "data": 1, "fsdp": 1, "tensor": 1}


def test_the_sharded_runs_parameters_are_really_split(one_process):
    _, shards = one_process
    assert len(shards["one"]) == len(shards["sharded"]) == 8  # base and imitation, 4 models
    for run_id, leaves in shards["one"].items():
        assert all(shape == shard for shape, shard in leaves.values()), run_id
    for run_id, leaves in shards["sharded"].items():
        cuts = {round(a / b) for shape, shard in leaves.values() for a, b in zip(shape, shard)}
        # Some dimension is cut over fsdp (4 ways), some over tensor (2), or over both (8).
        assert 4 in cuts and (2 in cuts or 8 in cuts), (run_id, cuts)
        held = sum(math.prod(shard) for _, shard in leaves.values())
        total = sum(math.prod(shape) for shape, _ in leaves.values())
        assert held < total / 4, (run_id, held, total)  # each device holds under a quarter


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_hosts(study_dir, inputs, jax_cache):
    port = _free_port()
    bindings = _bindings(study_dir, inputs, SHARDED) + ["MODELS=[%GPT2]"]
    return [subprocess.Popen(
        [sys.executable, "-m", "arch_compare", "study", f"--gin_file={STUDY}",
         *(f"--gin.{binding}" for binding in bindings), "--yes", "--no-report", "--multihost",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={index}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=_environment(jax_cache, 4)) for index in range(2)]


def test_two_hosts_killed_and_resumed_record_what_one_process_records(
        tmp_path, one_process, inputs, jax_cache):
    study_dir = tmp_path / "two_hosts"
    database = study_dir / "results.sqlite"
    hosts = _start_hosts(study_dir, inputs, jax_cache)
    deadline = time.monotonic() + 400
    try:  # kill both once the base model is done and the imitation run has begun
        while time.monotonic() < deadline and all(h.poll() is None for h in hosts):
            if statuses_so_far(database).get("imitation/gpt2-tiny/broad/8") == "running":
                break
            time.sleep(0.05)
        assert all(h.poll() is None for h in hosts), [h.communicate()[1][-3000:] for h in hosts]
        for host in hosts:
            host.send_signal(signal.SIGKILL)
    finally:
        for host in hosts:
            host.communicate(timeout=60)
    runs, *_ = _rows(database)
    assert {r: run.status for r, run in runs.items()} == {
        "base/gpt2-tiny": "done", "imitation/gpt2-tiny/broad/8": "running"}

    hosts = _start_hosts(study_dir, inputs, jax_cache)
    outputs = [host.communicate(timeout=600) for host in hosts]
    for host, (_, stderr) in zip(hosts, outputs):
        assert host.returncode == 0, stderr[-4000:]
    assert "2 runs done, 1 already done" in outputs[0][0]  # process 0 speaks for the study
    assert "runs done" not in outputs[1][0]  # (gloo prints its connections to stdout)

    resumed = _rows(database)
    reference = one_process[0]["sharded"]
    keep = {"base/gpt2-tiny", "imitation/gpt2-tiny/broad/8", "target/demo-target"}
    reference = ({r: run for r, run in reference[0].items() if r in keep},
                 {k: v for k, v in reference[1].items() if k[0] in keep},
                 {k: v for k, v in reference[2].items() if k[0] in keep}, None)
    bad_losses, different, bad_metrics = _compare(reference, resumed)
    print(f"samples that differ between one process and two hosts: {len(different)}")
    losses = {run_id: (reference[0][run_id].measured["loss"], resumed[0][run_id].measured["loss"])
              for run_id in bad_losses}
    assert not bad_losses and not bad_metrics, (losses, bad_metrics)
    assert len(different) <= MAX_DIFFERENT_SAMPLES
    # No duplicated rows: one row per run, one per metric, samples_per_task per evaluation,
    # every prediction once, one comparison (the imitation run against its base, on the one
    # headline metric), one purchase of the target's answers (process 0 recorded it once).
    assert resumed[3] == {"runs": 3, "metrics": len(reference[1]), "samples": 3 * 8,
                          "predictions": 3 * 8, "comparisons": 1, "collections": 1}
    assert resumed[0]["imitation/gpt2-tiny/broad/8"].measured["processes"] == 2
