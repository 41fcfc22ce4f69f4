"""Compression methods: each is `apply(model, spec, context) -> Variant`, described by data
(a dict with a `method` key) that is stored with the run."""
from __future__ import annotations

from optlab.registry import Registry

METHODS: Registry = Registry("compression method")


def validate_steps(steps: list[dict]) -> list[str]:
    """Messages for steps that name no registered method or carry bad settings."""
    errors = []
    for step in steps:
        name = step.get("method")
        if name not in METHODS:
            errors.append(f"unknown compression method {name!r}; choose one of: {', '.join(METHODS.names()) or 'none installed'}")
            continue
        check = getattr(METHODS.get(name), "validate", None)
        if check:
            errors.extend(check(step))
    return errors
