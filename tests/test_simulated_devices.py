"""Simulated CPU devices get a thread pool wide enough for their collectives
(arch_compare/simulated_devices.py): the setting, and that this jaxlib's CPU client honours it."""

from __future__ import annotations

import pytest

from arch_compare.simulated_devices import (THREADS_PER_DEVICE, simulated_device_count,
                                            widen_thread_pool)
from tests.multidevice_helpers import run_with_fake_devices


@pytest.mark.parametrize("flags, devices", [
    ("", 1),
    ("--xla_backend_optimization_level=0", 1),
    ("--xla_force_host_platform_device_count=8", 8),
    ("--xla_force_host_platform_device_count=2 --xla_force_host_platform_device_count=4", 4),
])
def test_the_device_count_is_read_from_xla_flags(flags, devices):
    assert simulated_device_count({"XLA_FLAGS": flags}) == devices


def test_several_devices_widen_the_pool_and_a_users_setting_stands(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert widen_thread_pool(environ) == THREADS_PER_DEVICE * 8
    assert environ["NPROC"] == str(THREADS_PER_DEVICE * 8)

    chosen = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "NPROC": "12"}
    assert widen_thread_pool(chosen) is None and chosen["NPROC"] == "12"

    single = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    assert widen_thread_pool(single) is None and "NPROC" not in single


def test_the_cpu_client_runs_its_devices_on_the_widened_pool(monkeypatch):
    """XLA names its intra-op workers tf_XLAEigen; with 8 devices on a machine of fewer cores it
    would start exactly 8 of them without the setting."""
    monkeypatch.delenv("NPROC", raising=False)
    report = run_with_fake_devices("""
import collections, json, os
import jax, jax.numpy as jnp
x = jax.device_put(jnp.ones((8, 4)), jax.sharding.NamedSharding(
    jax.make_mesh((8,), ("d",)), jax.sharding.PartitionSpec("d")))
total = float(jax.jit(lambda a: a.sum())(x))
names = collections.Counter(open(f"/proc/self/task/{t}/comm").read().strip()
                            for t in os.listdir("/proc/self/task"))
print(json.dumps({"total": total, "workers": names["tf_XLAEigen"]}))
""")
    assert report["total"] == 32.0
    assert report["workers"] >= THREADS_PER_DEVICE * 8
