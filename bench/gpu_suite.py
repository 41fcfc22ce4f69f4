"""The GPU proof: one command that runs OptLab's GPU path end to end and records what it measured.

    python bench/gpu_suite.py                     # on the GPU machine, from the repository root
    python bench/gpu_suite.py --device cpu --tiny --out /tmp/suite   # the same code path, CPU-sized

It needs only the engine (torch, torchvision; nvidia-ml-py, torchao, torch-pruning and onnxruntime
where present) and writes `<out>/<device>-<date>.json` and `.md`. Every section runs through
OptLab's own engine (the runner, the scheduler and its worker processes, the benchmarks in bench/)
and is recorded on its own: a section that fails is written down with its traceback and the next
one runs, so one fault never hides the others. Sections that do not fit in `--budget-s` are
skipped and say so. The JSON is rewritten after every section, so a cut-off run keeps what it had.

Sections: env, sync, matrix, loop_overhead, speedrun, profile, auto_batch, compression, background.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from datetime import date
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from optlab import device as devices  # noqa: E402
from optlab.config import RunConfig, preset  # noqa: E402
from optlab.runner import execute  # noqa: E402
from optlab.store import Store  # noqa: E402
from optlab.telemetry import TelemetrySampler, telemetry_figures  # noqa: E402

SECTIONS: dict[str, callable] = {}


def section(name: str):
    def add(fn):
        SECTIONS[name] = fn
        return fn
    return add


class Suite:
    """Where sections find the device, the sizes (full or tiny), a scratch store, and the budget."""

    def __init__(self, device: str, tiny: bool, budget_s: float, out: Path):
        self.device = devices.resolve(device)
        self.info = devices.describe(self.device)
        self.tiny, self.budget_s, self.out = tiny, budget_s, out
        self.started = time.monotonic()
        self.home = Path(tempfile.mkdtemp(prefix="optlab-gpu-suite-"))
        self.store = Store(self.home / "store")
        self.workers = 0 if tiny else min(8, (os.cpu_count() or 2) // 2)

    @property
    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def run(self, cfg: RunConfig, label: str = "", telemetry: bool = True) -> dict:
        """One run through the engine in this process, with the worker's telemetry sampler
        around it; returns the run's row for the tables (or its failure)."""
        cfg = cfg.replace(device=self.device.type)
        rid = self.store.submit(cfg, label=label, status="running")
        sampler = TelemetrySampler(self.store, rid, self.device).start() if telemetry else None

        def progress(state):
            if sampler is not None:
                done = state.get("epoch_done") and state.get("epoch") == state.get("epochs")
                sampler.phase = "after training" if done else state.get("phase")
        t0 = time.monotonic()
        try:
            summary = execute(self.store, rid, on_progress=progress)
        finally:
            if sampler is not None:
                sampler.stop()
        run = self.store.get(rid)
        if summary is not None and sampler is not None:
            summary = {**summary, **telemetry_figures(list(sampler.rows), summary, sampler.source)}
        return run_row(cfg, run, summary, time.monotonic() - t0, label)


