"""arch_compare.compilation_cache: where the cache goes, `off`, an unwritable directory, and that a
program compiled once is read back from the directory rather than compiled again."""

import collections
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax import monitoring

from arch_compare import compilation_cache


@pytest.fixture
def restore_cache(monkeypatch):
    """Whatever a test points the cache at, the session's cache (tests/conftest.py) comes back."""
    yield monkeypatch
    monkeypatch.undo()
    compilation_cache.enable()


def test_the_environment_variable_wins_then_the_argument_then_the_user_cache(monkeypatch,
                                                                            tmp_path):
    monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.chosen_directory() == tmp_path / "xdg" / "arch_compare" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compilation_cache.chosen_directory() == (
        Path.home() / ".cache" / "arch_compare" / "jax")
    assert compilation_cache.chosen_directory(tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "env"))
    assert compilation_cache.chosen_directory(tmp_path / "given") == tmp_path / "env"
    for off in ("off", " OFF "):
        monkeypatch.setenv(compilation_cache.ENV_VAR, off)
        assert compilation_cache.chosen_directory(tmp_path / "given") is None


def test_off_leaves_jax_alone(restore_cache):
    before = jax.config.jax_compilation_cache_dir
    restore_cache.setenv(compilation_cache.ENV_VAR, "off")
    assert compilation_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir == before


def test_an_unwritable_directory_warns_once_and_the_run_goes_on(restore_cache, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    before = jax.config.jax_compilation_cache_dir
    restore_cache.setenv(compilation_cache.ENV_VAR, str(blocker / "jax"))
    with pytest.warns(RuntimeWarning, match=r"cache off: cannot write .*a_file/jax.*"
                                            r"ARCH_COMPARE_COMPILATION_CACHE"):
        assert compilation_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir == before
    assert float(jax.jit(lambda x: x + 1)(1.0)) == 2.0


def test_a_program_compiled_once_is_read_back_not_compiled_again(restore_cache, tmp_path):
    restore_cache.setenv(compilation_cache.ENV_VAR, str(tmp_path / "cache"))
    assert compilation_cache.enable() == tmp_path / "cache"
    assert compilation_cache.enable() == tmp_path / "cache"  # idempotent
    events = collections.Counter()

    def count(name, **_):
        if name.startswith("/jax/compilation_cache/"):
            events[name.rsplit("/", 1)[-1]] += 1

    monitoring.register_event_listener(count)
    try:
        # A program no other process compiles (the process id is a constant in it), so the
        # first compilation misses and writes, whatever the directory already holds.
        def program(x):
            return jnp.tanh(x @ x.T) * 0.7071067811865476 + os.getpid()

        x = jnp.ones((8, 8))
        first = jax.jit(program)(x)
        written = sorted(p.name for p in (tmp_path / "cache").iterdir()
                         if p.name.startswith("jit_program-"))
        assert len(written) == 1, written
        hits_before = events["cache_hits"]
        jax.clear_caches()  # drop the in-memory executables: only the disk cache is left
        second = jax.jit(program)(x)
        assert events["cache_hits"] == hits_before + 1, events
        assert jnp.array_equal(first, second)
    finally:
        monitoring.unregister_event_listener(count)
