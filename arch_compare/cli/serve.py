"""Serve a checkpoint as an OpenAI-compatible chat endpoint (POST /v1/chat/completions).

The checkpoint is a training MODEL_DIR (its newest checkpoint), a native checkpoint or a local
Hugging Face directory; --vocabulary is its family's vocabulary file. Any OpenAI-compatible
client, including `OpenAIChatTarget` (collection from an endpoint), can then ask it:
GET /v1/models, GET /health, POST /v1/chat/completions (non-streaming). It listens on
127.0.0.1 unless --host says otherwise, prints its URL when ready and stops on SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arch_compare.imitation.targets import ModelTarget
from arch_compare.serving import serve


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
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="parameter and compute dtype (default: the checkpoint's)")


def run(args: argparse.Namespace) -> int:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be positive, got {args.max_batch}")
    target = ModelTarget.load(args.checkpoint, args.vocabulary, batch_size=args.max_batch,
                              max_prompt_tokens=args.max_prompt_tokens, dtype=args.dtype)
    serve(target, model_name=args.model_name or args.checkpoint.absolute().name,
          host=args.host, port=args.port, max_tokens_limit=args.max_tokens_limit)
    return 0
