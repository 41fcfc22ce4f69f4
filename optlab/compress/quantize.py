"""Quantization: 16-bit floats on the run's device, int8 for the CPU (static FX graph mode and
dynamic), and torchao's GPU methods where torchao is installed.

Each variant says which layers it converted: torchao's and `quantize_dynamic`'s int8 configs
touch nn.Linear only, so a convolutional network is left almost unchanged by them.
"""
from __future__ import annotations

import copy
import importlib.util
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from optlab.compress.base import Param, Variant, method, number, of_layers, one_of, require, weighted_layers
from optlab.compress.context import Context

CPU = torch.device("cpu")
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
DEPRECATED = ("torch.ao.quantization is deprecated in PyTorch 2.15 (its successor is torchao's PT2E flow); "
              "it still works here, and may disappear in a later release")


@contextmanager
def _quiet():
    # torch.ao.quantization warns on every call that it is deprecated; the variant's notes say it once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _int8_layers(model: nn.Module) -> int:
    return sum(1 for _, m in weighted_layers(model) if type(m).__module__.startswith("torch.ao.nn.quantized"))


# -- fp16 / bf16 ------------------------------------------------------------------------------------
def _half_supported(info, spec) -> str | None:
    if spec["dtype"] == "fp16" and not info.is_gpu:
        return ("fp16 inference needs a GPU: PyTorch's CPU kernels for float16 are slow or missing; "
                "on the CPU use bf16 (or int8_static)")
    if spec["dtype"] == "bf16" and info.is_gpu and not info.supports_bf16:
        return f"{info.name} has no bf16 support (compute capability {info.capability}); use fp16"
    return None


@method("half_precision", title="fp16/bf16 weights",
        summary="every weight and activation in fp16 or bf16 on the run's device (fp16: GPU only)",
        params={"dtype": Param("bf16", "fp16 or bf16", one_of("fp16", "bf16"))},
        needs=_half_supported)
