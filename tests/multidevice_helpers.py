"""Run test code on several fake CPU devices.

XLA reads `--xla_force_host_platform_device_count` once, when JAX initialises, and the pytest
process has already initialised JAX with one device. Multi-device code therefore runs in a fresh
interpreter; it reports back by printing one JSON object as the last line of its stdout, and the
test asserts on that object in the pytest process, where failures are readable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from arch_compare.simulated_devices import widen_thread_pool

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_with_fake_devices(source: str, num_devices: int = 8, timeout: float = 300.0):
    """Run Python `source` with `num_devices` CPU devices; return its last stdout line as JSON."""
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={num_devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    widen_thread_pool(env)
    result = subprocess.run([sys.executable, "-c", source], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise AssertionError(f"subprocess with {num_devices} devices failed "
                             f"(exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(lines[-1])
