"""OpenVINO as a deployment variant for the CPU: the trained model converted by OpenVINO's own
PyTorch frontend (`openvino.convert_model`), saved as IR (.xml + .bin), compiled for the CPU
plugin and called behind the nn.Module convention, so the same evaluation and interleaved timing
measure it; and the same graph quantized to int8 by NNCF's post-training quantization,
calibrated on training images.

openvino and nncf are imported inside the methods: the engine imports without them, and a
machine where they cannot be imported lists these methods as unavailable, with the reason.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import warnings

import torch
from torch import nn

from optlab.compress.base import (CompressionRefused, Param, Variant, count_weights, method, number, of_layers,
                                  one_of, require, weighted_layers)
from optlab.compress.context import Context

CPU = torch.device("cpu")
PRECISION = Param("fp32", "fp32 or auto (auto: OpenVINO's choice for this CPU, bf16 where it has native bf16 "
                          "instructions)", one_of("fp32", "auto"))
RUNTIME = "OpenVINO CPU plugin"


# -- availability ------------------------------------------------------------------------------------
def _openvino_problem() -> str | None:
    """Why openvino cannot be used here, or None. A real import, not a look-up: a wheel whose
    native libraries do not load is installed but useless. It costs about 0.1 s, once per process."""
    try:
        import openvino  # noqa: F401
    except Exception as e:   # ImportError, OSError from a shared library
        if isinstance(e, ModuleNotFoundError) and e.name == "openvino":
            return "not installed here"
        return f"installed but does not import here ({type(e).__name__}: {e})"
    return None


def _openvino_missing() -> str | None:
    problem = _openvino_problem()
    return f"needs openvino, {problem}; pip install openvino" if problem else None


def _openvino_nncf_missing() -> str | None:
    problem = _openvino_problem()
    if problem:
        return f"needs openvino and nncf; openvino is {problem}; pip install openvino nncf"
    try:
        found = importlib.util.find_spec("nncf") is not None
    except (ImportError, ValueError):   # a module left broken (or blocked) in sys.modules
        found = False
    return None if found else "needs nncf, not installed here; pip install nncf"


def _load(name: str):
    """The module, or CompressionRefused saying why it does not import. (Listing the methods only
    looks nncf up: importing it takes about a second.)"""
    try:
        return importlib.import_module(name)
    except Exception as e:
        raise CompressionRefused(f"{name} cannot be imported here ({type(e).__name__}: {e}); "
                                 f"pip install {name}") from None


# -- the runtime behind nn.Module ---------------------------------------------------------------------
class OpenVINOModule(nn.Module):
    """A model compiled by OpenVINO for the CPU, called like an nn.Module. The compiled model is
    read from the saved IR, so what is timed is what is on disk."""

    def __init__(self, path, precision: str, threads: int):
        super().__init__()
        import openvino as ov
        config = {"INFERENCE_NUM_THREADS": threads,   # the run's thread plan, as torch and ONNX Runtime get it
                  "PERFORMANCE_HINT": "LATENCY"}      # one stream: each call uses every thread
        if precision == "fp32":   # on CPUs with native bf16 OpenVINO would otherwise compute in bf16
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.version = ov.__version__.split("-")[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled(x.detach().float().contiguous().cpu().numpy())[0]
        return torch.from_numpy(out).to(x.device)

    def describe(self) -> str:
        return (f"OpenVINO {self.version} CPU plugin, {self.threads} inference threads (INFERENCE_NUM_THREADS), "
                f"inference precision {self.precision}, latency hint (one stream); host copies of the input "
                "are part of each call")


def _convert(ov, model: nn.Module, ctx: Context):
    """OpenVINO's own conversion of the float model: batch dynamic, the image shape fixed."""
    example = ctx.example(CPU).contiguous()
    with warnings.catch_warnings():
        # its PyTorch frontend traces with TorchScript, which warns that it is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return ov.convert_model(model, example_input=example, input=[(-1, *example.shape[1:])])


def _save(ov, graph, ctx: Context, stem: str):
    """Save the IR uncompressed (save_model stores fp16 weights by default) and return
    (the .xml path, bytes of .xml and .bin together)."""
    path = ctx.artifacts / f"{stem}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(graph, str(path), compress_to_fp16=False)
    return path, path.stat().st_size + path.with_suffix(".bin").stat().st_size


def _variant_name(kind: str, runtime: OpenVINOModule) -> str:
    """'OpenVINO (CPU)', 'OpenVINO int8 (CPU)'; the precision is named when it is not f32."""
    words = ["OpenVINO", kind, "" if runtime.precision == "f32" else runtime.precision]
    return " ".join(w for w in words if w) + " (CPU)"


NOTES = ["targets the CPU (OpenVINO's CPU plugin) even when the run trained on a GPU: compare it with the CPU baseline",
         "parameters counted on the PyTorch model it was converted from; MACs counted on that model too",
         "peak memory not measured: OpenVINO allocates outside PyTorch's view"]


# -- fp32 (or OpenVINO's choice) -------------------------------------------------------------------
@method("export_openvino", title="OpenVINO export",
        summary="convert the whole graph with OpenVINO (openvino.convert_model), compile it for the CPU plugin "
                "and run it there",
        params={"precision": PRECISION}, library=_openvino_missing)
