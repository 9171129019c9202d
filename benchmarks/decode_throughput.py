"""KV-cached greedy decoding of this framework against transformers' `generate`, on the same weights.

For the GPT-2, LLaMA and T5 v1.1 configurations of `train_throughput.py` (6 layers x 512, float32)
and each batch size, it times whole calls that turn 32-token prompts into exactly 128 new tokens:

- ours: `arch_compare.decoding.search.generate` with `DecodeConfig(max_new_tokens=128,
  ignore_eos=True)`, the path `infer` and evaluation use (host prompts in, host tokens out);
- torch: transformers' `generate` (greedy, `use_cache=True`, `min_new_tokens=128` and an EOS id
  that ours never produced, so neither side stops early nor masks a token the other would choose)
  on our random weights exported with `params_to_hf` / `config_to_hf` and read back by
  `from_pretrained`;

checks that both sides chose the same tokens (greedy on the same weights: only float rounding can
split them, and a split in a row changes the rest of that row), and prints per row: tokens/s of
each, ours / torch, ours' ms per decode step (the call minus its prefill, which is timed on its own
in the same rounds, over the 127 decode steps) and the memory-bandwidth floor of a step:

    bytes a step must read = every weight the decoder uses, once (the output head in full; of an
        untied input embedding and a position table only the b rows looked up; no encoder)
      + the self-attention keys/values of the average step (prompt + 64 tokens; T5: 65 slots)
      + (T5) the cross-attention keys/values of the 32 encoder tokens
    floor = bytes / the read bandwidth measured in the same run (a jitted `jnp.sum` over a
        float32 array far larger than any cache, median of several; numpy's figure is printed too)

    python benchmarks/decode_throughput.py [--batches 1,8,64] [--models gpt2,llama,t5]
                                           [--calls 3] [--rounds 3] [--wait-quiet 300]

For T5 the 32 prompt tokens are the encoder input and decoding starts from the decoder start token;
its tokens/s counts generated tokens only, like the decoder-only rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_throughput, run as a script

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from arch_compare.decoding.search import DecodeConfig, generate  # noqa: E402
from arch_compare.models import ModelConfig, build_model  # noqa: E402
from arch_compare.models.hf.checkpoint import save_hf_checkpoint  # noqa: E402
from arch_compare.models.model import BaseModel, Params  # noqa: E402
from timing import Timing, interleaved, others_load, time_steps, wait_until_quiet  # noqa: E402
from train_throughput import MODELS  # noqa: E402

PROMPT_TOKENS = 32
NEW_TOKENS = 128
BYTES_PER_FLOAT = 4  # float32 throughout
BANDWIDTH_FLOATS = 128 * 2**20  # 512 MiB: far past any CPU cache
BANDWIDTH_REPEATS = 7
DOT_FLOOR_SHAPE = (512, 32000)  # the kernel of `jax_dot_read_bandwidth`'s matmul
# Below this share of equal tokens the two sides are not decoding the same model: fail.
MIN_MATCH = 0.9
LOADED = 0.25  # cores used by others while a row was timed above which the run warns

Call = Callable[[], None]


# -------------------------------------------------------------------------------------------------
# The two sides


@dataclasses.dataclass
class Side:
    call: Call  # one whole generate call, waited for
    tokens: np.ndarray  # [b, NEW_TOKENS] from the last call


def make_prompts(config: ModelConfig, batch: int, seed: int = 0) -> np.ndarray:
    """[b, PROMPT_TOKENS] int32 ids in [2, vocab): never padding, start or (usually) EOS."""
    rng = np.random.default_rng(seed)
    return rng.integers(2, config.vocab_size, size=(batch, PROMPT_TOKENS), dtype=np.int32)


def ours(model: BaseModel, params: Params, prompts: np.ndarray) -> Side:
    config = DecodeConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    side = Side(call=lambda: None, tokens=np.zeros(0))

    def call():
        side.tokens = generate(model, params, prompts, config).tokens

    side.call = call
    return side


def ours_prefill(model: BaseModel, params: Params, prompts: np.ndarray) -> Call:
    """The prefill `generate` runs (prompt -> first logits and cache), timed apart so that the
    decode steps' share of a call is known."""
    prefill = jax.jit(lambda p, t, n: model.prefill(p, t, n, NEW_TOKENS - 1))
    tokens = jnp.asarray(prompts)
    lengths = jnp.full((len(prompts),), prompts.shape[1], jnp.int32)
    return lambda: jax.block_until_ready(prefill(params, tokens, lengths))