def run_row(cfg: RunConfig, run, summary: dict | None, wall_s: float, label: str) -> dict:
    row = {"label": label or describe(cfg), "run_id": run.id, "status": run.status, "error": run.error,
           "wall_s": round(wall_s, 2), "config": {k: v for k, v in cfg.to_dict().items() if v not in (None, [], False)}}
    if summary is None:
        return row
    t = summary.get("throughput") or {}
    step = summary.get("step_ms_p50")
    row.update({
        "images_per_s": t.get("value"), "images_per_s_ci95": t.get("ci95"), "images_per_s_p10": t.get("p10"),
        "images_per_s_p90": t.get("p90"), "images_per_s_mean_rate": t.get("mean_rate"), "cv_steps": t.get("cv_steps"),
        "quality": t.get("quality"), "quality_why": t.get("why"), "steady_steps": summary.get("steady_steps"),
        "batch_size": summary.get("batch_size"), "step_ms_p50": step, "step_ms_p90": summary.get("step_ms_p90"),
        "forward_backward_ms_p50": summary.get("forward_backward_ms_p50"),
        "optimizer_ms_p50": summary.get("optimizer_ms_p50"), "input_wait_share": summary.get("input_wait_share"),
        "peak_allocated_mb": summary.get("peak_memory_mb"), "peak_reserved_mb": summary.get("peak_reserved_mb"),
        "memory_kind": summary.get("memory_kind"), "gpu_util_pct_mean": summary.get("train_gpu_util_pct_mean"),
        "power_w_mean": summary.get("train_power_w_mean"), "joules_per_image": summary.get("joules_per_image"),
        "gpu_clocks": summary.get("gpu_clocks"), "test_accuracy": summary.get("test_accuracy"),
        "accuracy_per_epoch": summary.get("accuracy_per_epoch"), "train_seconds": summary.get("train_seconds"),
        "time_to_target_s": summary.get("time_to_target_s"), "warmup_seconds": summary.get("warmup_seconds"),
        "device_label": summary.get("device_label"), "telemetry_source": summary.get("telemetry_source")})
    return row


def describe(cfg: RunConfig) -> str:
    parts = [cfg.model, f"{cfg.image_size or 28}px", cfg.precision, f"bs{cfg.batch_size}"]
    parts += ["CL"] if cfg.channels_last else []
    parts += [f"{cfg.pipeline}-pipeline"]
    parts += ["compiled"] if cfg.compile else []
    return " ".join(str(p) for p in parts)


# -- env -----------------------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@section("env")
def env(s: Suite) -> dict:
    out = {"device": s.info.to_dict(), "software": devices.software_versions(), "python": sys.version.split()[0],
           "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "packages": {p: _version(p) for p in ("torch", "torchvision", "nvidia-ml-py", "torchao", "torch-pruning",
                                                  "onnxruntime", "onnxruntime-gpu", "torch-tensorrt", "tensorrt",
                                                  "psutil", "triton", "tensorboard")}}
    try:
        import pynvml
        pynvml.nvmlInit()
        out["driver"] = pynvml.nvmlSystemGetDriverVersion()
        out["nvml_cuda_driver_version"] = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    except Exception as e:
        out["driver"] = None
        out["nvml"] = f"unavailable: {type(e).__name__}: {e}"
    return out


# -- sync: no host waits inside timed steps -----------------------------------------------------------
@section("sync")
def sync(s: Suite) -> dict:
    """The timed steps run under torch.cuda.set_sync_debug_mode("error"): any host wait inside a
    steady step fails the run with the operation that waited."""
    if s.device.type != "cuda":
        return {"skipped": "set_sync_debug_mode checks CUDA synchronisation; this run is on the CPU"}
    base = RunConfig(model="speednet", batch_size=256, epochs=2, limit_train=8192, limit_test=1024, profile=False,
                     num_workers=s.workers)
    cases = [base.replace(precision=p, pipeline="gpu") for p in ("fp32", "tf32", "fp16", "bf16")]
    cases += [base.replace(precision="bf16", channels_last=True, pipeline="cpu")]
    rows = []
    os.environ["OPTLAB_SYNC_DEBUG"] = "error"
    try:
        for cfg in cases:
            r = s.run(cfg, telemetry=False)
            rows.append({"label": r["label"], "status": r["status"], "error": r["error"]})
    finally:
        os.environ.pop("OPTLAB_SYNC_DEBUG", None)
    return {"rows": rows, "all_clean": all(r["status"] == "done" for r in rows)}


