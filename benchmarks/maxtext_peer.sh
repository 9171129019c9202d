#!/usr/bin/env bash
# MaxText's training step on train_throughput.py's LLaMA row (see benchmarks/README.md).
# Our venv computes the reference numbers (configuration, parameter count, model FLOPs); the
# MaxText venv (benchmarks/.venv-maxtext) builds and times MaxText's step. Arguments go to both
# (--batch / --length / --vocab must agree), e.g.  benchmarks/maxtext_peer.sh --remat full,minimal
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ours="${OURS_PYTHON:-$root/.venv/bin/python}"
peer="${MAXTEXT_PYTHON:-$root/benchmarks/.venv-maxtext/bin/python}"
for python in "$ours" "$peer"; do
  [[ -x "$python" ]] || { echo "maxtext_peer.sh: no interpreter at $python (see benchmarks/README.md, 'JAX peer: MaxText')" >&2; exit 2; }
done
ref="$(mktemp)"
trap 'rm -f "$ref"' EXIT
"$ours" "$root/benchmarks/maxtext_peer.py" --reference "$@" > "$ref"
"$peer" "$root/benchmarks/maxtext_peer.py" --reference-json "@$ref" "$@"
