"""MaxText's training step on the LLaMA row of `train_throughput.py`: a JAX peer on the same CPU.

Runs in two interpreters, because MaxText needs Python >= 3.12 and its own JAX:

- `--reference` (this project's venv): prints, as one JSON line, what `train_throughput.py`
  itself uses for its LLaMA row: the model configuration, our parameter count, model FLOPs per
  step (`Workload.flops_per_step`, i.e. `arch_compare.budget.training_flops(..., causal="full")`)
  and tokens per step;
- the default mode (`benchmarks/.venv-maxtext`, see README.md): reads that JSON, configures
  MaxText for exactly that model (base.yml + key=value overrides), builds its model, AdamW and
  `train_step` through MaxText's own set-up (`train_utils.setup_train_loop` and
  `jit_train_and_eval_step`, the functions its `train.py` calls), jit-compiles the step once
  with the state donated as MaxText does, and times it as `train_throughput.py` times ours:
  warm-up steps, then timed steps with `jax.block_until_ready` after each, median step time,
  spread, `others` from /proc/stat, MFU against XLA's float32 2048^3 matmul peak measured in this
  same process (before and after; the higher counts).

Several remat policies (each with a layer scan, or unrolled as POLICY/unrolled) are compared in
ONE process, interleaved (A, B, A, B), so they see the same machine load:

    benchmarks/maxtext_peer.sh [--remat full,minimal,none/unrolled] [--steps 10] [--no-scan]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # timing.py (standard library only), whichever venv runs this
from timing import interleaved, time_steps  # noqa: E402

# -------------------------------------------------------------------------------------------------
# --reference: runs in THIS project's venv and asks train_throughput.py for the LLaMA row


def reference(batch: int, length: int, vocab: int | None) -> dict:
    """The LLaMA row of train_throughput.py, as plain numbers (no MaxText import here)."""
    import train_throughput as tt  # noqa: E402 (imports jax, torch: only in our venv)
    from arch_compare import optim  # noqa: E402
    from arch_compare.models import build_model  # noqa: E402

    config = tt.MODELS["llama"](vocab)
    workload = tt.Workload("llama", config, batch, 0, length)
    adam = optim.DEFAULTS["adamw"]
    return {
        "model": dataclasses.asdict(config),
        "batch": batch, "length": length,
        "params": build_model(config).param_count(),
        "flops_per_step": workload.flops_per_step,
        "tokens_per_step": workload.tokens_per_step,
        "optimizer": {"learning_rate": tt.LEARNING_RATE, "weight_decay": tt.WEIGHT_DECAY,
                      "b1": adam.b1, "b2": adam.b2, "eps": adam.eps},
    }


# -------------------------------------------------------------------------------------------------
# MaxText's configuration for that model


def maxtext_overrides(ref: dict, remat: str, scan: bool, output_dir: str) -> list[str]:
    """base.yml key=value overrides that give MaxText our LLaMA row (names from base.yml)."""
    m, opt = ref["model"], ref["optimizer"]
    expected = {"family": "llama", "arch": "decoder_only", "norm": "rmsnorm",
                "mlp_activation": "silu", "mlp_gated": True, "use_bias": False,
                "position": "rotary", "tie_embeddings": False, "dtype": "float32",
                "param_dtype": "float32"}
    wrong = {k: (m[k], v) for k, v in expected.items() if m[k] != v}
    if wrong:  # this mapping covers exactly that model; anything else needs new overrides
        raise ValueError(f"reference model differs from what the MaxText mapping covers "
                         f"(field: (got, expected)): {wrong}")
    return [
        # the model: MaxText's llama2 decoder block is RMSNorm + rotary + SwiGLU, no biases
        "decoder_block=llama2",
        f"base_num_decoder_layers={m['num_layers']}",
        f"base_emb_dim={m['d_model']}",
        f"base_num_query_heads={m['num_heads']}",
        f"base_num_kv_heads={m['num_kv_heads']}",
        f"head_dim={m['head_dim']}",
        f"base_mlp_dim={m['d_ff']}",
        "mlp_activations=[silu,linear]",  # silu(x W0) * (x W1): SwiGLU
        f"vocab_size={m['vocab_size']}",
        "logits_via_embedding=false",  # an untied head
        f"normalization_layer_epsilon={m['norm_eps']}",
        f"rope_max_timescale={int(m['rope_theta'])}",
        "dropout_rate=0.0", "enable_dropout=false",
        # float32 parameters AND compute (MaxText's default compute dtype is bfloat16)
        "dtype=float32", "weight_dtype=float32",
        # the batch: one CPU device, so per-device batch = global batch
        f"per_device_batch_size={ref['batch']}", f"max_target_length={ref['length']}",
        "dataset_type=synthetic",
        # the step: plain dot-product attention on CPU, layers as a scan like ours
        "hardware=cpu", "attention=dot_product", f"scan_layers={str(scan).lower()}",
        f"remat_policy={remat}",
        # the optimizer: AdamW with our lr / betas / eps / weight decay, vectors (the RMSNorm
        # scales) not decayed, no gradient clipping, a constant learning rate
        "opt_type=adamw", f"learning_rate={opt['learning_rate']}",
        f"adam_b1={opt['b1']}", f"adam_b2={opt['b2']}", f"adam_eps={opt['eps']}",
        "adam_eps_root=0.0", f"adam_weight_decay={opt['weight_decay']}",
        "adamw_mask=[scale]", "gradient_clipping_threshold=0.0",
        "warmup_steps_fraction=0.0", "learning_rate_final_fraction=1.0",
        "z_loss_multiplier=0.0",
        # no side work: checkpoints, metrics files, goodput, distributed start-up
        "steps=100000", "enable_checkpointing=false", "enable_tensorboard=false",
        "enable_goodput_recording=false", "monitor_goodput=false", "gcs_metrics=false",
        "skip_jax_distributed_system=true", "log_config=false",
        f"base_output_directory={output_dir}", f"run_name=maxtext_peer_{remat}_{'scan' if scan else 'unrolled'}",
    ]


# -------------------------------------------------------------------------------------------------
MATMUL_SIZE, MATMUL_REPEATS = 2048, 10


def jax_matmul_peak(jax, jnp) -> float:
    """FLOP/s of a float32 [n, n] @ [n, n] under XLA, in this process (median of 10)."""
    n = MATMUL_SIZE
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    return 2 * n ** 3 / time_steps(lambda: matmul(a, b).block_until_ready(), 2,
                                   MATMUL_REPEATS).median


# -------------------------------------------------------------------------------------------------
# MaxText's step


def maxtext_step(ref: dict, remat: str, scan: bool, output_dir: str):
    """MaxText's compiled train step for `ref`'s model; returns (step, params, compile s, info)."""
    import jax
    import numpy as np
    from flax import nnx
    from flax.linen import partitioning as nn_partitioning
    from maxtext.configs import pyconfig
    from maxtext.trainers.pre_train import train as mt_train
    from maxtext.utils import max_utils, maxtext_utils, sharding, train_utils

    argv = ["maxtext_peer", os.path.join(os.path.dirname(pyconfig.__file__), "base.yml")]
    config = pyconfig.initialize(argv + maxtext_overrides(ref, remat, scan, output_dir))
    (_rng, _ckpt, state_mesh_shardings, _model, mesh, _schedule, _data, _loader, _rampup,
     _eval, state) = train_utils.setup_train_loop(config, recorder=None)
    jit_model, state = nnx.split(state)  # as train.py's train_loop does
    params_shardings, state_mesh_shardings = sharding.maybe_update_params_sharding_with_opt(
        config, state_mesh_shardings)
    p_train_step, _ = train_utils.jit_train_and_eval_step(
        config, jit_model, mesh, state, state_mesh_shardings, mt_train.train_step,
        mt_train.eval_step, None, params_shardings)
    _, params, _ = nnx.split(state.model, nnx.Param, ...)
    count = int(max_utils.calculate_num_params_from_pytree(params))

    # The batch train_throughput.py feeds ours: ids in [2, vocab) from the same generator, each
    # target the next input, one segment per row (every position has a loss).
    b, l, v = ref["batch"], ref["length"], ref["model"]["vocab_size"]
    row = np.random.default_rng(0).integers(2, v, size=(b, l + 1), dtype=np.int32)
    positions = np.broadcast_to(np.arange(l, dtype=np.int32), (b, l))
    ones = np.ones((b, l), np.int32)
    host = {"inputs": row[:, :-1], "inputs_position": positions, "inputs_segmentation": ones,
            "targets": row[:, 1:], "targets_position": positions, "targets_segmentation": ones}
    with jax.set_mesh(mesh), nn_partitioning.axis_rules(config.logical_axis_rules):
        data_sharding = sharding.get_input_data_sharding(config, mesh)
        shaped = maxtext_utils.get_shaped_batch(config, batch_sharding=data_sharding)
        if set(shaped) != set(host):
            raise RuntimeError(f"MaxText's batch has features {sorted(shaped)}, this script "
                               f"makes {sorted(host)}")
        batch = {k: jax.device_put(np.ascontiguousarray(host[k]), data_sharding) for k in shaped}
        began = time.perf_counter()
        compiled = p_train_step.lower(state, batch).compile()
        compile_seconds = time.perf_counter() - began
    holder = [state, None]  # donated: each step consumes the previous state

    def step():
        with jax.set_mesh(mesh), nn_partitioning.axis_rules(config.logical_axis_rules):
            holder[0], holder[1] = compiled(holder[0], batch)
        jax.block_until_ready(holder)

    def loss() -> float:  # the last step's mean cross-entropy (ln(vocab) ~ 10.4 at the start)
        return float(holder[1]["scalar"]["learning/loss"])

    # Half-precision anywhere in the optimised program would make the comparison unfair.
    hlo = compiled.as_text()
    info = {"scan_layers": config.scan_layers, "attention": config.attention,
            "dtype": str(config.dtype), "weight_dtype": str(config.weight_dtype),
            "half_precision_ops": hlo.count("bf16[") + hlo.count("f16["),
            # MaxText's own FLOP count (attention: the causal half only)
            "maxtext_tflops": maxtext_utils.calculate_tflops_training_per_device(
                config, log=False)[0], "loss": loss}
    return step, count, compile_seconds, info


# -------------------------------------------------------------------------------------------------
# The run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", action="store_true",
                        help="print the LLaMA row's numbers as JSON (run with OUR venv)")
    parser.add_argument("--reference-json", default=None,
                        help="that JSON (a string, or @FILE); required without --reference")
    parser.add_argument("--remat", default="full,minimal",
                        help="comma-separated MaxText remat_policy values, timed interleaved "
                             "(base.yml's default is 'full'); POLICY/unrolled runs that policy "
                             "with scan_layers=false")
    parser.add_argument("--no-scan", action="store_true",
                        help="every variant with unrolled layers (scan_layers=false)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=None)
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.warmup < 0 or args.rounds <= 0:
        parser.error("--steps and --rounds must be positive and --warmup >= 0")
    args.rounds = min(args.rounds, args.steps)
    args.remat = [r.strip() for r in args.remat.split(",") if r.strip()]
    if not args.remat:
        parser.error("--remat: name at least one remat policy")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference:
        print(json.dumps(reference(args.batch, args.length, args.vocab)))
        return 0
    if args.reference_json is None:
        print("maxtext_peer.py: --reference-json is required (benchmarks/maxtext_peer.sh "
              "computes it with our venv)", file=sys.stderr)
        return 2
    text = args.reference_json
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    ref = json.loads(text.strip().splitlines()[-1])  # the JSON is the last line printed
    if (ref["batch"], ref["length"]) != (args.batch, args.length):
        print(f"maxtext_peer.py: the reference is for batch {ref['batch']} x {ref['length']}, "
              f"this run asks for {args.batch} x {args.length}", file=sys.stderr)
        return 2

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("DECOUPLE_GCLOUD", "TRUE")  # MaxText: no Google Cloud clients
    import jax
    import jax.numpy as jnp
    import maxtext

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    opt = ref["optimizer"]
    print(f"maxtext {getattr(maxtext, '__version__', '?')}, jax {jax.__version__} "
          f"({jax.devices()[0].platform}, {jax.device_count()} device); {cores} cores; float32 "
          f"params and compute; AdamW lr {opt['learning_rate']} b1 {opt['b1']} b2 {opt['b2']} "
          f"eps {opt['eps']} weight decay {opt['weight_decay']} (RMSNorm scales not decayed), "
          f"no clipping")
    print(f"timing: {args.warmup} warm-up steps, then {args.steps} timed steps per remat policy "
          f"in {args.rounds} alternating rounds (one untimed step after each switch)")
    before = jax_matmul_peak(jax, jnp)
    steps, infos = {}, {}
    output_dir = tempfile.mkdtemp(prefix="maxtext_peer_")
    for remat in args.remat:
        policy, _, layout = remat.partition("/")
        if layout not in ("", "unrolled"):
            print(f"maxtext_peer.py: --remat {remat!r}: expected POLICY or POLICY/unrolled",
                  file=sys.stderr)
            return 2
        step, count, compile_seconds, info = maxtext_step(
            ref, policy, not (args.no_scan or layout), output_dir)
        print(f"  maxtext remat_policy={remat}: {count:,} parameters (ours: "
              f"{ref['params']:,}), compiled in {compile_seconds:.1f} s; scan_layers "
              f"{info['scan_layers']}, attention {info['attention']}, dtype {info['dtype']}, "
              f"weight_dtype {info['weight_dtype']}, {info['half_precision_ops']} bf16/f16 "
              f"arrays in the compiled step; {info['maxtext_tflops']:.3f} TFLOP/step by "
              f"MaxText's count (causal half of attention), {ref['flops_per_step'] / 1e12:.3f} "
              f"by ours (the whole square), ours used for MFU", flush=True)
        if count != ref["params"]:
            raise RuntimeError(f"MaxText builds {count:,} parameters, ours {ref['params']:,}: "
                               f"not the same model")
        steps[remat], infos[remat] = step, info
    timings = interleaved(steps, args.warmup, args.steps, args.rounds)
    print("  loss after the last step: " + ", ".join(
        f"{remat} {info['loss']():.4f}" for remat, info in infos.items()))
    after = jax_matmul_peak(jax, jnp)
    peak = max(before, after)
    print(f"matmul peak (float32 {MATMUL_SIZE}^3, median of {MATMUL_REPEATS}, before / after; "
          f"MFU uses the higher): jax {before / 1e9:.0f} / {after / 1e9:.0f} GFLOP/s")
    print()
    header = (f"{'model':<6} {'framework':<9} {'tokens/s':>9} {'step ms':>8} {'spread':>7} "
              f"{'others':>6} {'MFU':>6}  remat (layers)")
    print(header)
    print("-" * len(header))
    for remat, timing in timings.items():
        print(f"{'llama':<6} {'maxtext':<9} {ref['tokens_per_step'] / timing.median:>9.0f} "
              f"{1000 * timing.median:>8.1f} {100 * timing.spread:>6.0f}% "
              f"{timing.others:>6.2f} {100 * ref['flops_per_step'] / timing.median / peak:>5.1f}% "
              f" {remat.split('/')[0]} ({'scan' if infos[remat]['scan_layers'] else 'unrolled'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