# -- the training matrix -----------------------------------------------------------------------------
MATRIX_MODELS = {   # model -> the size of its runs (steady steps enough for an interval; seconds each)
    "speednet": dict(image_size=32, batch_size=256, limit_train=30720),
    "resnet18": dict(image_size=32, batch_size=256, limit_train=15360),
    "resnet50": dict(image_size=224, batch_size=128, limit_train=3840),
    "mobilenet_v3_small": dict(batch_size=256, limit_train=15360),
    "vit_tiny": dict(batch_size=256, limit_train=15360),
}
MATRIX_KNOBS = [dict(precision="fp32"), dict(precision="tf32"), dict(precision="fp16"), dict(precision="bf16"),
                dict(precision="bf16", channels_last=True),
                dict(precision="bf16", channels_last=True, pipeline="cpu")]
COMPILED = ["speednet", "resnet18"]   # also run with torch.compile (bf16 + channels_last, data on the GPU)


def matrix_configs(s: Suite) -> list[RunConfig]:
    base = RunConfig(epochs=1, limit_test=2000, pipeline="gpu", profile=False, num_workers=s.workers)
    if s.tiny:   # three steps a run: the code path, not the figures (bf16 on a CPU is slow)
        sizes = {"speednet": dict(image_size=8, batch_size=32, limit_train=96)}
        base = base.replace(limit_test=64)
    else:
        sizes = MATRIX_MODELS
    # tiny: the refusals and one run each way of feeding data (the code path, not the figures)
    knob_sets = [MATRIX_KNOBS[i] for i in (0, 1, 2, 4, 5)] if s.tiny else MATRIX_KNOBS
    cfgs = [base.replace(model=m, **size, **knobs) for m, size in sizes.items() for knobs in knob_sets]
    if not s.tiny:
        cfgs += [base.replace(model=m, **sizes[m], precision="bf16", channels_last=True, compile=True)
                 for m in COMPILED]
    return cfgs


@section("matrix")
def matrix(s: Suite) -> dict:
    rows = []
    for cfg in matrix_configs(s):
        try:
            cfg.validate(s.info)
        except Exception as e:   # fp16 / tf32 on the CPU: refused before anything runs, as the Lab does
            rows.append({"label": describe(cfg), "status": "refused", "error": str(e)})
            continue
        rows.append(s.run(cfg))
        print(f"  {rows[-1]['label']}: {rows[-1]['status']} {fmt(rows[-1].get('images_per_s'))} img/s", flush=True)
    return {"rows": rows, "speedups": speedups(rows)}


def speedups(rows: list[dict]) -> list[dict]:
    """Each finished row's throughput against fp32 of the same model and size, with the interval."""
    from optlab.stats import compare
    out = []
    for r in rows:
        if r.get("status") != "done":
            continue
        base = next((b for b in rows if b.get("status") == "done" and b["config"].get("model") == r["config"].get("model")
                     and b["config"].get("precision") == "fp32" and not b["config"].get("channels_last")
                     and b["config"].get("pipeline") == "gpu" and not b["config"].get("compile")), None)
        if base is None or base is r:
            continue
        c = compare({"value": r["images_per_s"], "ci95": r["images_per_s_ci95"]},
                    {"value": base["images_per_s"], "ci95": base["images_per_s_ci95"]})
        out.append({"label": r["label"], "vs": base["label"], "ratio": c["ratio"], "ci95": c["ci95"],
                    "verdict": c["verdict"]})
    return out


# -- loop overhead -----------------------------------------------------------------------------------
@section("loop_overhead")
def loop_overhead(s: Suite) -> dict:
    import loop_overhead as lo
    if s.tiny:
        return lo.measure("speednet", 32, "fp32", False, rounds=2, steps=4, device=s.device.type)
    return {"resnet18_bf16_cl": lo.measure("resnet18", 256, "bf16", True, rounds=7, steps=60, device="cuda"),
            "speednet_bf16_cl": lo.measure("speednet", 512, "bf16", True, rounds=7, steps=60, device="cuda")}