def hf_model(model: BaseModel, params: Params, directory: Path) -> torch.nn.Module:
    """transformers' model of our weights, through the export path users have."""
    save_hf_checkpoint(model, params, directory)
    auto = (transformers.AutoModelForSeq2SeqLM if model.config.is_encoder_decoder
            else transformers.AutoModelForCausalLM)
    module = auto.from_pretrained(directory).eval()
    if not model.config.tie_embeddings:
        # transformers 5.x has tied T5 v1.1's head to the embedding on load (DESIGN.md); a tied
        # reference would decode a different model.
        head, embed = module.get_output_embeddings(), module.get_input_embeddings()
        if head.weight.data_ptr() == embed.weight.data_ptr():
            raise RuntimeError(f"{directory}: transformers tied the output head of an untied "
                               f"{model.config.family} model")
    return module


def torch_side(module: torch.nn.Module, config: ModelConfig, prompts: np.ndarray,
               eos_id: int) -> Side:
    ids = torch.from_numpy(prompts.astype(np.int64))
    generation = transformers.GenerationConfig(
        do_sample=False, num_beams=1, use_cache=True, max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS, repetition_penalty=1.0, no_repeat_ngram_size=0,
        eos_token_id=eos_id, pad_token_id=config.pad_id,
        decoder_start_token_id=config.decoder_start_id)
    side = Side(call=lambda: None, tokens=np.zeros(0))
    skip = 1 if config.is_encoder_decoder else prompts.shape[1]  # start token / prompt

    def call():
        with torch.inference_mode():
            out = module.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  generation_config=generation)
        side.tokens = out[:, skip:].numpy()

    side.call = call
    return side


def unused_token(tokens: np.ndarray, vocab_size: int) -> int:
    """A token id ours never generated: torch's EOS, so it neither stops nor bans a choice."""
    return int(np.setdiff1d(np.arange(2, vocab_size), tokens)[0])


