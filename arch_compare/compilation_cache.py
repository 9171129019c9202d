"""JAX's persistent compilation cache for runs: compiled programs kept on disk across processes.

A study, the demo and the tests compile the same small programs again and again (each run of a
study is a fresh trainer and decoder; each test process starts cold). With the cache a program
compiled once is read back in later processes instead of being compiled again.

Where it lives, first that applies:

1. `$ARCH_COMPARE_COMPILATION_CACHE`: a directory, or `off` to leave the cache disabled;
2. the `directory` passed to `enable`;
3. `$XDG_CACHE_HOME/arch_compare/jax`, or `~/.cache/arch_compare/jax` without XDG_CACHE_HOME.

Deleting the directory clears it (JAX makes it again). The cache is trusted: entries are
executables, so the directory must not be writable by anyone you do not trust.

`enable` is called at the start of a run command, never at import: it imports JAX.
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

ENV_VAR = "ARCH_COMPARE_COMPILATION_CACHE"
OFF = "off"

# The directory `enable` pointed JAX at in this process (None before the first call or when off).
_enabled_dir: Path | None = None


def default_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "arch_compare" / "jax"


def chosen_directory(directory: str | os.PathLike | None = None) -> Path | None:
    """The directory `enable` would use, or None when `$ARCH_COMPARE_COMPILATION_CACHE` is off."""
    setting = os.environ.get(ENV_VAR, "").strip()
    if setting.lower() == OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    if directory is not None:
        return Path(directory).expanduser()
    return default_directory()


def _writable(path: Path) -> str | None:
    """None when `path` can hold cache entries, else why not (the OS's words)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        return f"{error.strerror or error} ({error.filename or path})"
    return None


def enable(directory: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at the chosen directory; return it, or None
    when the cache stays off (`$ARCH_COMPARE_COMPILATION_CACHE=off`, or the directory cannot be
    written: one warning says which and why, and the run goes on compiling as usual).

    Idempotent: calling it again with the same choice does nothing. It may be called after
    programs were compiled; those are simply not in the cache."""
    global _enabled_dir
    path = chosen_directory(directory)
    if path is None:
        return None
    path = path.absolute()
    if path == _enabled_dir:
        return path
    problem = _writable(path)
    if problem is not None:
        warnings.warn(f"JAX compilation cache off: cannot write {path}: {problem}; set "
                      f"{ENV_VAR} to another directory, or to '{OFF}' to silence this",
                      RuntimeWarning, stacklevel=2)
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache as jax_cache
    # A small model's programs compile in well under JAX's default second, and on a CPU their
    # executables are small: keep every one (the defaults would keep almost none of them).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX opens its cache once per process, at the first compilation; if that already happened
    # with another directory, start over so the new one is used.
    jax_cache.reset_cache()
    _enabled_dir = path
    return path
