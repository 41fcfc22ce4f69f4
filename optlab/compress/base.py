"""The shape every compression method shares.

A method is `apply(model, spec, context) -> Variant` (or a list of variants), registered by name
with the parameters its spec may carry. The spec is plain data stored with the run, so the form,
the CLI and the tests enumerate and validate the same methods the same way.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from optlab.registry import Registry

def _register_methods() -> None:
    import importlib
    for module in ("prune", "quantize", "distill", "export", "openvino_runtime", "recipe"):
        importlib.import_module(f"optlab.compress.{module}")


METHODS: Registry["Method"] = Registry("compression method", load=_register_methods)


class CompressionRefused(RuntimeError):
    """A method that cannot run here (device, library, model); the message says why and what to do."""


# -- methods -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    default: Any
    rule: str                         # what is allowed, said to a person
    check: Callable[[Any], bool]


def number(low: float, high: float, *, low_open=False, high_open=False, integer=False) -> Callable[[Any], bool]:
    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return ok


def one_of(*choices) -> Callable[[Any], bool]:
    return lambda v: v in choices


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


FINETUNE = {
    "finetune_epochs": Param(1, "a whole number of epochs 0..100 (0: no fine-tune)", number(0, 100, integer=True)),
    "finetune_steps": Param(None, "None or a whole number of steps >= 1 (overrides epochs)",
                            optional(number(1, 10**7, integer=True))),
    "lr_scale": Param(0.1, "a factor in (0, 1] of the run's learning rate", number(0, 1, low_open=True)),
}


@dataclass
class Method:
    name: str
    apply: Callable[[nn.Module, dict, "Context"], "Variant | list[Variant]"]
    params: dict[str, Param]
    summary: str                                            # what it does and which layers it touches
    needs: Callable[[Any, dict], str | None] = lambda info, spec: None  # why not on this device, or None
    library: Callable[[], str | None] = lambda: None        # why not installed here, or None
    settings_only: bool = False                             # measurement settings, not a variant
    title: str = ""                                         # what people call it: 'unstructured pruning'

    def __post_init__(self):
        self.title = self.title or self.name.replace("_", " ")

    def resolve(self, step: dict) -> dict:
        """The step with every parameter's default filled in (what is stored with the variant)."""
        spec = {"method": self.name}
        spec.update({k: p.default for k, p in self.params.items()})
        spec.update({k: v for k, v in step.items() if k != "method"})
        return spec

    def unavailable(self, device_info=None, step: dict | None = None) -> str | None:
        """Why this method cannot run here (a missing library, or the device), else None."""
        if self.library():
            return self.library()
        return self.needs(device_info, self.resolve(step or {})) if device_info is not None else None

    def validate(self, step: dict, device_info=None) -> list[str]:
        errors = []
        unknown = sorted(set(step) - set(self.params) - {"method"})
        if unknown:
            allowed = ", ".join(self.params) or "no settings"
            errors.append(f"{self.name}: unknown setting(s) {', '.join(unknown)}; allowed: {allowed}")
        for key, param in self.params.items():
            if key in step and not param.check(step[key]):
                errors.append(f"{self.name}: {key} must be {param.rule}, not {step[key]!r}")
        reason = self.unavailable(device_info, step) if not errors else None
        if reason:
            errors.append(f"{self.name}: {reason}")
        return errors


def method(name: str, *, summary: str, params: dict[str, Param] | None = None, needs=None, library=None,
           settings_only: bool = False, title: str = ""):
    """Register `apply(model, spec, context)` as compression method `name` (`title`: its name in
    the pages, e.g. 'unstructured pruning'; the name itself when empty)."""
    def add(apply):
        METHODS.add(name, Method(name, apply, params or {}, summary, needs or (lambda info, spec: None),
                                 library or (lambda: None), settings_only, title))
        return apply
    return add


def require(name: str, spec: dict, ctx) -> None:
    """Raise CompressionRefused when method `name` cannot run on the context's device or here."""
    reason = METHODS.get(name).unavailable(ctx.device_info, spec)
    if reason:
        raise CompressionRefused(f"{name}: {reason}")


# -- what a method returns -----------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    model: Callable                      # an nn.Module (or module-like) taking a batch of images
    device: torch.device                 # where it runs and is measured
    layers_converted: str | None = None  # e.g. "7 of 8 Conv2d/Linear"
    notes: list[str] = field(default_factory=list)
    input_dtype: torch.dtype = torch.float32
    extra: dict = field(default_factory=dict)         # method facts: sparsity reached, fine-tune steps, ...
    artifact: Path | None = None         # a file the method wrote itself (ONNX); else the state dict is saved
    size_bytes: int | None = None        # bytes on disk when the artifact is several files (OpenVINO's .xml + .bin)
    counts: tuple[int, int] | None = None             # (params, non-zero) where the module cannot tell
    macs_model: Callable | None = None   # count MACs on this instead (the float graph of an int8 model)
    timer: str = "auto"                  # perf_counter for synchronous runtimes (ONNX Runtime, OpenVINO)
    runtime: str = "PyTorch"
    measure_memory: bool = True


# -- layers ----------------------------------------------------------------------------------------
_FLOAT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Convolutions and linear layers, float or quantized (what compression methods act on)."""
    found = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, _FLOAT_LAYERS) or (_packed_weight(m) and ("Conv" in kind or "Linear" in kind)):
            found.append((name, m))
    return found


def layer_kinds(model: nn.Module) -> str:
    kinds = sorted({"Linear" if "Linear" in type(m).__name__ else f"Conv{type(m).__name__[-2:]}"
                    for _, m in weighted_layers(model)})
    return "/".join(kinds) or "weighted"


def of_layers(converted: int, parent: nn.Module) -> str:
    """'7 of 8 Conv2d/Linear': how many of the parent's weighted layers a method touched."""
    return f"{converted} of {len(weighted_layers(parent))} {layer_kinds(parent)}"


def _packed_weight(m: nn.Module) -> bool:
    # int8 modules keep their weight packed and expose it through a `weight()` method.
    return isinstance(getattr(type(m), "weight", None), types.FunctionType)


def _nonzero(t: torch.Tensor) -> int:
    t = t.detach()
    if t.is_quantized:
        t = t.dequantize()
    try:
        return int(torch.count_nonzero(t))
    except (NotImplementedError, RuntimeError):  # tensor subclasses (torchao, 2:4) without the op
        return int(torch.count_nonzero(t.dequantize() if hasattr(t, "dequantize") else t.to_dense()))


def count_weights(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters), including the packed weights that int8 modules hide
    from `parameters()`; quantized weights count as zero where they round to zero."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += _nonzero(p)
    for m in model.modules():
        if _packed_weight(m):
            for getter in ("weight", "bias"):
                fn = getattr(m, getter, None)
                t = fn() if callable(fn) else None
                if isinstance(t, torch.Tensor):
                    total += t.numel()
                    nonzero += _nonzero(t)
    return total, nonzero


def classifier(model: nn.Module) -> nn.Module | None:
    """The final linear layer (kept whole by structured pruning: its outputs are the classes)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
