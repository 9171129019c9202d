"""A results database shaped like a small study that has mostly finished.

Three base models (two decoder-only, one encoder-decoder), each evaluated as a base model and
after imitation on 64, 256 and 1024 examples of "broad" and "local" data, plus the target.
llama-tiny's numbers are written out by hand (the tests check its gap-closed shares by hand);
the others follow simple fractions of their gap. Built in: a failed run with a traceback, a pending
run, a run without measurements, undefined metrics (T5 cannot spell the newlines a list needs), a
metric where base and target are equal, a learning rate that differs for one run, a warm-up that
differs with the amount, and model outputs that contain markup.
"""

from __future__ import annotations

from pathlib import Path

from arch_compare.evaluation.intervals import MetricValue
from arch_compare.results import Comparison, ResultsStore, Run, Sample

STUDY = "tiny-arch"
TARGET = "oracle-7b"
AMOUNTS = (64, 256, 1024)
SOURCES = ("broad", "local")
KINDS = {"nq_open/exact_match": "capability", "mmlu/accuracy": "capability",
         "style/list_when_target_lists": "style", "style/length_pearson": "style",
         "heldout/loss": "other"}
MODELS = {  # name: (architecture, family, parameters)
    "gpt2-tiny": ("decoder_only", "gpt2", 1_210_000),
    "llama-tiny": ("decoder_only", "llama", 2_430_000),
    "t5-tiny": ("encoder_decoder", "t5", 3_150_000),
}
TARGET_VALUES = {"nq_open/exact_match": 31.0, "mmlu/accuracy": 0.52,
                 "style/list_when_target_lists": 0.81, "style/length_pearson": 0.62,
                 "heldout/loss": 1.1}
BASE_VALUES = {
    "gpt2-tiny": {"nq_open/exact_match": 4.0, "mmlu/accuracy": 0.25,
                  "style/list_when_target_lists": 0.10, "style/length_pearson": -0.20,
                  "heldout/loss": 3.0},
    "llama-tiny": {"nq_open/exact_match": 20.0, "mmlu/accuracy": 0.35,
                   "style/list_when_target_lists": 0.13, "style/length_pearson": -0.11,
                   "heldout/loss": 2.5},
    # No lists without newlines; its held-out loss happens to equal the target's (no gap).
    "t5-tiny": {"nq_open/exact_match": 12.0, "mmlu/accuracy": 0.30,
                "style/list_when_target_lists": None, "style/length_pearson": 0.05,
                "heldout/loss": 1.1},
}
LLAMA_IMITATION = {  # (source, examples): nq, mmlu, list, length_pearson, loss
    ("broad", 64): (19.0, 0.35, 0.40, 0.20, 2.0),
    ("broad", 256): (17.0, 0.34, 0.62, 0.41, 1.7),
    ("broad", 1024): (15.0, 0.33, 0.79, 0.58, 1.5),
    ("local", 64): (22.0, 0.35, 0.20, 0.00, 2.2),
    ("local", 256): (25.0, 0.36, 0.25, 0.10, 2.0),
    ("local", 1024): (27.0, 0.36, 0.30, 0.15, 1.9),
}
# Other models: this fraction of their base-to-target gap, per (source, kind, examples).
FRACTIONS = {("broad", "style"): (0.3, 0.55, 0.75), ("broad", "capability"): (0.0, -0.05, -0.1),
             ("local", "style"): (0.15, 0.25, 0.35), ("local", "capability"): (0.1, 0.3, 0.5),
             ("broad", "other"): (0.2, 0.4, 0.6), ("local", "other"): (0.1, 0.2, 0.3)}
FAILED = "imitation/t5-tiny/local/1024"
PENDING = "imitation/gpt2-tiny/broad/1024"
UNMEASURED = "imitation/gpt2-tiny/broad/64"
ODD_LEARNING_RATE = "imitation/llama-tiny/broad/256"
SCRIPT = "<script>alert(1)</script>"
NOTES = ("T5's SentencePiece cannot spell newlines, so list style cannot show for T5/UL2 at "
         "this vocabulary", "Prices are on-demand list prices <as of the budget sheet>")
QUESTION = "Q: What is the capital of <b>France</b>?\nA:"
ERROR = ("Traceback (most recent call last):\n  File \"trainer.py\", line 80, in step\n"
         "RuntimeError: RESOURCE_EXHAUSTED: out of memory allocating 1.2GiB <HBM>")