def export_openvino(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("export_openvino", spec, ctx)
    ov = _load("openvino")
    model = model.to(CPU).float().eval()
    path, size = _save(ov, _convert(ov, model, ctx), ctx, "model-openvino")
    runtime = OpenVINOModule(path, spec["precision"], torch.get_num_threads())
    with torch.no_grad():
        x = next(iter(ctx.test_batches(CPU)))[0]
        difference = float((runtime(x) - model(x)).abs().max())
    return Variant(
        name=_variant_name("", runtime), model=runtime, device=CPU,
        layers_converted=of_layers(len(weighted_layers(model)), model) + " (whole graph converted)",
        notes=[runtime.describe(),
               f"largest difference from PyTorch's logits on {len(x)} test images: {difference:.2e}", *NOTES],
        artifact=path, size_bytes=size, counts=count_weights(model), macs_model=model, timer="perf_counter",
        runtime=RUNTIME, measure_memory=False,
        extra={"max_abs_diff_vs_pytorch": difference, "openvino": runtime.version, "threads": runtime.threads,
               "inference_precision": runtime.precision})


# -- int8 through NNCF ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _stdout_to_stderr(logger: logging.Logger):
    # NNCF logs and draws progress bars on stdout, where `optlab compress --json` writes its one
    # JSON object: both go to stderr (the run's log) while it works.
    streams = [(h, h.setStream(sys.stderr)) for h in logger.handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in streams:
            if stream is not None:
                handler.setStream(stream)


def _int8_weights(graph) -> int:
    """Weighted layers whose weights NNCF stored in int8 (a Constant of rank >= 2 in i8/u8)."""
    return sum(1 for op in graph.get_ordered_ops()
               if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8")
               and len(op.get_output_partial_shape(0)) >= 2)


# NNCF's default preset, performance, quantizes activations symmetrically: on an AVX2 CPU a briefly
# trained speednet (GELU, 38-44 % accuracy) lost 10-12 points that way and about 2 with mixed.
# PyTorch's own int8_static quantizes activations asymmetrically too.
PRESET_WORDS = {"mixed": "symmetric weights, asymmetric activations",
                "performance": "symmetric weights and activations"}


def _calibration_images(ctx: Context, count: int) -> torch.Tensor:
    """The first `count` training images, not augmented: the batches int8_static calibrates on."""
    batches = ctx.calibration_batches(CPU, -(-count // ctx.batch_size))
    return torch.cat(batches)[:count].float().contiguous()


@method("openvino_int8", title="OpenVINO int8 (NNCF)",
        summary="int8 post-training quantization of the OpenVINO graph by NNCF (nncf.quantize, calibrated on "
                "training images), compiled for the CPU plugin",
        params={"calibration_images": Param(300, "a whole number of training images 1..10000",
                                            number(1, 10000, integer=True)),
                "preset": Param("mixed", "mixed (asymmetric activations: GELU, SiLU and other activations with "
                                         "negative outputs) or performance (symmetric: for ReLU networks)",
                                one_of("mixed", "performance")),
                "precision": PRECISION},
        library=_openvino_nncf_missing)
def openvino_int8(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("openvino_int8", spec, ctx)
    ov, nncf = _load("openvino"), _load("nncf")
    model = model.to(CPU).float().eval()
    images = _calibration_images(ctx, spec["calibration_images"])
    # One image per item, as NNCF recommends: statistics of a batched item mix the images.
    dataset = nncf.Dataset([images[i:i + 1].numpy() for i in range(len(images))])
    with _stdout_to_stderr(logging.getLogger("nncf")):
        quantized = nncf.quantize(_convert(ov, model, ctx), dataset, subset_size=len(images),
                                  preset=getattr(nncf.QuantizationPreset, spec["preset"].upper()), target_device=nncf.TargetDevice.CPU)
    path, size = _save(ov, quantized, ctx, "model-openvino-int8")
    runtime = OpenVINOModule(path, spec["precision"], torch.get_num_threads())
    converted = _int8_weights(quantized)
    notes = [runtime.describe(),
             f"calibrated on {len(images)} training images (not augmented) by NNCF {nncf.__version__} "
             f"post-training quantization (preset {spec['preset']}: {PRESET_WORDS[spec['preset']]}); "
             f"layers without int8 kernels compute in {runtime.precision}",
             "compare with int8 static (PyTorch's own int8, on the same CPU baseline)", *NOTES]
    if len(images) < spec["calibration_images"]:
        notes.insert(1, f"asked for {spec['calibration_images']} calibration images; the training split has "
                        f"{len(images)}")
    return Variant(
        name=_variant_name("int8", runtime), model=runtime, device=CPU,
        layers_converted=of_layers(converted, model) + " with int8 weights", notes=notes,
        artifact=path, size_bytes=size, counts=count_weights(model), macs_model=model, timer="perf_counter",
        runtime=RUNTIME, measure_memory=False,
        extra={"calibration_images": len(images), "openvino": runtime.version, "nncf": nncf.__version__,
               "threads": runtime.threads, "inference_precision": runtime.precision})
