"""Training throughput of this framework against transformers' PyTorch, one table per run.

For a GPT-2, a LLaMA and a T5 v1.1 configuration of 6 layers x 512 wide (float32), it times:

- ours: `build_model` + `make_train_step` with `make_optimizer(OptimizerConfig("adamw", ...))`,
  jit-compiled once (state donated, as the trainer does), `block_until_ready` after every step;
  once with the layer scan (row `jax`, the trainer's default) and once with the layers unrolled
  (row `jax/unrolled`, `ModelConfig.scan_layers=False`), unless `--layers` picks one;
- torch: transformers' model of the same configuration (`config_to_hf`), built fresh in training
  mode with dropout 0, cross-entropy on every target token, `torch.optim.AdamW` with the same
  hyper-parameters and the same weight-decay mask (matrices decayed, vectors not);
- the machine's float32 matmul peak for each framework (a large square matmul);

and prints tokens/s, median step time, MFU (model FLOPs/s over that framework's matmul peak,
FLOPs from `arch_compare.budget.training_flops(..., causal="full")`, which counts the masked
square that a dense implementation executes) and the ratio ours / torch.

    python benchmarks/train_throughput.py [--steps 10] [--batch 8] [--length 256]
                                          [--models gpt2,llama,t5] [--vocab 32000]
                                          [--layers scan,unrolled] [--wait-quiet 300]

Both sides get the same token arrays. Decoder-only rows are `--length` tokens with the loss on
every position; the encoder-decoder rows are `--input-length` encoder tokens (default: `--length`)
and `--length` decoder tokens with the loss on every decoder token, and its tokens/s counts both.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable

import numpy as np

# Before jax is imported: keep XLA and TensorFlow quiet, and never grab an accelerator by
# surprise when one exists (the numbers are for the CPU both frameworks share).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from arch_compare import optim  # noqa: E402
from arch_compare.budget import training_flops  # noqa: E402
from arch_compare.execution import ExecutionConfig  # noqa: E402
from arch_compare.models.config import REMAT_CHOICES  # noqa: E402
from arch_compare.models import ModelConfig, build_model, zoo  # noqa: E402
from arch_compare.models.hf.configs import config_to_hf  # noqa: E402
from arch_compare.trainer.steps import TrainState, make_train_step  # noqa: E402
from timing import LOADED, Timing, interleaved, time_steps, wait_until_quiet  # noqa: E402

# -------------------------------------------------------------------------------------------------
# What is compared

D_MODEL, LAYERS, HEADS = 512, 6, 8
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01
ADAM = optim.DEFAULTS["adamw"]  # b1, b2, eps: the same three numbers go to torch


def _gpt2(vocab: int | None) -> ModelConfig:
    return zoo.gpt2(D_MODEL, LAYERS, HEADS, vocab_size=vocab or zoo.GPT2_VOCAB)


def _llama(vocab: int | None) -> ModelConfig:
    # LLaMA's rule for d_ff: 2/3 of 4 * d_model, rounded up to a multiple of 256 (1365 -> 1536).
    return zoo.llama(D_MODEL, LAYERS, HEADS, 1536, vocab_size=vocab or zoo.LLAMA_VOCAB)


def _t5(vocab: int | None) -> ModelConfig:
    # T5 v1.1-small's widths (gated GELU, d_ff 1024, 8 heads of 64, untied head) at 6 + 6 layers.
    return zoo.t5_v1_1(D_MODEL, LAYERS, HEADS, 1024, vocab_size=vocab or zoo.T5_VOCAB)


# Our layer loops -> the row's framework name; the first is the trainer's default.
LAYER_LOOPS = {"scan": "jax", "unrolled": "jax/unrolled"}

# Name -> configuration, given the vocabulary override (None: the family's real vocabulary).
MODELS: dict[str, Callable[[int | None], ModelConfig]] = {
    "gpt2": _gpt2, "llama": _llama, "t5": _t5}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model and the shape of its batch."""

    name: str
    config: ModelConfig
    batch: int
    input_length: int  # encoder tokens per row (encoder-decoder only; 0 for decoder-only)
    target_length: int  # decoder tokens per row, every one of them with a loss

    def __post_init__(self):
        if self.batch <= 0 or self.target_length <= 0 or self.input_length < 0:
            raise ValueError(f"{self.name}: need batch > 0, target_length > 0 and "
                             f"input_length >= 0, got {self.batch}, {self.target_length}, "
                             f"{self.input_length}")
        if self.config.is_encoder_decoder != (self.input_length > 0):
            raise ValueError(f"{self.name}: input_length must be > 0 exactly for "
                             f"encoder-decoder models, got {self.input_length}")
        if self.config.position == "learned" and self.target_length > self.config.max_length:
            raise ValueError(f"{self.name}: length {self.target_length} exceeds the learned "
                             f"position table ({self.config.max_length})")

    @property
    def tokens_per_step(self) -> int:
        return self.batch * (self.input_length + self.target_length)

    @property
    def flops_per_step(self) -> float:
        return self.batch * training_flops(self.config, self.input_length, self.target_length,
                                           causal="full")