def run_config(model: str, source: str | None, examples: int, learning_rate: float = 2e-3):
    steps = max(1, examples // 8)
    return {"model": {"preset": model, "dtype": "float32"},
            "data": {"source": source, "examples": examples, "reference_tokenizer": "gpt2"},
            "optimizer": {"name": "adamw", "learning_rate": learning_rate,
                          "warmup_steps": min(10, steps), "multiply_by_parameter_scale": True},
            "train_steps": steps, "batch_size": 8,
            "task_feature_lengths": {"inputs": 128, "targets": 128},
            "eval": {"tasks": ["nq_open", "mmlu", "style"], "max_decode_length": 64},
            "model_dir": f"/studies/tiny/{model}/{source}/{examples}"}


def _estimate(parameters: int, tokens: int, priced: bool = True) -> dict:
    flops = 6.0 * parameters * tokens
    hours = flops / (16 * 275e12 * 0.4) / 3600
    return {"flops": flops, "hardware": "tpu-v4" if priced else "tpu-v5p", "chips": 16,
            "chip_hours": hours * 16, "cost_usd": hours * 16 * 3.22 if priced else None,
            "mfu": 0.4, "hours": hours}


def _measured(parameters: int, tokens: int) -> dict:
    seconds = tokens / 2000
    return {"wall_seconds": seconds + 30, "train_seconds": seconds, "eval_seconds": 30.0,
            "steps": tokens // 2048, "tokens": tokens, "tokens_per_second": 2000.0,
            "flops": 6.3 * parameters * tokens, "device": "cpu"}


def imitation_values(model: str, source: str, examples: int) -> dict[str, float | None]:
    if model == "llama-tiny":
        return dict(zip(KINDS, LLAMA_IMITATION[(source, examples)]))
    index = AMOUNTS.index(examples)
    values = {}
    for name, kind in KINDS.items():
        base, target = BASE_VALUES[model][name], TARGET_VALUES[name]
        values[name] = None if base is None else base + FRACTIONS[(source, kind)][index] * (
            target - base)
    return values


def interval(name: str, value: float | None) -> tuple[float, float] | None:
    """The fixture's 95% interval of a value: +-10% and a bit; none for the held-out loss (a
    number recorded without its examples)."""
    if value is None or name == "heldout/loss":
        return None
    return value - 0.1 * abs(value) - 0.01, value + 0.1 * abs(value) + 0.01


def _with_interval(name: str, value: float | None):
    bounds = interval(name, value)
    return value if bounds is None else MetricValue(value, *bounds, 100, "bootstrap")


# (run, baseline, task/metric, difference, low, high, significant)
COMPARISONS = (
    ("imitation/llama-tiny/local/1024", "base/llama-tiny", "nq_open/exact_match", 7.0, 2.0,
     12.0, True),
    ("imitation/llama-tiny/broad/1024", "base/llama-tiny", "nq_open/exact_match", -5.0, -11.0,
     1.0, False),
    ("imitation/llama-tiny/broad/1024", "base/llama-tiny", "style/length_pearson", 0.69, 0.41,
     0.93, True),
    ("imitation/llama-tiny/local/1024", "imitation/llama-tiny/broad/1024",
     "nq_open/exact_match", 12.0, 5.0, 19.0, True),
)


def _put_metrics(store: ResultsStore, run_id: str, values: dict[str, float | None]) -> None:
    for task in dict.fromkeys(name.split("/")[0] for name in values):
        own = {n.split("/")[1]: _with_interval(n, v) for n, v in values.items()
               if n.startswith(task + "/")}
        store.put_metrics(STUDY, run_id, task, own,
                          {n.split("/")[1]: KINDS[n] for n in values if n.startswith(task + "/")})


def _samples(run_id: str, model: str, examples: int) -> list[Sample]:
    answer = SCRIPT if run_id == "imitation/llama-tiny/broad/1024" else f"{model} says Paris"
    return [
        Sample(run_id, "nq_open", "q1", QUESTION, answer, "Paris"),
        Sample(run_id, "nq_open", "q2", "Q: Who wrote Hamlet?\nA:",
               f"```\n{model} thinks Marlowe ({examples} examples)\n```", "William Shakespeare"),
        Sample(run_id, "style", "s1", "List three fruits.",
               "- apple\n- pear\n- plum" if model != "t5-tiny" else "apple, pear, plum",
               "- apple\n- banana\n- cherry"),
    ]


def build_study(path: Path) -> Path:
    study_config = {"models": list(MODELS), "data_sources": list(SOURCES),
                    "amounts": list(AMOUNTS), "notes": list(NOTES),
                    "allowed_differences": ["train_steps"]}
    with ResultsStore(path) as store:
        store.register_study(STUDY, study_config, path.parent)
        store.put_run(STUDY, Run(run_id="target/oracle-7b", role="target", model=TARGET,
                                 architecture="target", family="llama", config={"name": TARGET},
                                 status="done"))
        _put_metrics(store, "target/oracle-7b", TARGET_VALUES)
        store.put_samples(STUDY, [Sample("target/oracle-7b", "nq_open", "q1", QUESTION, "Paris",
                                         "Paris")])
        for model, (architecture, family, parameters) in MODELS.items():
            base_id = f"base/{model}"
            store.put_run(STUDY, Run(
                run_id=base_id, role="base", model=model, architecture=architecture,
                family=family, parameters=parameters, config=run_config(model, None, 0),
                status="done", estimate=_estimate(parameters, 40_000),
                measured=_measured(parameters, 40_000)))
            _put_metrics(store, base_id, BASE_VALUES[model])
            store.put_samples(STUDY, _samples(base_id, model, 0))
            for source in SOURCES:
                for examples in AMOUNTS:
                    run_id = f"imitation/{model}/{source}/{examples}"
                    tokens = examples * 200
                    status = ("failed" if run_id == FAILED else
                              "pending" if run_id == PENDING else "done")
                    learning_rate = 1e-3 if run_id == ODD_LEARNING_RATE else 2e-3
                    store.put_run(STUDY, Run(
                        run_id=run_id, role="imitation", model=model, architecture=architecture,
                        family=family, parameters=parameters, data_source=source,
                        data_examples=examples, data_tokens=tokens,
                        data_reference_tokens=int(tokens * 0.9),
                        config=run_config(model, source, examples, learning_rate),
                        status=status, error=ERROR if status == "failed" else None,
                        estimate=_estimate(parameters, tokens, priced=model != "t5-tiny"),
                        measured=None if status != "done" or run_id == UNMEASURED
                        else _measured(parameters, tokens)))
                    if status == "done":
                        _put_metrics(store, run_id, imitation_values(model, source, examples))
                        store.put_samples(STUDY, _samples(run_id, model, examples))
        store.put_comparisons(STUDY, [Comparison(run, baseline, *name.split("/"), *numbers)
                                      for run, baseline, name, *numbers in COMPARISONS])
    return path
