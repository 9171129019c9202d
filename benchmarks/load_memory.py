"""Peak host memory of loading a checkpoint straight into its shardings, against the old path.

Writes a random LLaMA-style checkpoint (float32, default d_model 2048, 4 layers, d_ff 5632,
vocabulary 32000: 337M parameters, 1.35 GB) as a Hugging Face directory and as a native (orbax)
checkpoint, then, for each way of loading, starts a fresh process with 8 fake CPU devices, builds
fsdp-8 shardings and loads the checkpoint onto them. Each process reports its resident memory
just before loading (VmRSS), its high-water mark after (VmHWM, the same number as
`resource.getrusage(...).ru_maxrss`) and the seconds taken; the table shows the peak increase
against the checkpoint's size and its largest tensor.

The ways of loading:

- `sharded`: `load_checkpoint(path, shardings=...)`, each shard read straight from the files.
- `host+put`: `load_checkpoint(path)` into host numpy arrays, then `jax.device_put` onto the
  shardings (the new host path, as the trainer placed parameters before this loader).
- `old`: the previous loader, read from git (`--old-revision`): HF tensors read whole, layers
  stacked and cast, orbax trees restored whole, then `jax.device_put`.

On fake CPU devices the loaded shards themselves live in host memory, so the floor is about one
copy of the model; what the table shows is whether any further whole copies appear on the way.
The temporary checkpoints are deleted afterwards unless `--keep` is given.

    python benchmarks/load_memory.py [--layers 4] [--d-model 2048] [--workdir /tmp/...] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICES = 8


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (VmRSS: now; VmHWM: the peak so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _config(args):
    from arch_compare.models.zoo import llama
    return llama(args.d_model, args.layers, args.d_model // 128, args.d_ff,
                 vocab_size=args.vocab)


def write_checkpoints(args, workdir: Path) -> dict:
    """Random parameters written as HF safetensors and as a native checkpoint."""
    import jax
    import numpy as np

    from arch_compare.models import build_model
    from arch_compare.models.hf import save_hf_checkpoint
    from arch_compare.models.native import save_model

    model = build_model(_config(args))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape, np.float32),
                          model.abstract_params())
    leaves = jax.tree.leaves(params)
    save_hf_checkpoint(model, params, workdir / "hf")
    save_model(workdir / "native", model, params)
    del params
    hf_files = sorted((workdir / "hf").glob("*.safetensors"))
    return {"parameters": model.param_count(),
            "model_bytes": sum(leaf.nbytes for leaf in leaves),
            "largest_tensor_bytes": max(leaf.nbytes for leaf in leaves),
            # The largest single HF tensor (one layer of a stacked parameter, or the embedding).
            "largest_hf_tensor_bytes": _largest_hf_tensor(workdir / "hf"),
            "hf_file_bytes": sum(f.stat().st_size for f in hf_files)}


def _largest_hf_tensor(directory: Path) -> int:
    from safetensors import safe_open
    largest = 0
    for file in directory.glob("*.safetensors"):
        with safe_open(file, "np") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                largest = max(largest, 4 * math.prod(shape))  # float32
    return largest


def _old_loader(revision: str):
    """The previous HF reader (`params_from_hf` reading whole tensors), from git."""
    source = subprocess.run(["git", "show", f"{revision}:arch_compare/models/hf/checkpoint.py"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    namespace = {"__name__": "old_checkpoint"}
    exec(compile(source, f"{revision}:arch_compare/models/hf/checkpoint.py", "exec"), namespace)
    return namespace


def measure(kind: str, way: str, path: str, revision: str) -> dict:
    """Runs in the fresh process: load once, report memory and time."""
    import gc

    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from arch_compare import partitioning
    from arch_compare.models import build_model
    from arch_compare.models.hf.checkpoint import read_hf_config
    from arch_compare.models.loading import load_checkpoint
    from arch_compare.models.native import read_config

    mesh = partitioning.make_mesh(partitioning.MeshConfig(fsdp=DEVICES))
    shardings = lambda model: partitioning.param_shardings(model.logical_axes(),
                                                           model.abstract_params(), mesh)
    config = read_hf_config(path) if kind == "hf" else read_config(path)
    model = build_model(config)
    old = _old_loader(revision) if way == "old" else None
    jax.device_put(jax.numpy.zeros(DEVICES), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("fsdp")))  # start the CPU client before measuring
    gc.collect()
    before, hwm_before = _status("VmRSS"), _status("VmHWM")
    began = time.perf_counter()
    if way == "sharded":
        params = load_checkpoint(path, shardings=shardings).params
    elif way == "host+put":
        params = jax.device_put(load_checkpoint(path).params, shardings(model))
    else:  # the old load_params: the whole tree to host, np.asarray in the dtype, device_put
        if kind == "hf":
            host = old["params_from_hf"](old["SafetensorsReader"](Path(path)), model)
        else:
            with ocp.StandardCheckpointer() as checkpointer:
                host = checkpointer.restore(Path(path) / "params", model.abstract_params())
        host = jax.tree.map(lambda x: np.asarray(x, model.config.weight_dtype), host)
        params = jax.device_put(host, shardings(model))
        del host
    jax.block_until_ready(params)
    seconds = time.perf_counter() - began
    after, peak = _status("VmRSS"), _status("VmHWM")
    leaves = jax.tree.leaves(params)
    shard_bytes = sum(s.data.nbytes for leaf in leaves for s in leaf.addressable_shards)
    return {"kind": kind, "way": way, "seconds": seconds, "rss_before": before,
            "hwm_before": hwm_before, "rss_after": after, "peak": peak,
            "result_bytes": shard_bytes,
            "fsdp_split": sum(leaf.addressable_shards[0].data.shape != leaf.shape
                              for leaf in leaves)}


def _run_fresh(kind: str, way: str, path: Path, revision: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
    result = subprocess.run([sys.executable, __file__, "--measure", kind, way, str(path),
                             "--old-revision", revision], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {way} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=2048)
    parser.add_argument("--d-ff", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    parser.add_argument("--old-revision", default="fa16432",
                        help="git revision holding the previous loader (default fa16432)")
    parser.add_argument("--ways", default="sharded,host+put,old")
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "WAY", "PATH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.old_revision)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="load_memory_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        sizes = write_checkpoints(args, workdir)
        gb = lambda n: f"{n / 1e9:.2f} GB"
        print(f"checkpoint: {sizes['parameters']:,} float32 parameters, "
              f"{gb(sizes['model_bytes'])} (safetensors files {gb(sizes['hf_file_bytes'])}); "
              f"largest parameter {gb(sizes['largest_tensor_bytes'])}, largest HF tensor "
              f"{gb(sizes['largest_hf_tensor_bytes'])}; {DEVICES} fake CPU devices, fsdp "
              f"{DEVICES}")
        rows = []
        for kind in ("hf", "native"):
            for way in args.ways.split(","):
                result = _run_fresh(kind, way, workdir / kind, args.old_revision)
                rows.append(result)
                print(json.dumps(result), file=sys.stderr)
        print("\n| checkpoint | loading | peak RSS increase | x model | beyond the result "
              "| x largest HF tensor | seconds |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in rows:
            increase = row["peak"] - row["rss_before"]
            beyond = increase - row["result_bytes"]
            print(f"| {row['kind']} | {row['way']} | {gb(increase)} | "
                  f"{increase / sizes['model_bytes']:.2f} | {gb(beyond)} | "
                  f"{beyond / sizes['largest_hf_tensor_bytes']:.1f} | {row['seconds']:.1f} |")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