def half_precision(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("half_precision", spec, ctx)
    dtype = HALF[spec["dtype"]]
    model = model.to(dtype).eval()
    notes = ["weights and activations both 16-bit: half the bytes to move; on GPUs the tensor cores run it"]
    if not ctx.device_info.is_gpu:
        notes.append("on the CPU bf16 is fast only where the processor has bf16 instructions (AVX512-BF16, AMX)")
    return Variant(name=spec["dtype"], model=model, device=ctx.device, input_dtype=dtype,
                   layers_converted=of_layers(len(weighted_layers(model)), model) + f" (whole model in {spec['dtype']})",
                   notes=notes)


# -- int8 static (FX graph mode), for the CPU -----------------------------------------------------------
def _backend_missing(info, spec) -> str | None:
    if spec["backend"] not in torch.backends.quantized.supported_engines:
        return (f"int8 backend {spec['backend']!r} is not built into this PyTorch; available: "
                f"{', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')}")
    return None


@method("int8_static", title="int8 static quantization",
        summary="int8 post-training static quantization for the CPU (FX graph mode, calibrated on training "
                "images): convolutions and linear layers in int8, batch norms folded where they follow a conv",
        params={"calibration_batches": Param(16, "a whole number of training batches 1..1000", number(1, 1000, integer=True)),
                "backend": Param("x86", "x86, fbgemm, onednn or qnnpack (qnnpack: ARM CPUs)",
                                 one_of("x86", "fbgemm", "onednn", "qnnpack"))},
        needs=_backend_missing)
def int8_static(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("int8_static", spec, ctx)
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    float_model = model.to(CPU).float().eval()
    reference = copy.deepcopy(float_model)
    torch.backends.quantized.engine = spec["backend"]
    example = ctx.example(CPU)
    calibration = ctx.calibration_batches(CPU, spec["calibration_batches"])
    with _quiet(), torch.no_grad():
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(spec["backend"]), (example,))
        for x in calibration:
            prepared(x)
        quantized = convert_fx(prepared)
    converted = _int8_layers(quantized)
    float_islands = sum(1 for n in quantized.graph.nodes if n.op == "call_method" and n.target == "dequantize")
    notes = [f"targets the CPU ({spec['backend']} int8 kernels) even when the run trained on a GPU: "
             "compare it with the CPU baseline",
             f"calibrated on {sum(len(x) for x in calibration)} training images",
             "MACs counted on the float graph: the int8 kernels do the same multiply-adds in 8 bits",
             DEPRECATED]
    if float_islands:
        notes.insert(1, f"{float_islands} places run in float between dequantize and quantize "
                        "(operators without int8 kernels, e.g. GELU): each costs a conversion")
    return Variant(name=f"int8 static ({spec['backend']})", model=quantized, device=CPU,
                   layers_converted=of_layers(converted, reference) + " in int8", notes=notes,
                   macs_model=reference, extra={"float_islands": float_islands,
                                                "calibration_images": sum(len(x) for x in calibration)})


# -- dynamic int8 ------------------------------------------------------------------------------------
@method("int8_dynamic", title="int8 dynamic quantization (Linear)",
        summary="dynamic int8 (torch quantize_dynamic) for the CPU: nn.Linear weights in int8, activations "
                "quantized per batch at run time; convolutions untouched",
        params={})
def int8_dynamic(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    from torch.ao.quantization import quantize_dynamic
    float_model = model.to(CPU).float().eval()
    reference = copy.deepcopy(float_model)
    with _quiet():
        quantized = quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
    converted, total = _int8_layers(quantized), len(weighted_layers(reference))
    notes = ["targets the CPU: compare it with the CPU baseline",
             "MACs counted on the float graph: the int8 kernels do the same multiply-adds in 8 bits", DEPRECATED]
    if converted < total:
        notes.insert(0, f"touches nn.Linear only: {converted} of {total} weighted layers converted; "
                        f"the {total - converted} convolutions stay fp32, so a CNN barely changes")
    return Variant(name="int8 dynamic (Linear)", model=quantized, device=CPU,
                   layers_converted=of_layers(converted, reference) + " in int8", notes=notes,
                   macs_model=reference)


# -- torchao (GPU) ------------------------------------------------------------------------------------
def _torchao_missing() -> str | None:
    if importlib.util.find_spec("torchao") is None:
        return ("needs torchao, which is not installed here (pip install torchao); "
                "its int8/float8 methods quantize nn.Linear layers on NVIDIA GPUs")
    return None


def _torchao_gpu(min_capability: tuple[int, int], what: str):
    def needs(info, spec) -> str | None:
        if not info.is_gpu:
            return f"torchao's {what} runs on NVIDIA GPUs; this device is {info.label}"
        if info.capability is not None and tuple(info.capability) < min_capability:
            return (f"torchao's {what} needs compute capability {min_capability[0]}.{min_capability[1]}+; "
                    f"{info.name} is {info.capability[0]}.{info.capability[1]}")
        return None
    return needs


def _torchao_variant(model: nn.Module, ctx: Context, config_name: str, label: str) -> Variant:
    import torchao.quantization as tq
    model = model.to(torch.bfloat16).eval()
    before = {name: type(m.weight) for name, m in weighted_layers(model)}
    tq.quantize_(model, getattr(tq, config_name)())
    converted = sum(1 for name, m in weighted_layers(model) if type(m.weight) is not before[name])
    total = len(before)
    notes = [f"torchao {config_name}: nn.Linear only; {converted} of {total} weighted layers converted"
             + ("; convolutions stay bf16, so a CNN barely changes" if converted < total else ""),
             "measured in eager mode: torchao's fastest kernels come with torch.compile",
             "runs in bf16 otherwise: compare with the bf16 variant"]
    return Variant(name=label, model=model, device=ctx.device, input_dtype=torch.bfloat16,
                   layers_converted=of_layers(converted, model), notes=notes)


@method("torchao_int8_weight_only", title="torchao int8 weight-only",
        summary="torchao int8 weight-only quantization of nn.Linear (GPU)",
        library=_torchao_missing, needs=_torchao_gpu((8, 0), "int8 weight-only"))
def torchao_int8_weight_only(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("torchao_int8_weight_only", spec, ctx)
    return _torchao_variant(model, ctx, "Int8WeightOnlyConfig", "torchao int8 weight-only")


@method("torchao_int8_dynamic", title="torchao int8 dynamic",
        summary="torchao int8 dynamic activations + int8 weights on nn.Linear (GPU)",
        library=_torchao_missing, needs=_torchao_gpu((8, 0), "int8 dynamic"))
def torchao_int8_dynamic(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("torchao_int8_dynamic", spec, ctx)
    return _torchao_variant(model, ctx, "Int8DynamicActivationInt8WeightConfig", "torchao int8 dynamic")


@method("torchao_float8", title="torchao float8",
        summary="torchao float8 dynamic activations + float8 weights on nn.Linear (fp8 GPUs: 8.9+)",
        library=_torchao_missing, needs=_torchao_gpu((8, 9), "float8"))
def torchao_float8(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("torchao_float8", spec, ctx)
    return _torchao_variant(model, ctx, "Float8DynamicActivationFloat8WeightConfig", "torchao float8")