def make_tokens(workload: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """seqio features (int32, ids in [2, vocab): never padding, start or EOS)."""
    rng = np.random.default_rng(seed)
    b, l, v = workload.batch, workload.target_length, workload.config.vocab_size
    ids = lambda length: rng.integers(2, v, size=(b, length), dtype=np.int32)
    if workload.config.is_encoder_decoder:
        targets = ids(l)
        start = np.full((b, 1), workload.config.decoder_start_id, np.int32)
        batch = {"encoder_input_tokens": ids(workload.input_length),
                 "decoder_input_tokens": np.concatenate([start, targets[:, :-1]], axis=1)}
    else:
        row = ids(l + 1)  # language modelling: each target is the next input
        batch = {"decoder_input_tokens": row[:, :-1]}
        targets = row[:, 1:]
    batch["decoder_target_tokens"] = np.ascontiguousarray(targets)
    batch["decoder_loss_weights"] = np.ones((b, l), np.int32)
    return batch


# -------------------------------------------------------------------------------------------------
# The two training steps; each returns (run one step and wait for it, parameter count)

Step = Callable[[], None]


def jax_step(workload: Workload, tokens: dict[str, np.ndarray]) -> tuple[Step, int, float]:
    """Our step as the trainer builds it; also returns its compile time in seconds."""
    model = build_model(workload.config)
    opt_cfg = optim.OptimizerConfig("adamw", optim.ScheduleConfig(LEARNING_RATE),
                                    weight_decay=WEIGHT_DECAY)
    optimizer = optim.make_optimizer(opt_cfg, model.logical_axes())
    schedule = optim.make_schedule(opt_cfg.schedule)
    params = model.init(jax.random.key(0))
    state = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)))(params)
    batch = {name: jnp.asarray(value) for name, value in tokens.items()}
    began = time.perf_counter()
    compiled = jax.jit(make_train_step(model, optimizer, schedule),
                       donate_argnums=(0,)).lower(state, batch).compile()
    compile_seconds = time.perf_counter() - began
    holder = [state]  # the state is donated: each step consumes the previous one

    def step():
        holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready((holder[0], metrics))

    return step, model.param_count(), compile_seconds


def _hf_config(cfg: ModelConfig) -> transformers.PretrainedConfig:
    hf = config_to_hf(cfg)
    hf.update(use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
              dropout_rate=0.0, attention_dropout=0.0)  # ours has no dropout
    return transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)


def _hf_model(cfg: ModelConfig) -> torch.nn.Module:
    model = transformers.AutoModelForCausalLM if not cfg.is_encoder_decoder else \
        transformers.AutoModelForSeq2SeqLM
    module = model.from_config(_hf_config(cfg))
    if cfg.is_encoder_decoder and not cfg.tie_embeddings:
        # transformers 5.x ties T5's head to the embedding whatever the config says (see
        # DESIGN.md); T5 v1.1 has a head of its own, so give it one.
        module.lm_head = torch.nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
    return module.train()


def torch_step(workload: Workload, tokens: dict[str, np.ndarray]) -> tuple[Step, int, str]:
    """transformers' step; also returns the attention implementation it runs."""
    torch.manual_seed(0)
    model = _hf_model(workload.config)
    params = list(model.parameters())  # unique tensors: a tied embedding appears once
    # Our weight-decay mask: every matrix decays, vectors (norm scales, biases) do not.
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=(ADAM.b1, ADAM.b2),
                                  eps=ADAM.eps)
    as_torch = {name: torch.from_numpy(value.astype(np.int64)) for name, value in tokens.items()}
    targets = as_torch["decoder_target_tokens"].reshape(-1)  # [b * l]
    if workload.config.is_encoder_decoder:
        inputs = as_torch["encoder_input_tokens"]
        forward = lambda: model(input_ids=inputs, attention_mask=(inputs != 0).long(),
                                decoder_input_ids=as_torch["decoder_input_tokens"]).logits
    else:
        forward = lambda: model(input_ids=as_torch["decoder_input_tokens"]).logits

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = forward()  # [b, l, v]
        loss = torch.nn.functional.cross_entropy(logits.reshape(targets.shape[0], -1), targets)
        loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in params), model.config._attn_implementation


