"""Deployment comparisons: the trained model exported to ONNX and run by ONNX Runtime, and
compiled by TensorRT (through torch_tensorrt) where that is installed."""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

from optlab.compress.base import Param, Variant, method, of_layers, one_of, require, weighted_layers
from optlab.compress.context import Context

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session behind the nn.Module call convention, so the same evaluation and
    benchmark code measures it. Inputs are copied to the host for the session (that copy is part
    of the measured time, as it is in a deployment that feeds torch tensors)."""

    def __init__(self, path, provider: str, threads: int):
        super().__init__()
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads   # the same thread count PyTorch uses, for a fair comparison
        self.session = ort.InferenceSession(str(path), options, providers=[provider])
        self.input_name = self.session.get_inputs()[0].name
        self.provider = provider

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def _onnx_missing() -> str | None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {', '.join(missing)}, not installed here (pip install onnx onnxscript onnxruntime)"
    return None


def _provider_for(spec: dict, info) -> str:
    if spec["provider"] == "auto":
        return "cuda" if info.is_gpu and _has_provider("cuda") else "cpu"
    return spec["provider"]


def _has_provider(kind: str) -> bool:
    import onnxruntime as ort
    return PROVIDERS[kind] in ort.get_available_providers()


def _provider_missing(info, spec) -> str | None:
    if spec["provider"] == "cuda" and not (info.is_gpu and _has_provider("cuda")):
        return ("ONNX Runtime's CUDAExecutionProvider is not available here (it needs a GPU and the "
                "onnxruntime-gpu package); use provider cpu or auto")
    return None


def onnx_counts(path) -> tuple[int, int]:
    """(values, non-zero values) of the exported graph's initializers (batch norms may be folded)."""
    import onnx
    from onnx import numpy_helper
    total = nonzero = 0
    for init in onnx.load(str(path)).graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype.kind == "f":
            total += a.size
            nonzero += int((a != 0).sum())
    return total, nonzero


@method("export_onnx", title="ONNX Runtime export",
        summary="export the whole graph to ONNX (torch.onnx, dynamic batch) and run it with ONNX Runtime",
        params={"provider": Param("auto", "auto, cpu or cuda (auto: cuda when the run is on a GPU and "
                                          "onnxruntime-gpu is installed)", one_of("auto", "cpu", "cuda")),
                "opset": Param(None, "None (the exporter's default) or an opset 18..23",
                               lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 18 <= v <= 23))},
        library=_onnx_missing, needs=_provider_missing)
def export_onnx(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("export_onnx", spec, ctx)
    from torch.export import Dim
    kind = _provider_for(spec, ctx.device_info)
    device = torch.device(kind)
    model = model.to("cpu").float().eval()
    example = ctx.example(torch.device("cpu"))
    path = ctx.artifacts / f"model-{kind}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.cat([example, example]),), str(path), input_names=["images"],
                      output_names=["logits"], dynamic_shapes=({0: Dim("batch", min=1, max=65536)},),
                      opset_version=spec["opset"], dynamo=True, external_data=False, verbose=False)
    runtime = OnnxRuntimeModule(path, PROVIDERS[kind], torch.get_num_threads())
    with torch.no_grad():
        x = next(iter(ctx.test_batches(torch.device("cpu"))))[0]
        difference = float((runtime(x) - model(x)).abs().max())
    return Variant(
        name=f"ONNX Runtime ({kind.upper()})", model=runtime, device=device,
        layers_converted=of_layers(len(weighted_layers(model)), model) + " (whole graph exported)",
        notes=[f"largest difference from PyTorch's logits on {len(x)} test images: {difference:.2e}",
               f"ONNX Runtime {PROVIDERS[kind]} with {torch.get_num_threads()} threads; host copies of the "
               "input are part of each call",
               "parameters counted from the graph's initializers; MACs counted on the exported PyTorch model",
               "peak memory not measured: ONNX Runtime allocates outside PyTorch's view"],
        artifact=path, counts=onnx_counts(path), macs_model=model, timer="perf_counter",
        runtime=f"ONNX Runtime {PROVIDERS[kind]}", measure_memory=False,
        extra={"max_abs_diff_vs_pytorch": difference, "provider": PROVIDERS[kind]})


# -- TensorRT -------------------------------------------------------------------------------------------
def _tensorrt_missing() -> str | None:
    if importlib.util.find_spec("torch_tensorrt") is None:
        return ("needs torch_tensorrt, not installed here (pip install torch-tensorrt, on a machine with an "
                "NVIDIA GPU and a matching CUDA); ONNX Runtime is the deployment comparison available instead")
    return None


def _needs_gpu(info, spec) -> str | None:
    return None if info.is_gpu else f"TensorRT runs on NVIDIA GPUs; this device is {info.label}"


@method("export_tensorrt", title="TensorRT export",
        summary="compile the whole graph with TensorRT through torch_tensorrt (GPU; fp16 or fp32 kernels)",
        params={"precision": Param("fp16", "fp16 or fp32", one_of("fp16", "fp32"))},
        library=_tensorrt_missing, needs=_needs_gpu)
def export_tensorrt(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("export_tensorrt", spec, ctx)
    import torch_tensorrt
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[spec["precision"]]
    model = model.to(ctx.device).eval()
    example = ctx.example(ctx.device)
    largest = max([ctx.bench.get("throughput_batch", 256), *ctx.bench.get("batch_sizes", [1])])
    shape = tuple(example.shape[1:])
    compiled = torch_tensorrt.compile(
        model, ir="dynamo", enabled_precisions={dtype},
        inputs=[torch_tensorrt.Input(min_shape=(1, *shape), opt_shape=(largest, *shape), max_shape=(largest, *shape),
                                     dtype=torch.float32)])
    return Variant(name=f"TensorRT ({spec['precision']})", model=compiled, device=ctx.device,
                   layers_converted=of_layers(len(weighted_layers(model)), model) + " (whole graph compiled)",
                   notes=["engine built for batch 1.." + str(largest) + "; build time is not part of the latency"],
                   macs_model=model, runtime="TensorRT")