def match_rate(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(share of equal tokens, share of rows equal up to their first split's mean position /
    length): greedy rows that split once differ from there on, so the second says where."""
    if a.shape != b.shape:
        raise RuntimeError(f"token arrays differ in shape: ours {a.shape}, torch {b.shape}")
    equal = a == b
    first_split = np.where(equal.all(axis=1), a.shape[1], np.argmin(equal, axis=1))
    return float(equal.mean()), float(first_split.mean() / a.shape[1])


# -------------------------------------------------------------------------------------------------
# Bytes a decode step has to read, and how fast this machine reads them


def decoder_weight_bytes(model: BaseModel, params: Params, batch: int) -> int:
    """Bytes of every parameter a decode step reads: the decoder's, the output head in full, b
    rows of lookup-only tables (an untied token embedding, learned positions), no encoder."""
    cfg = model.config
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(key, "key", key)) for key in path]
        if names[0] in ("encoder", "encoder_relative_bias"):
            continue
        lookup_only = (names[0] == "position_embed"
                       or (names[0] == "token_embed" and not cfg.tie_embeddings))
        rows = min(batch, leaf.shape[0]) if lookup_only else leaf.shape[0]
        total += rows * math.prod(leaf.shape[1:]) * leaf.dtype.itemsize
    return total


def cache_bytes(cfg: ModelConfig, batch: int) -> int:
    """Keys and values the average decode step attends to (self- and cross-attention)."""
    per_slot = 2 * cfg.num_layers * batch * cfg.num_kv_heads * cfg.head_dim * BYTES_PER_FLOAT
    steps = NEW_TOKENS - 1  # decode steps after the prefill's token
    if cfg.is_encoder_decoder:
        # Slot 0 is the start token; step t attends to slots [0, t].
        self_slots = 1 + (steps + 1) / 2
        return round(per_slot * (self_slots + PROMPT_TOKENS))
    return round(per_slot * (PROMPT_TOKENS + (steps + 1) / 2))


def jax_read_bandwidth(floats: int = BANDWIDTH_FLOATS, repeats: int = BANDWIDTH_REPEATS) -> float:
    """Bytes/s a jitted float32 sum reads (median of `repeats`)."""
    x = jnp.ones((floats,), jnp.float32)
    total = jax.jit(jnp.sum).lower(x).compile()
    seconds = time_steps(lambda: total(x).block_until_ready(), 2, repeats).median
    return floats * BYTES_PER_FLOAT / seconds


def jax_dot_read_bandwidth(batch: int, repeats: int = BANDWIDTH_REPEATS) -> float:
    """Bytes/s of weights XLA's own matmul reads at this batch: a jitted float32 [b, 512] @
    [512, 32000] (an output head of these models), its kernel's bytes over the median time.
    At small batches XLA:CPU's dot kernels read weights well below the sum's bandwidth, so this
    is the floor the decode step could reach without kernels of its own."""
    rows, kernel = DOT_FLOOR_SHAPE
    x = jnp.ones((batch, rows), jnp.float32)
    w = jnp.ones((rows, kernel), jnp.float32)
    matmul = jax.jit(jnp.matmul).lower(x, w).compile()
    seconds = time_steps(lambda: matmul(x, w).block_until_ready(), 2, repeats * 3).median
    return rows * kernel * BYTES_PER_FLOAT / seconds


def numpy_read_bandwidth(floats: int = BANDWIDTH_FLOATS,
                         repeats: int = BANDWIDTH_REPEATS) -> float:
    x = np.ones((floats,), np.float32)
    return floats * BYTES_PER_FLOAT / time_steps(lambda: x.sum(), 1, repeats).median


# -------------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass(frozen=True)
class Row:
    model: str
    batch: int
    ours: Timing  # whole generate calls
    torch: Timing
    prefill: Timing  # ours' prefill alone
    read_bytes: int  # per decode step
    bandwidth: float  # bytes/s
    dot_bandwidth: float  # bytes/s of weights XLA's matmul reads at this batch
    match: float
    agree_until: float

    @property
    def ours_tokens_per_second(self) -> float:
        return self.batch * NEW_TOKENS / self.ours.median

    @property
    def torch_tokens_per_second(self) -> float:
        return self.batch * NEW_TOKENS / self.torch.median

    @property
    def step_seconds(self) -> float:
        return (self.ours.median - self.prefill.median) / (NEW_TOKENS - 1)

    @property
    def floor_seconds(self) -> float:
        return self.read_bytes / self.bandwidth

    @property
    def dot_floor_seconds(self) -> float:
        return self.read_bytes / self.dot_bandwidth

    @property
    def others(self) -> float:
        return (self.ours + self.torch).others


def format_table(rows: list[Row]) -> str:
    header = (f"{'model':<6} {'batch':>5} {'ours tok/s':>10} {'torch tok/s':>11} "
              f"{'ours/torch':>10} {'step ms':>7} {'MB/step':>7} {'floor ms':>8} "
              f"{'step/floor':>10} {'dot floor':>9} {'step/dot':>8} {'spread':>6} "
              f"{'others':>6} {'match':>6}")
    lines = [header, "-" * len(header)]
    for row in rows:
        spread = max(row.ours.spread, row.torch.spread)
        lines.append(
            f"{row.model:<6} {row.batch:>5} {row.ours_tokens_per_second:>10.0f} "
            f"{row.torch_tokens_per_second:>11.0f} "
            f"{row.ours_tokens_per_second / row.torch_tokens_per_second:>9.2f}x "
            f"{1000 * row.step_seconds:>7.2f} {row.read_bytes / 1e6:>7.1f} "
            f"{1000 * row.floor_seconds:>8.2f} {row.step_seconds / row.floor_seconds:>9.2f}x "
            f"{1000 * row.dot_floor_seconds:>9.2f} "
            f"{row.step_seconds / row.dot_floor_seconds:>7.2f}x "
            f"{100 * spread:>5.0f}% {row.others:>6.2f} {100 * row.match:>5.1f}%")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes")
    parser.add_argument("--calls", type=int, default=3,
                        help="timed generate calls per side, model and batch")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate ours / torch / prefill this many times (the calls are "
                             "split between rounds)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: the machine's cores)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before the bandwidth and each row's timing, wait up to this long "
                             "for other processes to leave the CPUs idle (default: no wait)")
    args = parser.parse_args(argv)
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in args.models if name not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    if not args.batches or min(args.batches) <= 0:
        parser.error(f"--batches: need positive sizes, got {args.batches}")
    if args.calls <= 0 or args.rounds <= 0:
        parser.error("--calls and --rounds must be positive")
    args.rounds = min(args.rounds, args.calls)
    return args


def measure_bandwidth(wait: Callable[[], object], batches: list[int]
                      ) -> tuple[float, dict[int, float]]:
    """(the sum's read bandwidth, {batch: XLA's matmul's weight-read bandwidth})."""
    wait()
    jax_bw, numpy_bw = jax_read_bandwidth(), numpy_read_bandwidth()
    print(f"read bandwidth (float32 sum over {BANDWIDTH_FLOATS * BYTES_PER_FLOAT >> 20} MiB, "
          f"median of {BANDWIDTH_REPEATS}): jax {jax_bw / 1e9:.1f} GB/s, numpy "
          f"{numpy_bw / 1e9:.1f} GB/s", flush=True)
    dot_bw = {batch: jax_dot_read_bandwidth(batch) for batch in batches}
    print(f"weights read by XLA's float32 [b, {DOT_FLOOR_SHAPE[0]}] @ {list(DOT_FLOOR_SHAPE)}: "
          + ", ".join(f"b={batch} {bw / 1e9:.1f} GB/s" for batch, bw in dot_bw.items()),
          flush=True)
    return jax_bw, dot_bw


def run_model(name: str, args: argparse.Namespace, wait: Callable[[], object],
              directory: Path) -> list[Row]:
    """The rows of one model; their bandwidths are filled in by `main`."""
    config = MODELS[name](None)
    model = build_model(config)
    params = model.init(jax.random.key(0))
    module = hf_model(model, params, directory / name)
    count = sum(p.numel() for p in module.parameters())
    print(f"{name}: {config.family}, {config.num_layers} layers x {config.d_model}, vocab "
          f"{config.vocab_size}; ours {model.param_count():,} parameters, torch {count:,} "
          f"(attention {module.config._attn_implementation!r})", flush=True)
    rows = []
    for batch in args.batches:
        prompts = make_prompts(config, batch)
        mine = ours(model, params, prompts)
        began = time.perf_counter()
        mine.call()  # compiles
        print(f"  batch {batch}: ours compiled and ran once in "
              f"{time.perf_counter() - began:.1f} s", flush=True)
        theirs = torch_side(module, config, prompts, unused_token(mine.tokens, config.vocab_size))
        prefill = ours_prefill(model, params, prompts)
        waited = wait()
        if waited:
            print(f"  waited {waited:.0f} s for a quiet machine")
        timings = interleaved({"ours": mine.call, "torch": theirs.call, "prefill": prefill},
                              1, args.calls, args.rounds)
        match, agree = match_rate(mine.tokens, theirs.tokens)
        if match < MIN_MATCH:
            raise RuntimeError(
                f"{name} batch {batch}: only {100 * match:.1f}% of tokens equal between ours "
                f"and transformers (rows agree for their first {100 * agree:.0f}% on average); "
                f"the two sides are not decoding the same model")
        read = decoder_weight_bytes(model, params, batch) + cache_bytes(config, batch)
        rows.append(Row(name, batch, timings["ours"], timings["torch"], timings["prefill"],
                        read, math.nan, math.nan, match, agree))
        print(f"  batch {batch}: ours {rows[-1].ours_tokens_per_second:.0f} tok/s, torch "
              f"{rows[-1].torch_tokens_per_second:.0f} tok/s, step "
              f"{1000 * rows[-1].step_seconds:.2f} ms", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count())
    torch.set_num_threads(args.torch_threads or cores)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
          f"{cores} cores; float32; {PROMPT_TOKENS}-token prompts, exactly {NEW_TOKENS} new "
          f"tokens, greedy; others now {others_load():.2f} cores")
    print(f"timing: whole generate calls, 1 untimed call per side after each switch, then "
          f"{args.calls} timed per side in {args.rounds} alternating rounds; medians. step ms: "
          f"ours' (call - prefill) / {NEW_TOKENS - 1}; floor: bytes per step / read bandwidth")
    wait = lambda: args.wait_quiet and wait_until_quiet(args.wait_quiet)
    measured = [measure_bandwidth(wait, args.batches)]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models:
            rows += run_model(name, args, wait, Path(directory))
    measured.append(measure_bandwidth(wait, args.batches))
    # The floors use the best bandwidth the machine showed: a slow, loaded measurement must not
    # flatter our step / floor ratios.
    bandwidth = max(sum_bw for sum_bw, _ in measured)
    dot_bandwidth = {batch: max(dot[batch] for _, dot in measured) for batch in args.batches}
    rows = [dataclasses.replace(row, bandwidth=bandwidth, dot_bandwidth=dot_bandwidth[row.batch])
            for row in rows]
    print(f"\nfloor at {bandwidth / 1e9:.1f} GB/s (the sum's, the higher of before / after); "
          f"dot floor: the same bytes at the weight-read bandwidth of XLA's matmul at that batch; "
          f"match: share of equal tokens")
    print(format_table(rows))
    loaded = [f"{row.model}/{row.batch}" for row in rows if row.others > LOADED]
    if loaded:
        print(f"\nWARNING: other processes kept more than {LOADED} cores busy while timing "
              f"{', '.join(loaded)}; compare those rows with care (--wait-quiet helps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
