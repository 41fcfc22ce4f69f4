"""Compression methods: each is `apply(model, spec, context) -> Variant`, described by data
(a dict with a `method` key) that is stored with the run.

    prune.py     prune_unstructured, prune_structured (Torch-Pruning), prune_2to4 (GPU 8.0+)
    quantize.py  half_precision, int8_static, int8_dynamic, torchao_* (GPU, when torchao is installed)
    distill.py   distill (student with the teacher, and the same student without it)
    export.py    export_onnx (ONNX Runtime), export_tensorrt (when torch_tensorrt is installed)
    openvino_runtime.py  export_openvino, openvino_int8 (NNCF) for OpenVINO's CPU plugin (when installed)
    recipe.py    run_steps: baseline + every variant, evaluated and benchmarked; `benchmark` settings
"""
from __future__ import annotations

__all__ = ["METHODS", "CompressionRefused", "Variant", "available_methods", "run_steps", "validate_steps"]


def __getattr__(name: str):
    # The methods import torch (seconds), so they load when first asked for: the command line's
    # compression flags (optlab.compress.cli) are parsed without them. Reading METHODS
    # imports every method module (base.METHODS registers them on first read).
    if name in ("METHODS", "CompressionRefused", "Variant"):
        from optlab.compress import base
        return getattr(base, name)
    if name == "run_steps":
        from optlab.compress.recipe import run_steps
        return run_steps
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_steps(steps: list[dict], device_info=None) -> list[str]:
    """Messages for steps that name no registered method or carry bad settings; with
    `device_info` (optlab.device.DeviceInfo), also for methods that cannot run on that device."""
    from optlab.compress.base import METHODS
    errors = []
    for step in steps:
        name = step.get("method")
        if name not in METHODS:
            errors.append(f"unknown compression method {name!r}; choose one of: {', '.join(METHODS.names()) or 'none installed'}")
            continue
        check = getattr(METHODS.get(name), "validate", None)
        if check:
            errors.extend(check(step) if device_info is None else check(step, device_info))
    return errors


def available_methods(device_info=None) -> dict[str, str | None]:
    """Every method with why it cannot run here (None when it can): what a form should offer."""
    from optlab.compress.base import METHODS
    return {name: m.unavailable(device_info) for name, m in METHODS.items()}
