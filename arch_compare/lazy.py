"""Package attributes that import their module on first use (PEP 562), so that importing a package
does not import JAX: commands that read a database or price a run start at once."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_attributes(namespace: dict[str, Any], modules: dict[str, str]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for the package whose globals are `namespace`; `modules` maps each
    lazy name to the module that defines it. A name is imported once, then kept in `namespace`."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(modules[name]), name)
        namespace[name] = value  # later lookups do not come back here
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *modules])

    return __getattr__, __dir__
