"""Commands import only what they use, and TensorFlow's start-up chatter never reaches the user.

One fresh interpreter runs every command below through `cli.main` in order, and after each notes
which of JAX, Flax and TensorFlow `sys.modules` holds. Imports only accumulate, so the commands
held to "neither JAX nor TensorFlow" run first; a later command cannot hide an earlier one's
import. (Wall times are measured by benchmarks/cli_startup.py, not asserted here.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from arch_compare.cli import _STARTUP_CHATTER, COMMANDS, _native_stderr_filtered

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("jax", "flax", "tensorflow")

# Whose parser needs a model module (JAX, not TensorFlow): checkpoint kinds, dtypes, mesh axes.
MODEL_PARSERS = ("convert", "serve")
# Neither JAX nor TensorFlow: every other command's --help, and report, pairwise and budget runs.
NO_JAX: tuple[list[str], ...] = (
    ["--help"],
    *([name, "--help"] for name in COMMANDS if name not in MODEL_PARSERS),
    ["report", "{study}", "--out", "{tmp}/report"],
    ["pairwise", "import", "{tmp}/items.jsonl", "--campaign", "c", "--overlap", "1",
     "--items-per-rater", "2", "--db", "{tmp}/pairwise.sqlite"],
    ["pairwise", "status", "--db", "{tmp}/pairwise.sqlite"],
    ["budget", "--model", "llama-7b", "--tokens", "1e9"],
)
# JAX allowed, TensorFlow never.
NO_TENSORFLOW: tuple[list[str], ...] = (
    ["presets", "gpt2-small"], *([name, "--help"] for name in MODEL_PARSERS),
)

CHILD = textwrap.dedent("""
    import contextlib, io, json, sys
    from pathlib import Path

    tmp, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    from arch_compare.results import ResultsStore, Run
    (tmp / "study").mkdir()
    with ResultsStore(tmp / "study" / "results.sqlite") as store:  # a study just begun
        store.register_study("s", {}, tmp / "study")
        store.put_run("s", Run(run_id="target/t", role="target", model="t",
                               architecture="target", family="t", config={}, status="done"))
        store.put_metrics("s", "target/t", "nq", {"exact_match": 31.0},
                          {"exact_match": "capability"})
    items = [{"id": f"q{i}", "prompt": f"question {i}", "model_a": "target",
              "output_a": "yes", "model_b": "imitation", "output_b": "no"} for i in range(4)]
    (tmp / "items.jsonl").write_text("".join(json.dumps(item) + "\\n" for item in items))

    from arch_compare.cli import main
    seen = []
    for argv in cases:
        argv = [arg.format(tmp=tmp, study=tmp / "study") for arg in argv]
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exit:  # --help
                code = exit.code
        seen.append({"argv": argv, "code": code,
                     "imported": [m for m in ("jax", "flax", "tensorflow") if m in sys.modules]})
    print(json.dumps(seen))
""")


@pytest.fixture(scope="module")
def imports(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("startup")
    cases = [*NO_JAX, *NO_TENSORFLOW]
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp), json.dumps(cases)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_help_report_pairwise_and_budget_import_neither_jax_nor_tensorflow(imports):
    assert [case["argv"][0] for case in imports[:len(NO_JAX)]] == [argv[0] for argv in NO_JAX]
    for case in imports[:len(NO_JAX)]:
        assert case["code"] == 0, case
        assert case["imported"] == [], f"arch-compare {' '.join(case['argv'])} imported " \
                                       f"{case['imported']}"


def test_presets_and_model_parsers_never_import_tensorflow(imports):
    later = imports[len(NO_JAX):]
    assert [case["argv"][0] for case in later] == [argv[0] for argv in NO_TENSORFLOW]
    for case in later:
        assert case["code"] == 0, case
        assert "tensorflow" not in case["imported"], f"arch-compare {' '.join(case['argv'])}"
    assert "jax" in later[0]["imported"]  # presets counts parameters with jax.eval_shape


# Verbatim from TensorFlow 2.21's import and `set_visible_devices` on a machine without a GPU.
TENSORFLOW_CHATTER = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796335563.866411   20537 port.cc:153] oneDNN custom operations are on. You may see \
slightly different numerical results due to floating-point round-off errors from different \
computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796335563.866928   20537 cudart_stub.cc:31] Could not find cuda drivers on your \
machine, GPU will not be used.
I0000 00:00:1796335564.061089   20537 cpu_feature_guard.cc:227] This TensorFlow binary is \
optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, in \
other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796335581.145102   20537 cuda_platform.cc:52] failed call to cuInit: INTERNAL: \
CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""
GENUINE = """\
W0000 00:00:1796335581.2   20537 gpu_device.cc:2342] Cannot dlopen some GPU libraries.
E0000 00:00:1796335581.3   20537 cuda_dnn.cc:8310] Unable to register cuDNN factory
WARNING:absl:An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not \
installed. Falling back to cpu.
Traceback (most recent call last):
To enable something else, rebuild it.
"""


def test_chatter_filter_drops_start_up_lines_and_keeps_warnings(capfd):
    with _native_stderr_filtered():
        os.write(2, (TENSORFLOW_CHATTER + GENUINE).encode())
    assert capfd.readouterr().err == GENUINE
    for line in TENSORFLOW_CHATTER.splitlines():
        assert _STARTUP_CHATTER.match(line), line
    for line in GENUINE.splitlines():
        assert not _STARTUP_CHATTER.match(line), line
