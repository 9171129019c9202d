"""Targets from a specification (gin files, study configs): `make_target({"kind": ..., ...})`."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from arch_compare.imitation.model_target import ModelTarget
from arch_compare.imitation.openai_chat import OpenAIChatTarget
from arch_compare.imitation.targets import FunctionTarget, Target

class TargetSpecError(ValueError):
    """A target specification names an unknown kind or misses / misspells an option."""


# kind -> constructor; `make_target` passes a spec's other keys as keyword arguments.
TARGET_KINDS: dict[str, Callable[..., Target]] = {
    "openai": OpenAIChatTarget,
    "model": ModelTarget.load,
    "function": FunctionTarget.from_path,
}


def make_target(spec: Mapping[str, Any]) -> Target:
    """A target from `{"kind": ..., **options}`, for example `{"kind": "openai", "base_url":
    "http://127.0.0.1:8000/v1", "model": "tiny"}` or `{"kind": "model", "checkpoint": ...,
    "vocabulary": ...}`."""
    if "kind" not in spec:
        raise TargetSpecError(f"target spec is missing 'kind' (one of {', '.join(TARGET_KINDS)})")
    kind = spec["kind"]
    if kind not in TARGET_KINDS:
        raise TargetSpecError(f"target spec: unknown kind {kind!r}; known kinds: "
                              f"{', '.join(TARGET_KINDS)}")
    constructor = TARGET_KINDS[kind]
    options = {key: value for key, value in spec.items() if key != "kind"}
    parameters = inspect.signature(constructor).parameters
    accepted = [name for name, parameter in parameters.items()
                if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TargetSpecError(f"target spec (kind {kind!r}): unknown key(s) "
                              f"{', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")
    missing = [name for name in accepted
               if parameters[name].default is parameters[name].empty and name not in options]
    if missing:
        raise TargetSpecError(f"target spec (kind {kind!r}): missing key(s) "
                              f"{', '.join(map(repr, missing))}")
    return constructor(**options)