# -- speedrun ------------------------------------------------------------------------------------------
@section("speedrun")
def speedrun(s: Suite) -> dict:
    import speedrun as sr
    cfg = preset("speedrun").replace(device=s.device.type, profile=False)
    if s.tiny:
        cfg = cfg.replace(epochs=1, limit_train=128, limit_test=64, batch_size=32, precision="fp32")
        return sr.run_speedrun(cfg, repeats=2, store=s.store)
    return sr.run_speedrun(cfg, repeats=5, store=s.store, echo=lambda line: print("  " + line, flush=True))


# -- profiling -------------------------------------------------------------------------------------------
@section("profile")
def profile(s: Suite) -> dict:
    import profile_overhead as po
    from optlab.advisor import advise
    if s.tiny:
        cfg = RunConfig(model="speednet", image_size=8, batch_size=16, limit_train=192, limit_test=64, epochs=1,
                        num_workers=0)
        argv = ["--device", "cpu", "--repeats", "1", "--batch-size", "16", "--image-size", "8", "--limit-train", "192",
                "--json"]
    else:
        cfg = RunConfig(model="resnet18", image_size=32, precision="bf16", channels_last=True, pipeline="gpu",
                        batch_size=256, limit_train=15360, limit_test=2000, epochs=1)
        argv = ["--device", "cuda", "--model", "resnet18", "--precision", "bf16", "--channels-last",
                "--batch-size", "256", "--image-size", "32", "--limit-train", "7680", "--epochs", "2",
                "--repeats", "3", "--json"]
    row = s.run(cfg.replace(profile=True))
    run = s.store.get(row["run_id"])
    summary = run.summary or {}
    prof = summary.get("profile") or {}
    keep = {k: v for k, v in prof.items() if k not in ("step_ms", "definitions", "memory")}
    for key in ("top", "top_kernels", "top_operators"):
        if isinstance(keep.get(key), list):
            keep[key] = keep[key][:10]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        po.main(argv)
    overhead = json.loads(buf.getvalue().strip().splitlines()[-1])
    overhead.pop("runs", None)
    return {"run": row, "profile": keep, "advice": [a.to_dict() for a in advise(summary, run.config, run.device)],
            "events": [e["message"] for e in s.store.events(row["run_id"]) if e["level"] != "info"][:10],
            "profile_overhead": overhead}


# -- automatic batch size ---------------------------------------------------------------------------
@section("auto_batch")
def auto_batch(s: Suite) -> dict:
    if s.tiny:
        cfg = RunConfig(model="speednet", batch_size="auto", max_batch_size=32, limit_train=256, limit_test=64,
                        epochs=1, num_workers=0, profile=False)
    else:
        cfg = RunConfig(model="resnet50", image_size=224, precision="bf16", channels_last=True, pipeline="gpu",
                        batch_size="auto", limit_train=24576, limit_test=1024, epochs=1, profile=False)
    row = s.run(cfg)
    run = s.store.get(row["run_id"])
    search = (run.summary or {}).get("batch_size_search")
    return {"run": row, "search": search, "device_memory_mb": s.info.total_memory_mb,
            "events": [e["message"] for e in s.store.events(row["run_id"])][-8:]}


# -- compression -------------------------------------------------------------------------------------
COMPRESSION = [{"method": "half_precision", "dtype": "fp16"}, {"method": "half_precision", "dtype": "bf16"},
               {"method": "prune_2to4", "dtype": "fp16"}, {"method": "torchao_int8_weight_only"},
               {"method": "torchao_int8_dynamic"}, {"method": "torchao_float8"},
               {"method": "export_onnx"}, {"method": "export_tensorrt"}]


