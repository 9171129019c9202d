"""`arch-compare budget`: one run per model from flags, or a study grid from a gin file."""

import csv
import io
import json
from pathlib import Path

import pytest

from arch_compare.cli import main

ROOT = Path(__file__).resolve().parents[2]
JSON_KEYS = {"model", "arch", "params", "train_flops", "inference_flops_per_token",
             "memory_bytes", "hardware", "chips", "hours", "cost_usd", "mfu"}


def run_cli(capsys, *argv):
    code = main(["budget", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_has_the_documented_keys_per_model(capsys):
    code, out, _ = run_cli(capsys, "--model", "llama-7b", "--model", "t5.1.1-xxl",
                           "--tokens", "1e9", "--input-length", "512", "--target-length", "512",
                           "--hardware", "tpu-v4", "--chips", "16", "--optimizer", "adafactor",
                           "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [row["model"] for row in rows] == ["llama-7b", "t5.1.1-xxl"]
    for row in rows:
        assert JSON_KEYS <= set(row)
        assert row["hardware"] == "tpu-v4" and row["chips"] == 16
        assert set(row["memory_bytes"]) >= {"weights", "gradients", "optimizer_state",
                                            "activations", "kv_cache"}
    assert rows[0]["params"] == 6_738_415_616 and rows[1]["arch"] == "encoder_decoder"


def test_csv_and_table(capsys):
    code, out, _ = run_cli(capsys, "--model", "gpt2-small", "--examples", "1000",
                           "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["model"] == "gpt2-small" and float(rows[0]["train_flops"]) > 0
    code, out, _ = run_cli(capsys, "--model", "gpt2-small", "--tokens", "1e6")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["model", "arch", "params"]
    assert "MFU sources:" in out and "Chowdhery" not in out and "MosaicML" in out


def test_paper_study_gin_parses_and_prices_every_run(capsys):
    code, out, _ = run_cli(capsys, "--study", str(ROOT / "budgets" / "paper_study.gin"),
                           "--format", "json")
    assert code == 0
    rows = json.loads(out)
    models = {"gpt2-xl", "llama-7b", "llama-13b", "t5.1.1-xxl", "ul2-20b"}
    assert {row["model"] for row in rows} == models
    assert len(rows) == len(models) * 5 * 2
    assert {row["hardware"] for row in rows} == {"tpu-v4", "a100-80gb"}
    assert all(row["fits"] for row in rows)
    assert [row["chip_hours"] for row in rows] == sorted((r["chip_hours"] for r in rows),
                                                         reverse=True)


def test_study_calibration(capsys):
    code, out, _ = run_cli(capsys, "--study", str(ROOT / "budgets" / "paper_study.gin"),
                           "--model", "llama-7b", "--hardware", "a100-80gb", "--chips", "8",
                           "--measured-tokens-per-second", "20000")
    assert code == 0
    assert "calibrated: llama-7b at 20,000 tokens/s on 8 x a100-80gb is MFU" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt2-small", "--tokens", "1e6", "--hardware", "v100"], "known chips: tpu-v4"),
    (["--model", "gpt2-smal", "--tokens", "1e6"], "did you mean gpt2-small"),
    (["--model", "gpt2-small"], "--tokens N or --examples N"),
    (["--tokens", "1e6"], "--model PRESET"),
    (["--study", "missing.gin"], "study file not found: missing.gin"),
])
def test_errors_are_clear(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err


def test_study_with_unknown_binding_names_the_file(capsys, tmp_path):
    study = tmp_path / "bad.gin"
    study.write_text("StudyGrid.modles = ['gpt2-small']\n")
    code, _, err = run_cli(capsys, "--study", str(study))
    assert code == 2 and "bad.gin" in err and "modles" in err


def test_the_target_answers_are_priced_beside_the_compute(capsys):
    # 1,000 prompts x (50 + 200) tokens at gpt-4o-mini ($0.15 / $0.60 per million), batch half:
    # (50,000 x 0.15 + 200,000 x 0.60) / 1e6 / 2 = $0.06375.
    code, out, _ = run_cli(capsys, "--target-price", "gpt-4o-mini", "--prompts", "1000",
                           "--prompt-tokens", "50", "--answer-tokens", "200", "--batch")
    assert code == 0
    assert out.strip() == ("target's answers: 50,000 prompt + 200,000 answer tokens, $0.06 at "
                           "'gpt-4o-mini' (batch, 50% off)")
    flags = ("--model", "gpt2-small", "--tokens", "1e8", "--target-price", "demo-target",
             "--prompts", "10", "--prompt-tokens", "100", "--answer-tokens", "1000")
    code, out, _ = run_cli(capsys, *flags)
    assert code == 0 and out.splitlines()[0].split()[:2] == ["model", "arch"]
    # (1,000 x $1 + 10,000 x $4) / 1e6 = $0.041 (the demo row's made-up prices)
    assert "target's answers: 1,000 prompt + 10,000 answer tokens, $0.04 at 'demo-target' " \
           "(online; FICTIONAL price row)" in out
    table_total = out.split("total on a100-80gb with the target's answers: $")[1].split()[0]
    code, out, err = run_cli(capsys, *flags, "--format", "json")
    assert code == 0 and json.loads(out)[0]["model"] == "gpt2-small"  # stdout stays JSON
    compute = json.loads(out)[0]["cost_usd"]
    assert compute > 0.1
    json_total = err.split("total on a100-80gb with the target's answers: $")[1].split()[0]
    assert table_total == json_total
    assert float(json_total.replace(",", "")) == pytest.approx(compute + 0.041, abs=0.005)


@pytest.mark.parametrize("argv, message", [
    (["--target-price", "gpt-4o-mini", "--prompts", "10"], "give --prompt-tokens, --answer-tokens"),
    (["--prompts", "10"], "give --target-price ROW too"),
    (["--target-price", "gpt4o", "--prompts", "1", "--prompt-tokens", "1", "--answer-tokens",
      "1"], "did you mean 'gpt-4o'"),
])
def test_target_price_errors_are_clear(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err


def test_a_study_grid_prices_the_answers_of_its_largest_amount(capsys):
    code, out, _ = run_cli(capsys, "--study", str(ROOT / "budgets" / "paper_study.gin"))
    assert code == 0
    # 150M tokens / (1024 + 1024) per conversation = 73,243 conversations (rounded up), each
    # 1,024 prompt and 1,024 answer tokens at gpt-3.5-turbo's $0.50 / $1.50 per million.
    answers = -(-150_000_000 // 2048)
    usd = answers * 1024 * (0.50 + 1.50) / 1e6
    assert f"the target's answers: {answers:,} conversations of 1024 + 1024 tokens" in out
    assert (f"target's answers: {answers * 1024:,} prompt + {answers * 1024:,} answer tokens, "
            f"${usd:,.2f} at 'gpt-3.5-turbo' (online)") in out
    code, rows, _ = run_cli(capsys, "--study", str(ROOT / "budgets" / "paper_study.gin"),
                            "--format", "json")
    compute = sum(row["cost_usd"] for row in json.loads(rows) if row["hardware"] == "tpu-v4")
    total = float(out.split("total on tpu-v4 with the target's answers: $")[1].split()[0]
                  .replace(",", ""))
    assert total == pytest.approx(compute + usd, abs=0.01)
