"""Serve a checkpoint as an OpenAI-compatible chat endpoint (POST /v1/chat/completions).

The checkpoint is a training MODEL_DIR (its newest checkpoint), a native checkpoint or a local
Hugging Face directory; --vocabulary is its family's vocabulary file. Any OpenAI-compatible
client, including `OpenAIChatTarget` (collection from an endpoint), can then ask it:
GET /v1/models, GET /health, POST /v1/chat/completions (non-streaming). It listens on
127.0.0.1 unless --host says otherwise, prints its URL when ready and stops on SIGTERM / Ctrl-C.

On several devices, --mesh splits the model as training does (parameters by the partitioning
table, each batch's rows over data x fsdp), so a model too large for one chip can be served by
the chips that trained it:

    arch-compare serve --checkpoint RUN --vocabulary spm.model --mesh fsdp=4,tensor=2 \
        --dtype bfloat16

The server is one process: its mesh spans this host's devices (not several hosts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arch_compare.execution import AUTO, ExecutionConfig
from arch_compare.imitation.model_target import ModelTarget
from arch_compare.models.config import DTYPES
from arch_compare.partitioning import MESH_AXES
from arch_compare.serving import serve


def parse_mesh(text: str) -> dict[str, int] | str:
    """`fsdp=4,tensor=2` -> {"fsdp": 4, "tensor": 2} (axes left out are 1); `auto` as is."""
    if text.strip() == AUTO:
        return AUTO
    sizes = {}
    for part in text.split(","):
        axis, _, size = part.strip().partition("=")
        if axis not in MESH_AXES or not size.strip().isdigit() or axis in sizes:
            raise argparse.ArgumentTypeError(
                f"--mesh {text!r}: expected {AUTO!r} or AXIS=SIZE pairs separated by commas, "
                f"axes {', '.join(MESH_AXES)} (each once), e.g. fsdp=4,tensor=2")
        sizes[axis] = int(size)
    ExecutionConfig(mesh=sizes)  # sizes must be positive: say so at the command line
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="training MODEL_DIR, native checkpoint or Hugging Face directory")
    parser.add_argument("--vocabulary", type=Path, required=True,
                        help="the model family's vocabulary (SentencePiece .model or "
                             "tokenizer.json)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    parser.add_argument("--model-name", default=None,
                        help="the model id clients send and /v1/models lists (default: the "
                             "checkpoint directory's name)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="requests generated together (fixed batch shape; default 8)")
    parser.add_argument("--max-tokens-limit", type=int, default=2048,
                        help="largest max_tokens a request may ask for (default 2048)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="refuse longer prompts with HTTP 400 (default: what the model fits)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="compute dtype, and parameter dtype unless --param-dtype says "
                             "otherwise (default: the checkpoint's)")
    parser.add_argument("--param-dtype", choices=DTYPES, default=None,
                        help="dtype the parameters are held in (default: --dtype, else the "
                             "checkpoint's)")
    parser.add_argument("--mesh", type=_mesh_argument, default=None,
                        help="devices to split the model over, as in training: AXIS=SIZE pairs "
                             "of the data, fsdp and tensor axes (their product: the devices "
                             "used), e.g. fsdp=4,tensor=2; or 'auto' (the smallest fsdp, then "
                             "tensor, split over all devices that divides --max-batch and fits "
                             "their memory). Default: one device")


def _mesh_argument(text: str):
    try:
        return parse_mesh(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: {error}") from None


def execution_of(args: argparse.Namespace) -> ExecutionConfig | None:
    """The execution settings --mesh, --dtype and --param-dtype ask for; None when only --dtype
    (or nothing) is given: one device, as the checkpoint loads. Dtypes left out are the
    checkpoint's own."""
    if args.mesh is None and args.param_dtype is None:
        return None
    from arch_compare.models.loading import CHECKPOINT_KINDS, checkpoint_kind

    config = CHECKPOINT_KINDS[checkpoint_kind(args.checkpoint)].read_config(args.checkpoint)
    dtype = args.dtype or config.dtype
    return ExecutionConfig(mesh=args.mesh if args.mesh is not None else {}, dtype=dtype,
                           param_dtype=args.param_dtype or args.dtype or config.param_dtype)


def run(args: argparse.Namespace) -> int:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be positive, got {args.max_batch}")
    execution = execution_of(args)
    target = ModelTarget.load(args.checkpoint, args.vocabulary, batch_size=args.max_batch,
                              max_prompt_tokens=args.max_prompt_tokens,
                              dtype=None if execution else args.dtype, execution=execution)
    serve(target, model_name=args.model_name or args.checkpoint.absolute().name,
          host=args.host, port=args.port, max_tokens_limit=args.max_tokens_limit)
    return 0