@section("compression")
def compression(s: Suite) -> dict:
    from optlab.compress import validate_steps
    # What this device cannot run is recorded with the reason the Lab gives, and left out.
    refused = {json.dumps(st): "; ".join(validate_steps([st], s.info)) for st in COMPRESSION}
    steps = [st for st in COMPRESSION if not refused[json.dumps(st)]]
    if s.tiny:
        cfg = RunConfig(model="vit_tiny", image_size=16, batch_size=32, limit_train=128, limit_test=64, epochs=1,
                        num_workers=0, profile=False)
        steps = steps + [{"method": "benchmark", "repeats": 5, "warmup": 1, "throughput_batch": 32,
                          "throughput_repeats": 2, "batch_sizes": [1, 32]}]
    else:
        cfg = RunConfig(model="vit_tiny", precision="bf16", pipeline="gpu", batch_size=256, limit_train=30720,
                        limit_test=4000, epochs=2, profile=False,
                        compress=[{"method": "benchmark", "repeats": 100, "throughput_batch": 1024,
                                   "throughput_repeats": 20, "batch_sizes": [1, 64, 1024]}])
    rows = {}
    for model, c in (("vit_tiny", cfg), ("resnet18", cfg.replace(model="resnet18", image_size=32))):
        c = c.replace(compress=c.compress + steps)
        row = s.run(c)
        variants = s.store.metrics(row["run_id"], "variant")
        rows[model] = {"run": {k: row.get(k) for k in ("label", "status", "error", "test_accuracy", "images_per_s")},
                       "variants": [{k: v.get(k) for k in ("name", "device_label", "test_accuracy", "latency_ms_p50",
                                                           "latency_ms_p90", "throughput_images_per_s",
                                                           "throughput_batch", "speedup_vs_baseline",
                                                           "speedup_by_batch", "size_mb", "layers_converted",
                                                           "error", "notes")} for v in variants]}
        if s.tiny:
            break
    return {"refused": {k: v for k, v in refused.items() if v}, "models": rows}


# -- data-parallel: one device against every visible GPU, through torchrun -------------------------------
@section("ddp")
def data_parallel(s: Suite) -> dict:
    from optlab.ddp import scaling
    from optlab.device import visible_gpus
    if s.tiny or not s.info.is_gpu:
        return {"skipped": "data-parallel scaling is a multi-GPU figure; the code path runs on the CPU in "
                           "tests/test_ddp.py (two Gloo ranks)"}
    gpus = len(visible_gpus())
    if gpus < 2:
        return {"skipped": f"{gpus} GPU visible: scaling needs at least 2"}
    cfg = RunConfig(model="resnet18", image_size=32, precision="bf16", channels_last=True, pipeline="gpu",
                    batch_size=256, epochs=2, limit_train=30720, limit_test=2000)
    rows = {n: s.run(cfg.replace(gpus=n), label=f"resnet18 32px bf16 bs256/rank x{n}", telemetry=False)
            for n in sorted({1, 2, gpus})}
    one = s.store.get(rows[1]["run_id"])
    out = {"rows": rows, "scaling": {}}
    for n, row in rows.items():
        if n > 1 and row["status"] == "done":
            run = s.store.get(row["run_id"])
            out["scaling"][n] = {**(scaling(run, one) or {}),
                                 "allreduce_share": (run.summary.get("distributed") or {}).get("allreduce_share")}
    return out


# -- a background run: scheduler -> worker process -> store ------------------------------------------
@section("background")
def background(s: Suite) -> dict:
    from optlab.scheduler import Scheduler
    size = (dict(batch_size=32, limit_train=128, limit_test=64, num_workers=0, image_size=8) if s.tiny
            else dict(image_size=32, batch_size=256, limit_train=30720, limit_test=2000, pipeline="gpu",
                      precision="bf16", channels_last=True))
    cfg = RunConfig(model="resnet18" if not s.tiny else "speednet", epochs=2, device=s.device.type, **size)
    store = Store(s.home / "background")
    rid = store.submit(cfg, user="gpu-suite")
    t0 = time.monotonic()
    idle = Scheduler(store, slots=1).run_until_idle(timeout_s=240)
    run = store.get(rid)
    telemetry = store.metrics(rid, "telemetry")
    summary = run.summary or {}
    fields = sorted({k for row in telemetry for k in row} - {"t", "source", "phase"})
    return {"idle": idle, "status": run.status, "error": run.error, "wall_s": round(time.monotonic() - t0, 1),
            "images_per_s": summary.get("train_images_per_s"), "telemetry_rows": len(telemetry),
            "telemetry_fields": fields, "telemetry_source": summary.get("telemetry_source"),
            "joules_per_image": summary.get("joules_per_image"), "gpu_clocks": summary.get("gpu_clocks"),
            "events": [e["message"] for e in store.events(rid)][:12]}