MATMUL_SIZE = 2048
MATMUL_REPEATS = 10


def jax_matmul_peak(n: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> float:
    """FLOP/s of a float32 [n, n] @ [n, n] under XLA (median of `repeats`)."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    return 2 * n ** 3 / time_steps(lambda: matmul(a, b).block_until_ready(), 2, repeats).median


def torch_matmul_peak(n: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> float:
    """FLOP/s of a float32 [n, n] @ [n, n] in torch (median of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return 2 * n ** 3 / time_steps(lambda: torch.mm(a, b, out=out), 2, repeats).median


MATMUL_PEAKS: dict[str, Callable[[], float]] = {"jax": jax_matmul_peak,
                                                "torch": torch_matmul_peak}

# -------------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass(frozen=True)
class Row:
    model: str
    framework: str
    workload: Workload
    timing: Timing
    peak: float  # this framework's matmul FLOP/s

    @property
    def tokens_per_second(self) -> float:
        return self.workload.tokens_per_step / self.timing.median

    @property
    def mfu(self) -> float:
        return self.workload.flops_per_step / self.timing.median / self.peak


def format_table(rows: list[Row]) -> str:
    torch_speed = {row.model: row.tokens_per_second for row in rows if row.framework == "torch"}
    header = (f"{'model':<6} {'framework':<12} {'tokens/s':>9} {'step ms':>8} {'spread':>7} "
              f"{'others':>6} {'MFU':>6} {'ours/torch':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = row.tokens_per_second / torch_speed[row.model] if row.model in torch_speed else None
        lines.append(
            f"{row.model:<6} {row.framework:<12} {row.tokens_per_second:>9.0f} "
            f"{1000 * row.timing.median:>8.1f} {100 * row.timing.spread:>6.0f}% "
            f"{row.timing.others:>6.2f} {100 * row.mfu:>5.1f}% "
            f"{f'{ratio:.2f}x' if row.framework.startswith('jax') and ratio else '':>10}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256,
                        help="decoder tokens per row (decoder-only: the whole row)")
    parser.add_argument("--input-length", type=int, default=None,
                        help="encoder tokens per row for encoder-decoder models "
                             "(default: --length)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--vocab", type=int, default=None,
                        help="vocabulary for every model (default: each family's real one)")
    parser.add_argument("--frameworks", default="jax,torch", help="jax, torch or both")
    parser.add_argument("--layers", default=",".join(LAYER_LOOPS),
                        help="our layer loop: scan (the trainer's default, one compiled block "
                             "however deep), unrolled (ModelConfig.scan_layers=False), or both "
                             "as two jax rows (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate the frameworks this many times per model (the timed "
                             "steps are split between rounds)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: the machine's cores)")
    parser.add_argument("--remat", default=ExecutionConfig().remat, choices=REMAT_CHOICES,
                        help="our step's rematerialisation policy of each block (default: the "
                             "trainer's default, %(default)s)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before the peaks and each model's timing, wait up to this long "
                             "for other processes to leave the CPUs idle (default: no wait)")
    args = parser.parse_args(argv)
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in args.models if name not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    args.frameworks = [name.strip() for name in args.frameworks.split(",") if name.strip()]
    if not args.frameworks or set(args.frameworks) - {"jax", "torch"}:
        parser.error(f"--frameworks: expected jax and/or torch, got {args.frameworks}")
    if args.steps <= 0 or args.warmup < 0 or args.rounds <= 0:
        parser.error("--steps and --rounds must be positive and --warmup >= 0")
    args.layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if not args.layers or set(args.layers) - set(LAYER_LOOPS):
        parser.error(f"--layers: expected {' and/or '.join(LAYER_LOOPS)}, got {args.layers}")
    args.rounds = min(args.rounds, args.steps)
    return args


def make_workload(name: str, args: argparse.Namespace) -> Workload:
    config = MODELS[name](args.vocab).replace(remat=args.remat)
    input_length = (args.input_length or args.length) if config.is_encoder_decoder else 0
    return Workload(name, config, args.batch, input_length, args.length)


def describe(workload: Workload) -> str:
    cfg = workload.config
    shape = (f"{cfg.num_encoder_layers}+{cfg.num_layers} layers" if cfg.is_encoder_decoder
             else f"{cfg.num_layers} layers")
    lengths = (f"{workload.input_length} encoder + {workload.target_length} decoder tokens"
               if cfg.is_encoder_decoder else f"{workload.target_length} tokens")
    return (f"{workload.name}: {cfg.family}, {shape} x {cfg.d_model}, {cfg.num_heads} heads of "
            f"{cfg.head_dim}, d_ff {cfg.d_ff}{' gated' if cfg.mlp_gated else ''} "
            f"{cfg.mlp_activation}, vocab {cfg.vocab_size}, "
            f"{'tied' if cfg.tie_embeddings else 'untied'} head; batch {workload.batch} x "
            f"({lengths}); {workload.flops_per_step / 1e9:.1f} GFLOP/step")


def build_steps(workload: Workload, frameworks: list[str], layers: list[str]) -> dict[str, Step]:
    """Each framework's step for `workload` (ours once per layer loop), after checking they all
    build the same model."""
    tokens = make_tokens(workload)
    steps, counts = {}, {}
    for loop in layers if "jax" in frameworks else []:
        name = LAYER_LOOPS[loop]
        config = workload.config.replace(scan_layers=loop == "scan")
        steps[name], counts[name], compile_seconds = jax_step(
            dataclasses.replace(workload, config=config), tokens)
        print(f"  {name}: {counts[name]:,} parameters, compiled in {compile_seconds:.1f} s")
    if "torch" in frameworks:
        steps["torch"], counts["torch"], attention = torch_step(workload, tokens)
        print(f"  torch: {counts['torch']:,} parameters, attention {attention!r}")
    if len(set(counts.values())) > 1:
        raise RuntimeError(f"{workload.name}: parameter counts differ {counts}: the two sides "
                           f"do not build the same model")
    return steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count())
    torch.set_num_threads(args.torch_threads or cores)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
          f"{cores} cores; float32; AdamW lr {LEARNING_RATE} b1 {ADAM.b1} b2 {ADAM.b2} "
          f"eps {ADAM.eps} weight decay {WEIGHT_DECAY} (matrices only); ours remat "
          f"{args.remat!r}; torch eager (no "
          f"torch.compile), its default AdamW implementation")
    print(f"timing: {args.warmup} warm-up steps, then {args.steps} timed steps per side in "
          f"{args.rounds} alternating rounds (one untimed step after each switch); step ms is "
          f"their median, spread (max - min) / median, others the cores other processes kept "
          f"busy meanwhile")
    wait = lambda: args.wait_quiet and wait_until_quiet(args.wait_quiet)
    wait()
    before = {name: MATMUL_PEAKS[name]() for name in args.frameworks}
    timed = []  # (model, framework, workload, timing); MFU needs the peaks measured after
    for name in args.models:
        workload = make_workload(name, args)
        print(describe(workload), flush=True)
        steps = build_steps(workload, args.frameworks, args.layers)
        waited = wait()
        if waited:
            print(f"  waited {waited:.0f} s for a quiet machine")
        timings = interleaved(steps, args.warmup, args.steps, args.rounds)
        timed += [(name, framework, workload, timing) for framework, timing in timings.items()]
        del steps  # frees both sides' states before the next model
    wait()
    after = {name: MATMUL_PEAKS[name]() for name in args.frameworks}
    # A peak is the best the machine did: a run slowed by other load must not inflate MFU.
    peak = {name: max(before[name], after[name]) for name in args.frameworks}
    print(f"matmul peak (float32 {MATMUL_SIZE}^3, median of {MATMUL_REPEATS}, before / after "
          f"the models; MFU uses the higher): " + ", ".join(
              f"{name} {before[name] / 1e9:.0f} / {after[name] / 1e9:.0f} GFLOP/s"
              for name in args.frameworks))
    rows = [Row(model, framework, workload, timing, peak[framework.split("/")[0]])
            for model, framework, workload, timing in timed]
    print()
    print(format_table(rows))
    loaded = [f"{row.model}/{row.framework}" for row in rows if row.timing.others > LOADED]
    if loaded:
        print(f"\nWARNING: other processes kept more than {LOADED} cores busy while timing "
              f"{', '.join(loaded)}; compare those rows with care (--wait-quiet helps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
