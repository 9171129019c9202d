"""`arch-compare study --plan`: every run's execution settings and memory on the study's priced
hardware, before anything runs. The paper study (paths that do not exist) fits its 16 TPU v4
chips; a mesh that cannot hold it is refused naming the run and what would fit; a model's own
execution override shows in its rows. In-process (the CLI's `main`): nothing is loaded."""

import re
from pathlib import Path

import pytest

from arch_compare.cli import main
from arch_compare.cli import study as study_cli
from arch_compare.imitation import plan as plan_lib

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "gin_configs" / "experiments" / "paper_study.gin"
MACROS = ("STUDY_DIR", "BROAD_FILE", "LOCAL_FILE", "TARGET_BASE_URL", "GPT2_XL",
          "GPT2_VOCABULARY", "LLAMA_7B", "LLAMA_VOCABULARY", "T5_XXL", "UL2_20B",
          "T5_VOCABULARY")
ROW = re.compile(r"^\s+((?:base|imitation)/\S+)\s+(.+?)\s{2,}(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s+"
                 r"(\S+)\s+(\S+)\s+(\S+)\s+(yes|NO)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def _inputs_not_checked(monkeypatch):
    """The paper study's paths do not exist here, and its inputs are not what these tests are
    about: test_preflight.py checks inputs, through --plan too."""
    from arch_compare.imitation import preflight
    monkeypatch.setattr(preflight, "check",
                        lambda config, **_: preflight.PreflightReport((), (), 0.0))


def _bindings(*extra):
    return [f"--gin.{name}='/nonexistent/{name.lower()}'" for name in MACROS] + list(extra)


def _plan(capsys, *extra):
    code = main(["study", "--plan", f"--gin_file={PAPER}", *_bindings(*extra)])
    return code, capsys.readouterr().out


def _rows(out):
    return {m.group(1): m.groups()[1:] for m in ROW.finditer(out)}


def test_the_paper_study_fits_its_16_tpu_v4_chips(capsys):
    code, out = _plan(capsys)
    assert code == 0, out
    rows = _rows(out)
    config = study_cli.study_config([str(PAPER)], [b[len("--gin."):] for b in _bindings()])
    expected = [p.run.run_id for p in plan_lib.plan(config) if p.model is not None]
    # 4 bases, 4 x 6 imitation runs, and the broad 150,000 cell's recipes for each model (lora
    # and wise at three alphas; l2sp for all but UL2, which it does not fit).
    assert sorted(rows) == sorted(expected) and len(rows) == 4 + 4 * 6 + 4 * 4 + 3
    for run_id, (mesh, dtype, params, remat, micro, train, evaluation, device, fits) in \
            rows.items():
        assert (mesh, dtype, params, remat, fits) == ("fsdp 16", "bfloat16", "float32",
                                                      "block", "yes"), run_id
        assert float(evaluation) < float(device) * 0.9
        # A checkpoint is only evaluated, as is a wise interpolation; an imitation run trains,
        # within the chip's share.
        assert (train == "-") == (run_id.startswith("base/") or "/wise@" in run_id)
        if train != "-":
            assert 0 < float(train) < float(device) * 0.9
    assert "47 of 47 runs fit" in out
    # LoRA's frozen bfloat16 base and adapter-only optimizer state need less than full training.
    cell = "imitation/llama-7b/broad/150000"
    assert float(rows[f"{cell}/lora"][5]) < float(rows[cell][5])
    # The largest model needs the most per chip: UL2 20B above T5 XXL above LLaMA 7B.
    train_gib = {model: float(rows[f"imitation/{model}/broad/300"][5])
                 for model in ("llama-7b", "t5.1.1-xxl", "ul2-20b")}
    assert train_gib["llama-7b"] < train_gib["t5.1.1-xxl"] < train_gib["ul2-20b"]
    # Evaluation files that are not there are not counted: n/a, not zero.
    assert "evaluations: n/a" in out


def test_a_mesh_that_cannot_hold_the_study_is_refused_naming_the_run(capsys):
    code, out = _plan(capsys, "--gin.EXECUTION={'mesh': {'data': 16}, 'dtype': 'bfloat16', "
                              "'remat': 'block'}")
    assert code == 1
    misfit = re.search(r"does not fit: imitation/ul2-20b/broad/300: (.*)", out).group(1)
    assert "ul2 training needs" in misfit and "data 16" in misfit
    assert "would fit: mesh" in misfit  # the budget module's alternative
    assert re.search(r"run\(s\) do not fit: .*imitation/ul2-20b/broad/300", out)
    assert _rows(out)["imitation/ul2-20b/broad/300"][-1] == "NO"


def test_a_models_own_execution_override_shows_in_its_rows(capsys, tmp_path):
    # The paper study with UL2 given its own mesh and more microbatches.
    text = PAPER.read_text().replace(
        "'base_checkpoint': %UL2_20B}",
        "'base_checkpoint': %UL2_20B,\n       'execution': {'mesh': {'fsdp': 8, 'tensor': 2}, "
        "'microbatches': 2}}")
    assert text != PAPER.read_text()
    gin_file = tmp_path / "paper_override.gin"
    gin_file.write_text(text)
    # Without the recipes: L2-SP's anchor (a second copy of the weights) does not fit UL2 there.
    code = main(["study", "--plan", f"--gin_file={gin_file}", *_bindings("--gin.RECIPES=[]")])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = _rows(out)
    assert rows["imitation/ul2-20b/local/600"][:5] == ("fsdp 8 x tensor 2", "bfloat16",
                                                       "float32", "block", "2")
    assert rows["imitation/llama-7b/local/600"][0] == "fsdp 16"


def _axis(mesh: str, axis: str) -> int:
    found = re.search(rf"{axis} (\d+)", mesh)
    return int(found.group(1)) if found else 1


def test_auto_resolves_over_the_budget_chips_to_the_smallest_mesh_that_fits(capsys):
    code, out = _plan(capsys, "--gin.EXECUTION={'mesh': 'auto', 'dtype': 'bfloat16', "
                              "'remat': 'block'}")
    rows = _rows(out)
    assert code == 0, out
    for run_id, row in rows.items():
        mesh = row[0]
        assert _axis(mesh, "data") * _axis(mesh, "fsdp") * _axis(mesh, "tensor") == 16, run_id
    # GPT-2 XL (1.5B) fits with less sharding than UL2 20B: 'auto' takes the first that fits.
    fsdp = {m: _axis(rows[f"imitation/{m}/broad/300"][0], "fsdp") for m in ("gpt2-xl", "ul2-20b")}
    assert fsdp["gpt2-xl"] < fsdp["ul2-20b"]


def test_the_plan_reads_no_imitation_data():
    """Pricing counts evaluation tasks only: data files that do not exist are never opened, and
    evaluations whose files are absent are n/a rather than zero."""
    config = study_cli.study_config([str(PAPER)], [b[len("--gin."):] for b in _bindings()])
    estimates = plan_lib.estimates(config, plan_lib.plan(config))
    assert estimates["base/gpt2-xl"]["evaluation_flops"] is None  # MMLU/NQ files absent
    assert estimates["imitation/gpt2-xl/broad/300"]["train_flops"] > 0