# -- output --------------------------------------------------------------------------------------------
def fmt(v, digits=0, pct=False) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:.{digits}f}"
    return f"{v:,.{digits}f}"


def _ci(row) -> str:
    ci = row.get("images_per_s_ci95")
    return f"{fmt(ci[0])}–{fmt(ci[1])}" if ci else "–"


def markdown(result: dict) -> str:
    env_ = result["sections"].get("env", {}).get("result", {})
    dev = env_.get("device", {})
    sw = env_.get("software", {})
    lines = [f"# OptLab GPU suite: {dev.get('name', '?')}, {result['date']}", "",
             f"Device {dev.get('label')} (compute capability {dev.get('capability')}, "
             f"{fmt(dev.get('total_memory_mb'))} MB); driver {env_.get('driver')}; torch {sw.get('torch')}, "
             f"CUDA {sw.get('cuda')}, cuDNN {sw.get('cudnn')}, torchvision {sw.get('torchvision')}; "
             f"packages {', '.join(f'{k} {v}' for k, v in (env_.get('packages') or {}).items() if v)}.",
             f"Command: `{result['command']}`; {result['elapsed_s']:.0f} s in all.", ""]
    for name, sec in result["sections"].items():
        if sec.get("error"):
            lines += [f"## {name}: FAILED", "", "```", sec["error"].strip()[-1500:], "```", ""]
        elif sec.get("skipped"):
            lines += [f"## {name}: skipped", "", sec["skipped"], ""]
    m = result["sections"].get("matrix", {}).get("result")
    if m:
        lines += ["## Training matrix (steady-state steps; img/s is the median step throughput)", "",
                  "| run | status | img/s | 95 % CI | p10–p90 | step p50 ms | fwd+bwd ms | opt ms | input wait % "
                  "| peak alloc MB | GPU util % | W | J/img | acc % | clocks |",
                  "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in m["rows"]:
            clocks = r.get("gpu_clocks") or {}
            clock = ("disturbed: " + ", ".join(clocks.get("slowdown_reasons") or ["clock moved"])
                     if clocks.get("disturbed") else (f"{clocks.get('sm_clock_mhz_min')}–{clocks.get('sm_clock_mhz_max')} MHz"
                                                      if clocks else "–"))
            if r.get("status") != "done":
                lines.append(f"| {r['label']} | {r['status']}: {(r.get('error') or '')[:90]} |" + " |" * 13)
                continue
            lines.append(
                f"| {r['label']} | done{'' if r.get('quality') == 'solid' else ' (thin)'} | {fmt(r['images_per_s'])} "
                f"| {_ci(r)} | {fmt(r['images_per_s_p10'])}–{fmt(r['images_per_s_p90'])} | {fmt(r['step_ms_p50'], 2)} "
                f"| {fmt(r['forward_backward_ms_p50'], 2)} | {fmt(r['optimizer_ms_p50'], 2)} "
                f"| {fmt(r['input_wait_share'], 1, pct=True)} | {fmt(r['peak_allocated_mb'])} "
                f"| {fmt(r['gpu_util_pct_mean'])} | {fmt(r['power_w_mean'])} | {fmt(r['joules_per_image'], 4)} "
                f"| {fmt(r['test_accuracy'], 1, pct=True)} | {clock} |")
        lines += ["", "Speed-up against fp32 (same model and size, data on the GPU), with the 95 % interval from "
                  "both runs' spreads:", "", "| run | × fp32 | 95 % CI | verdict |", "|---|---:|---|---|"]
        for sp in m["speedups"]:
            ci = sp["ci95"]
            lines.append(f"| {sp['label']} | {sp['ratio']:.2f} | {f'{ci[0]:.2f}–{ci[1]:.2f}' if ci else '–'} "
                         f"| {sp['verdict']} |")
        lines.append("")
    lines += ["## Other sections (full figures in the JSON file)", ""]
    for name, sec in result["sections"].items():
        if name in ("env", "matrix") or "result" not in sec:
            continue
        lines += [f"### {name} ({sec['seconds']:.0f} s)", "", "```json",
                  json.dumps(brief(name, sec["result"]), indent=1, default=str)[:3000], "```", ""]
    return "\n".join(lines)


def brief(name: str, r: dict) -> dict:
    """The part of a section worth reading in the Markdown; the JSON keeps everything."""
    if name == "speedrun":
        return {"device": r.get("device"), "train_seconds": {k: r["train_seconds"].get(k) for k in ("value", "mean", "min", "max", "mlperf_mean", "cv")},
                "test_accuracy": {k: r["test_accuracy"].get(k) for k in ("mean", "min", "max")},
                "runs_reaching_target": r.get("runs_reaching_target"), "meets_target": r.get("meets_target"),
                "config": {k: r["config"].get(k) for k in ("model", "precision", "channels_last", "pipeline", "batch_size", "epochs", "lr", "compile")}}
    if name == "compression":
        return {"refused": r.get("refused"), **{m: [{k: v.get(k) for k in ("name", "test_accuracy", "latency_ms_p50", "throughput_images_per_s",
                                             "speedup_vs_baseline", "layers_converted", "error")} for v in d["variants"]]
                for m, d in r.get("models", {}).items()}}
    if name == "profile":
        return {"profile": {k: r["profile"].get(k) for k in list(r["profile"])[:12]},
                "advice": [a.get("title") for a in r.get("advice", [])],
                "profile_overhead": {k: r["profile_overhead"].get(k) for k in ("images_per_s", "last_epoch_images_per_s")}}
    return r


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="CPU-sized runs: proves the code path, not the figures")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--only", help="comma-separated sections (env always runs)")
    p.add_argument("--budget-s", type=float, default=540.0, help="skip sections that would start after this")
    a = p.parse_args(argv)
    s = Suite(a.device, a.tiny, a.budget_s, Path(a.out))
    wanted = ["env"] + [n for n in (a.only.split(",") if a.only else SECTIONS) if n != "env"]
    unknown = [n for n in wanted if n not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    s.out.mkdir(parents=True, exist_ok=True)
    stem = f"{slug(s.info.name if s.info.is_gpu else 'cpu')}-{date.today().isoformat()}" + ("-tiny" if a.tiny else "")
    result = {"date": date.today().isoformat(), "command": " ".join(["python bench/gpu_suite.py", *(argv or sys.argv[1:])]),
              "tiny": a.tiny, "sections": {}, "elapsed_s": 0.0}
    for name in wanted:
        if s.left_s <= 0:
            result["sections"][name] = {"skipped": f"the {a.budget_s:.0f} s budget was spent before it started"}
            continue
        print(f"== {name} ({s.left_s:.0f} s of budget left)", flush=True)
        t0 = time.monotonic()
        try:
            result["sections"][name] = {"result": SECTIONS[name](s)}
        except BaseException as e:   # one fault never hides the others; Ctrl-C still stops
            if isinstance(e, KeyboardInterrupt):
                raise
            result["sections"][name] = {"error": traceback.format_exc()}
            print(traceback.format_exc(), flush=True)
        result["sections"][name]["seconds"] = time.monotonic() - t0
        result["elapsed_s"] = time.monotonic() - s.started
        (s.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
        (s.out / f"{stem}.md").write_text(markdown(result))
    failed = [n for n, sec in result["sections"].items() if sec.get("error")]
    print(f"wrote {s.out / stem}.json and .md; {len(failed)} section(s) failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
