"""Profiled windows and what they show.

* `ProfileWindow` records a few training steps after warm-up with torch.profiler and writes the
  trace where TensorBoard's torch-tb-profiler plugin reads it (OPTLAB_HOME/runs/<id>/tb/run<id>/).
  Steps outside the window run unprofiled; the loop leaves the window's steps (and the one after
  it, which pays for writing the trace) out of the timing figures.
* `profile_inference` records a few forward passes into the same folder (worker "inference").
* `summarize_profile` (the profiler object, when the window closes) and `summarize_trace_file`
  (a saved Chrome-trace file: old runs, shared traces) give the same summary: busy vs idle, time
  by category, top kernels or CPU operators, Tensor Core share, host vs device time per step and
  memory by phase. Both first reduce their source to one `Timeline`, so they agree by
  construction and the figures are computed in one place.

The torch-tb-profiler page draws its charts with Google Charts fetched from the internet, and
Holistic Trace Analysis needs GPU kernels and JupyterLab: this summary is what the in-app
Profile page shows instead, on any machine.
"""
from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

TRACE_GLOB = "*.pt.trace.json*"
TOP_N = 15


_RECORDING = 0   # profiler windows open in this process


def recording() -> bool:
    """Whether a profiler window is open in this process. A signal handler must not raise an
    exception into the profiler's own code then: a profiler stopped half-way crashes the
    process (SIGSEGV) when it exits. The worker waits for the training loop's next check instead."""
    return _RECORDING > 0


class ProfileWindow:
    def __init__(self, trace_dir: Path, device: torch.device, *, first_step: int, warmup: int = 2,
                 active: int = 3, worker_name: str = "train"):
        global _RECORDING
        self.first, self.warmup, self.active = first_step, warmup, active
        self.trace_dir = Path(trace_dir)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.profiler_result = None
        self.error: BaseException | None = None   # why the window could not be closed cleanly
        handler = tensorboard_trace_handler(str(self.trace_dir), worker_name=worker_name, use_gzip=True)

        def on_ready(prof):
            handler(prof)
            self.profiler_result = prof   # kept for the in-app summary
        self.prof = profile(activities=activities, record_shapes=True, profile_memory=True,
                            schedule=schedule(wait=first_step, warmup=warmup, active=active, repeat=1),
                            on_trace_ready=on_ready)
        self.prof.start()
        self.open = True
        _RECORDING += 1

    def step(self, step: int) -> None:
        if not self.open:
            return
        self.prof.step()
        if step >= self.first + self.warmup + self.active:
            self.close()

    def covers(self, step: int) -> bool:
        return self.first <= step <= self.first + self.warmup + self.active

    def close(self) -> None:
        """Stop the profiler (idempotent). Called on every path out of the training loop; a
        failure to stop is kept in `error` rather than raised, so that a cancel or an error
        already unwinding the loop is what the run reports."""
        global _RECORDING
        if self.open:
            self.open = False
            try:
                self.prof.stop()
            except Exception as e:
                self.error = e
            finally:
                _RECORDING -= 1

    @property
    def trace_files(self) -> list[Path]:
        return sorted(self.trace_dir.glob(TRACE_GLOB))


def trace_files(trace_dir: str | Path | None, worker: str | None = None) -> list[Path]:
    """The Chrome-trace files in a run's trace folder, optionally of one worker ("train", "inference")."""
    if not trace_dir or not Path(trace_dir).is_dir():
        return []
    files = sorted(Path(trace_dir).glob(TRACE_GLOB))
    return [f for f in files if worker is None or f.name.split(".", 1)[0] == worker]


def why_no_trace(store, run) -> str:
    """A plain reason a run has no trace file."""
    if not run.config.get("profile", True):
        return "profiling was off for this run (profile=False); run it again with profiling on"
    if run.status in ("queued", "running"):
        return f"the run is {run.status}: its trace is written when the profiled window closes"
    said = [e["message"] for e in store.events(run.id)]
    skipped = [m for m in said if m.startswith("no profile")]
    if skipped:
        return skipped[-1]
    if run.status != "done":
        return f"the run {run.status}" + (f" ({run.error})" if run.error else "") + " before a trace was written"
    from optlab.storeservice import FOLDER_KEPT, FOLDER_SHIPPED, THROUGH_SERVICE
    kept = [m for m in said if m.startswith(FOLDER_KEPT)]
    if kept:
        return kept[-1]
    if any(THROUGH_SERVICE in m for m in said) and not any(m.startswith(FOLDER_SHIPPED) for m in said):
        return "it ran on another host of the Ray cluster, and its run folder (with the trace) has not come back yet"
    return f"no trace files were found in {store.artifacts_dir(run.id, create=False) / 'tb'} (deleted?)"


def run_trace_dir(store, run) -> Path:
    """Where a run's traces are (or would be)."""
    recorded = (run.summary or {}).get("trace_dir")
    return Path(recorded) if recorded else store.artifacts_dir(run.id, create=False) / "tb" / f"run{run.id}"


# -- an inference window ------------------------------------------------------------------------------
def profile_inference(model: torch.nn.Module, example_batch: torch.Tensor, device: torch.device,
                      trace_dir: str | Path, autocast=None, *, warmup: int = 2, active: int = 3) -> dict:
    """Profile `active` forward passes, after one unrecorded pass and `warmup` warm-up passes.

    Writes a trace named for worker "inference" into `trace_dir` (beside the training trace, so
    TensorBoard shows both workers of one run) and returns its summary (see `summarize_profile`)
    with the batch size and the trace file added.
    """
    trace_dir = Path(trace_dir)
    trace_dir.mkdir(parents=True, exist_ok=True)
    autocast = autocast or nullcontext
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    handler = tensorboard_trace_handler(str(trace_dir), worker_name="inference", use_gzip=True)
    before = set(trace_files(trace_dir, "inference"))
    kept = {}

    def on_ready(prof):
        handler(prof)
        kept["prof"] = prof

    was_training = model.training
    model.eval()
    try:
        # The first pass (wait=1) runs unrecorded: one-time allocations and cuDNN autotuning.
        with torch.inference_mode(), profile(
                activities=activities, record_shapes=True, profile_memory=True, on_trace_ready=on_ready,
                schedule=schedule(wait=1, warmup=max(1, warmup), active=active, repeat=1)) as prof:
            for _ in range(1 + max(1, warmup) + active):
                with autocast():
                    model(example_batch)
                if cuda:   # each profiled step holds its own kernels, so per-step device time is whole
                    torch.cuda.synchronize(device)
                prof.step()
    finally:
        model.train(was_training)
    summary = summarize_profile(kept["prof"], device)
    new = [f for f in trace_files(trace_dir, "inference") if f not in before]
    summary.update(worker="inference", batch_size=len(example_batch),
                   trace_file=str(new[-1]) if new else None)
    return summary


def profile_run_inference(model, ds, cfg, batch_size: int, device: torch.device, trace_dir,
                          autocast) -> dict:
    """The inference window for a just-trained run: the trained (eager) model, its precision and
    memory format, one batch of test images at the training batch size (a compiled run is
    profiled uncompiled, and says so)."""
    from optlab.pipeline import to_model_input

    size = cfg.image_size or ds.native_size
    n = max(1, min(int(batch_size), len(ds.test_y)))
    x = to_model_input(ds.test_x[:n].to(device), ds.mean, ds.std, size, cfg.channels_last)
    result = profile_inference(model, x, device, trace_dir, autocast)
    result["compiled"] = False
    if cfg.compile:
        result["note"] = "the training run was compiled; this inference window ran the eager model"
    return result


# -- categories: a registry of name-pattern rules -----------------------------------------------------
@dataclass(frozen=True)
class CategoryRule:
    category: str
    pattern: re.Pattern
    in_context: bool = False   # also match the enclosing annotations (Optimizer.step#..., DataLoader)


CATEGORIES = ("convolution", "matmul", "normalisation", "elementwise", "memory copies", "optimizer",
              "data loading", "communication", "other")

# First match wins, so the context rules come first: an aten::add_ inside Optimizer.step is
# optimizer work, not elementwise work. Patterns cover both operator names (CPU) and kernel names.
CATEGORY_RULES: list[CategoryRule] = []


def category_rule(category: str, pattern: str, *, in_context: bool = False) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"unknown profile category {category!r}; choose one of: {', '.join(CATEGORIES)}")
    CATEGORY_RULES.append(CategoryRule(category, re.compile(pattern, re.I), in_context))


# collectives first: NCCL's all-reduce kernels and Gloo's operators are communication wherever they run
category_rule("communication", r"nccl|all_?reduce|allgather|all_gather|reduce_scatter|gloo|c10d::|"
                               r"^record_param_comms$")
category_rule("optimizer", r"^optimizer\.|multi_tensor_apply|_foreach_|fused_(sgd|adam)|\bsgd_|adamw?_",
              in_context=True)
category_rule("data loading", r"dataloader", in_context=True)
category_rule("memory copies", r"^aten::(copy_|to|_to_copy|contiguous|clone)$|^memcpy|^memset|cudamemcpy|cudamemset")
category_rule("convolution", r"conv|fprop|dgrad|wgrad|implicit_gemm|winograd")
category_rule("matmul", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|addmv|mv)$|gemm|gemv|nvjet|cutlass|"
                        r"scaled_dot_product|flash|attention|_mma|xmma")
category_rule("normalisation", r"batch_norm|layer_norm|group_norm|instance_norm|rms_norm|\bbn_|welford|norm_")
category_rule("elementwise", r"elementwise|vectorized|pointwise|triton_poi|^aten::(add|add_|sub|sub_|mul|mul_|"
                             r"div|div_|relu|relu_|gelu|gelu_backward|silu|silu_backward|sigmoid|tanh|threshold|"
                             r"threshold_backward|hardswish|hardswish_backward|hardsigmoid|fill_|zero_|zeros_like|"
                             r"ones_like|clamp|clamp_|where|neg|exp|sqrt|rsqrt|pow|lerp_|addcmul_|addcdiv_|"
                             r"dropout|native_dropout|native_dropout_backward)$")


def classify(name: str, context: tuple[str, ...] = ()) -> str:
    """The category of an operator or kernel, given the names of the spans that enclose it."""
    for rule in CATEGORY_RULES:
        if rule.pattern.search(name) or (rule.in_context and any(rule.pattern.search(c) for c in context)):
            return rule.category
    return "other"


# -- Tensor Cores: a heuristic over kernel names ------------------------------------------------------
TENSOR_CORE_HEURISTIC = (
    "A kernel counts as Tensor Core work when its name carries a Tensor Core instruction shape "
    "(hmma, wgmma, h884, s884, h1688, s1688, c1688, i8816, 16816, tensorop), or names a matrix kernel "
    "family (gemm, mma, xmma, implicit_gemm, conv, nvjet, cutlass, sm80_/sm90_/sm100_) together with a "
    "reduced-precision tag (bf16, f16/fp16/half, tf32, fp8/e4m3/e5m2, int8/i8) or was launched by an "
    "operator whose inputs are bf16/fp16. fp32 FMA kernels (sgemm, ffma, simt) do not count. "
    "Share = Tensor Core kernel time / all kernel time (memory copies excluded). Kernel names are "
    "not a contract, so this is an estimate, like the profiler plugin's own allow-list.")
_TC_SHAPE = re.compile(r"hmma|wgmma|h884|s884|h1688|s1688|c1688|i8816|16816|tensorop", re.I)
_TC_FAMILY = re.compile(r"gemm|mma|xmma|implicit_gemm|conv|fprop|dgrad|wgrad|nvjet|cutlass|sm80_|sm86_|sm89_|"
                        r"sm90_|sm100_|sm120_", re.I)
_TC_TAG = re.compile(r"bf16|f16|fp16|half|tf32|fp8|e4m3|e5m2|int8|i8", re.I)
_FP32_FMA = re.compile(r"sgemm|ffma|simt", re.I)
_LOW_PRECISION_INPUTS = {"c10::BFloat16", "c10::Half", "BFloat16", "Half", "bfloat16", "half", "float16"}


def is_tensor_core_kernel(name: str, launch_dtypes: tuple[str, ...] = ()) -> bool:
    """Whether a kernel ran on Tensor Cores, by `TENSOR_CORE_HEURISTIC`."""
    if _TC_SHAPE.search(name):
        return True
    if _FP32_FMA.search(name) or not _TC_FAMILY.search(name):
        return False
    return bool(_TC_TAG.search(name)) or any(d in _LOW_PRECISION_INPUTS for d in launch_dtypes)


# -- one timeline, from either source ----------------------------------------------------------------
# Profiler bookkeeping that torch's own event list leaves out; the trace parser drops it too.
_BOOKKEEPING = {"profiler::_record_function_enter", "profiler::_record_function_enter_new",
                "profiler::_record_function_exit", "aten::is_leaf", "aten::output_nr", "aten::_version"}
_CPU_KINDS = {"cpu_op", "operator", "user_annotation", "cuda_runtime", "cuda_driver", "runtime", "driver"}
_GPU_KINDS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "memcpy": "memcpy", "gpu_memset": "memset",
              "memset": "memset"}
_EPS = 1e-3  # µs: trace timestamps are rounded to the nanosecond


@dataclass
class CpuSpan:
    name: str
    start: float             # µs
    end: float
    thread: object
    kind: str                # cpu_op | user_annotation | cuda_runtime | ...
    key: int | None = None   # the id kernels use to name the operator that launched them
    dtypes: tuple = ()
    parent: "CpuSpan | None" = None
    child_us: float = 0.0

    @property
    def dur(self) -> float:
        return self.end - self.start

    @property
    def self_us(self) -> float:
        return max(0.0, self.dur - self.child_us)

    def ancestors(self) -> tuple[str, ...]:
        names, p = [], self.parent
        while p is not None:
            names.append(p.name)
            p = p.parent
        return tuple(names)


@dataclass
class GpuSpan:
    name: str
    start: float
    end: float
    kind: str                # kernel | memcpy | memset
    link: int | None = None  # key of the launching operator

    @property
    def dur(self) -> float:
        return self.end - self.start


@dataclass
class Timeline:
    source: str              # "profiler" or "trace file"
    device: str              # "cuda" or "cpu": where the run executed
    device_name: str | None = None
    cpu: list[CpuSpan] = field(default_factory=list)
    gpu: list[GpuSpan] = field(default_factory=list)
    memory: list[tuple[float, int, str]] = field(default_factory=list)   # (µs, bytes, "cpu"|"cuda")
    memory_recorded: bool = False


def _nest(spans: list[CpuSpan]) -> None:
    """Give each span its innermost enclosing span on the same thread and count child time."""
    by_thread = defaultdict(list)
    for s in spans:
        by_thread[s.thread].append(s)
    for spans_of_thread in by_thread.values():
        spans_of_thread.sort(key=lambda s: (s.start, -s.end))
        stack: list[CpuSpan] = []
        for s in spans_of_thread:
            while stack and not (stack[-1].start <= s.start + _EPS and s.end <= stack[-1].end + _EPS):
                stack.pop()
            if stack:
                s.parent = stack[-1]
                stack[-1].child_us += s.dur
            stack.append(s)


def _device_kind(value) -> str:
    text = str(value).lower()
    if text in ("1", "devicetype.cuda", "cuda"):
        return "cuda"
    return "cpu" if text in ("0", "devicetype.cpu", "cpu") else text


def timeline_from_profiler(prof, device: torch.device | str) -> Timeline:
    """Reduce a finished torch.profiler.profile to a Timeline via its documented event list
    (`prof.events()`: names, time ranges, threads, device types, correlation ids, input dtypes)
    plus the raw allocation records the profiler kept (`[memory]` events)."""
    device = torch.device(device)
    tl = Timeline("profiler", device.type,
                  torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else None)
    for e in prof.events():
        if e.name in _BOOKKEEPING or e.name == "[memory]":
            continue
        kind = str(getattr(e, "activity_type", "") or "").lower()
        start, end = e.time_range.start, e.time_range.end
        if str(e.device_type).endswith("CPU"):
            if e.is_async or (kind and kind not in _CPU_KINDS):
                continue
            name = e.trace_name or e.name   # trace_name keeps "ProfilerStep#7"; name says "ProfilerStep*"
            tl.cpu.append(CpuSpan(name, start, end, e.thread, kind or "cpu_op", e.id,
                                  tuple(getattr(e, "input_dtypes", None) or ())))
        elif kind in _GPU_KINDS or (not kind and e.device_type is not None):
            tl.gpu.append(GpuSpan(e.name, start, end, _GPU_KINDS.get(kind, "kernel"),
                                  getattr(e, "linked_correlation_id", None) or None))
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is not None:
        origin = results.trace_start_ns()
        tl.memory_recorded = True
        for r in results.events():
            if r.name() == "[memory]":
                tl.memory.append(((r.start_ns() - origin) / 1000, int(r.nbytes()), _device_kind(r.device_type())))
    _nest(tl.cpu)
    return tl


def _load_trace(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path} could not be read: {e.strerror}") from None
    return _parse_trace(raw, str(path))


def _parse_trace(raw: bytes, name: str) -> dict:
    """A Chrome-trace document from a file's bytes (gzipped or not); ValueError naming `name`."""
    try:
        text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        data = json.loads(text.decode("utf-8"))
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{name} is not a readable Chrome-trace file (.pt.trace.json or .json.gz): {e}") from None
    if isinstance(data, list):   # the Chrome trace format also allows a bare array of events
        data = {"traceEvents": data}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ValueError(f"{name} has no 'traceEvents' list: not a Chrome-trace file")
    return data


def timeline_from_trace(data: dict) -> Timeline:
    """Reduce a Chrome-trace document (as torch.profiler writes it) to a Timeline."""
    props = data.get("deviceProperties") or []
    tl = Timeline("trace file", "cpu", (props[0].get("name") if props else None))
    runtime_seen = False
    for ev in data["traceEvents"]:
        if not isinstance(ev, dict):
            continue
        cat = str(ev.get("cat", "")).lower()
        args = ev.get("args") or {}
        if ev.get("ph") == "i" and ev.get("name") == "[memory]":
            tl.memory_recorded = True
            tl.memory.append((float(ev["ts"]), int(args.get("Bytes", 0)), _device_kind(args.get("Device Type", 0))))
            continue
        if ev.get("ph") != "X" or "dur" not in ev or ev.get("name") in _BOOKKEEPING:
            continue
        start = float(ev["ts"])
        end = start + float(ev["dur"])
        key = args.get("External id", args.get("external id"))
        if cat in _CPU_KINDS:
            runtime_seen |= cat in ("cuda_runtime", "runtime")
            tl.cpu.append(CpuSpan(ev["name"], start, end, (ev.get("pid"), ev.get("tid")), cat, key,
                                  tuple(args.get("Input type") or ())))
        elif cat in _GPU_KINDS:
            tl.gpu.append(GpuSpan(ev["name"], start, end, _GPU_KINDS[cat], key))
    # A CPU run on a GPU machine still lists the machine's GPUs in deviceProperties: only
    # kernels, copies or CUDA runtime calls in the trace make it a GPU run.
    if tl.gpu or runtime_seen:
        tl.device = "cuda"
    if data.get("profile_memory") == 0:
        tl.memory_recorded = False
    _nest(tl.cpu)
    return tl


# -- the summary -----------------------------------------------------------------------------------
DEFINITIONS = {
    "window": "The profiled steps (ProfilerStep#N on the host), extended to the end of their last GPU "
              "kernel on a GPU.",
    "busy_gpu": "GPU busy = time with at least one kernel, memory copy or memset running (overlaps "
                "counted once) / window time; idle is the rest.",
    "busy_cpu": "CPU: busy = time inside PyTorch operators and annotated regions on the profiled "
                "threads / window time; the rest is Python and framework time between operators.",
    "categories_gpu": "GPU kernel time by category; a kernel takes the category of the operator that "
                      "launched it (and the optimizer / data-loading region around it), else of its own name.",
    "categories_cpu": "CPU: self time of operators (time not spent in a child operator) by category.",
    "host_gpu": "Host time per step = step wall time minus time the host spent blocked in CUDA "
                "synchronisation; device time per step = GPU busy time per step.",
    "host_cpu": "CPU: step wall time vs time inside operators per step; the difference is Python and "
                "framework overhead.",
    "memory": "Allocations the profiler recorded, attributed by time to data loading, forward (incl. the "
              "loss), backward and optimizer; peak is the highest level above the level at the window start.",
}


def _union_ms(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted((max(s, lo), min(e, hi)) for s, e in intervals if e > lo and s < hi):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total / 1000


def _shares(totals: dict[str, float]) -> list[dict]:
    whole = sum(totals.values()) or 1.0
    rows = [{"category": k, "ms": v / 1000, "share": v / whole} for k, v in totals.items() if v > 0]
    return sorted(rows, key=lambda r: -r["ms"])


def _phases(tl: Timeline, steps: list[CpuSpan]) -> list[tuple[float, float, str]]:
    """(start, end, phase) intervals inside the steps; forward is whatever the others leave."""
    marked = []
    for step in steps:
        inside = [s for s in tl.cpu if step.start - _EPS <= s.start and s.end <= step.end + _EPS]
        backward = [s for s in inside if s.name.startswith("autograd::engine::evaluate_function")]
        if backward:
            marked.append((min(s.start for s in backward), max(s.end for s in backward), "backward"))
        for s in inside:
            low = s.name.lower()
            if low.startswith("optimizer."):
                marked.append((s.start, s.end, "optimizer"))
            elif low.startswith("enumerate(dataloader)"):
                marked.append((s.start, s.end, "data loading"))
    return marked


def _memory_by_phase(tl: Timeline, steps: list[CpuSpan], lo: float, hi: float) -> dict | None:
    if not tl.memory_recorded:
        return None
    want = "cuda" if tl.device == "cuda" else "cpu"
    records = sorted((t, b) for t, b, d in tl.memory if d == want and lo - _EPS <= t <= hi + _EPS)
    marked = _phases(tl, steps)
    step_bounds = [(s.start, s.end) for s in steps]
    phases: dict[str, dict] = {p: {"phase": p, "allocated_mb": 0.0, "freed_mb": 0.0, "peak_above_start_mb": None}
                               for p in ("data loading", "forward", "backward", "optimizer")}
    level = 0
    for t, nbytes in records:
        level += nbytes
        if not any(a - _EPS <= t <= b + _EPS for a, b in step_bounds):
            continue
        # data loading and optimizer regions sit inside the backward-to-step-end span on some
        # threads, so the named regions are checked first
        name = next((p for a, b, p in marked if p != "backward" and a <= t <= b), None) or \
            next((p for a, b, p in marked if p == "backward" and a <= t <= b), "forward")
        row = phases[name]
        row["allocated_mb" if nbytes > 0 else "freed_mb"] += abs(nbytes) / 2**20
        row["peak_above_start_mb"] = max(row["peak_above_start_mb"] or 0.0, level / 2**20)
    n = max(1, len(steps))
    rows = []
    for row in phases.values():
        if row["peak_above_start_mb"] is None:
            continue
        rows.append({"phase": row["phase"], "allocated_mb_per_step": row["allocated_mb"] / n,
                     "freed_mb_per_step": row["freed_mb"] / n, "peak_above_start_mb": row["peak_above_start_mb"]})
    return {"device": want, "phases": rows, "records": len(records), "basis": DEFINITIONS["memory"],
            "label": ("GPU (CUDA caching allocator)" if want == "cuda" else "CPU (host allocator)")}


@dataclass
class _Window:
    """The profiled steps and the time span they cover (µs), device work included."""
    steps: list[CpuSpan]
    lo: float
    hi: float

    @property
    def ms(self) -> float:
        return (self.hi - self.lo) / 1000

    @property
    def n(self) -> int:
        return max(1, len(self.steps))

    @property
    def step_ms(self) -> float:
        return sum(s.dur for s in self.steps) / 1000 / self.n if self.steps else self.ms

    def holds(self, start: float, end: float) -> bool:
        return end > self.lo and start < self.hi


def _window(tl: Timeline) -> _Window:
    steps = sorted((s for s in tl.cpu if s.name.startswith("ProfilerStep#")), key=lambda s: s.start)
    if steps:
        lo, host_hi = steps[0].start, steps[-1].end
    elif tl.cpu:
        lo, host_hi = min(s.start for s in tl.cpu), max(s.end for s in tl.cpu)
    else:
        lo = host_hi = 0.0
    # kernels launched inside the steps may finish after the host moved on
    hi = max([host_hi] + [g.end for g in tl.gpu if lo - _EPS <= g.start <= host_hi + _EPS])
    return _Window(steps, lo, hi)


def _busy(busy_ms: float, w: _Window, basis: str, label: str) -> dict:
    share = busy_ms / w.ms if w.ms else None
    return {"basis": basis, "label": label, "busy_ms": busy_ms, "idle_ms": w.ms - busy_ms,
            "busy_share": share, "idle_share": None if share is None else 1 - share}


def _gpu_figures(tl: Timeline, w: _Window) -> dict:
    """Busy/idle, categories, top kernels, Tensor Cores and host vs device, from GPU kernels."""
    by_key = {s.key: s for s in tl.cpu if s.key is not None and s.kind in ("cpu_op", "operator")}
    busy = _union_ms([(g.start, g.end) for g in tl.gpu], w.lo, w.hi)
    cat_us, top, tc_us, kernel_us, kernel_durations = defaultdict(float), {}, 0.0, 0.0, []
    for g in tl.gpu:
        if not w.holds(g.start, g.end):
            continue
        if g.kind != "kernel":
            cat_us["memory copies"] += g.dur
            continue
        op = by_key.get(g.link)
        category = classify(op.name, op.ancestors()) if op is not None else "other"
        category = category if category != "other" else classify(g.name)
        tc = is_tensor_core_kernel(g.name, op.dtypes if op is not None else ())
        cat_us[category] += g.dur
        kernel_us += g.dur
        tc_us += g.dur if tc else 0.0
        kernel_durations.append(g.dur)
        _add_top(top, g.name, category, g.dur, tensor_core=tc)
    kernel_durations.sort()
    waits = sum(s.dur for s in tl.cpu if s.kind in ("cuda_runtime", "runtime") and "synchronize" in s.name.lower()
                and w.holds(s.start, s.end)) / 1000 / w.n
    return {
        "utilisation": _busy(busy, w, "gpu", "GPU kernels"),
        "categories": _shares(cat_us), "category_basis": "gpu",
        "top_kind": "GPU kernels", "top": _top_rows(top, kernel_us),
        "kernel_us_median": kernel_durations[len(kernel_durations) // 2] if kernel_durations else None,
        "kernels_per_step": len(kernel_durations) / w.n,
        "tensor_cores": {"share": tc_us / kernel_us if kernel_us else None, "tensor_core_ms": tc_us / 1000,
                         "kernel_ms": kernel_us / 1000, "heuristic": TENSOR_CORE_HEURISTIC},
        "host": {"basis": "gpu", "device_label": "GPU busy", "step_ms": w.step_ms,
                 "host_ms": max(0.0, w.step_ms - waits), "host_wait_ms": waits, "device_ms": busy / w.n},
        "definitions": {k: DEFINITIONS[k] for k in ("window", "busy_gpu", "categories_gpu", "host_gpu", "memory")},
    }


def _cpu_figures(tl: Timeline, w: _Window, gpu_run: bool) -> dict:
    """The CPU-side equivalents: operator time instead of kernel time, labelled as CPU figures."""
    ops = [s for s in tl.cpu if s.kind in ("cpu_op", "operator", "user_annotation")
           and not s.name.startswith("ProfilerStep#") and w.lo - _EPS <= s.start and s.end <= w.hi + _EPS]
    top_level = [(s.start, s.end) for s in ops if s.parent is None or s.parent.name.startswith("ProfilerStep#")]
    busy = _union_ms(top_level, w.lo, w.hi)
    cat_us, top = defaultdict(float), {}
    for s in ops:
        category = classify(s.name, s.ancestors())
        cat_us[category] += s.self_us
        _add_top(top, s.name, category, s.self_us)
    return {
        "utilisation": _busy(busy, w, "cpu", "CPU: inside operators"),
        "categories": _shares(cat_us), "category_basis": "cpu",
        "top_kind": "CPU operators (self time)", "top": _top_rows(top, sum(cat_us.values())),
        "tensor_cores": {"share": None, "heuristic": TENSOR_CORE_HEURISTIC,
                         "reason": "no GPU kernels were recorded" + ("" if gpu_run else " (CPU run)")},
        "host": {"basis": "cpu", "device_label": "CPU: inside operators", "step_ms": w.step_ms,
                 "host_ms": w.step_ms, "host_wait_ms": 0.0, "device_ms": busy / w.n},
        "definitions": {k: DEFINITIONS[k] for k in ("window", "busy_cpu", "categories_cpu", "host_cpu", "memory")},
    }


def summarize(tl: Timeline) -> dict:
    """The profile summary of a Timeline; DEFINITIONS (copied into the summary) say what each figure means."""
    w = _window(tl)
    gpu_run = tl.device == "cuda"
    kernels = any(k.kind == "kernel" for k in tl.gpu)
    reason = None
    if not gpu_run:
        reason = ("this run executed on the CPU, so there are no GPU kernels: every figure below is a "
                  "CPU figure (operator time on the host), not a GPU figure")
    elif not kernels:
        reason = ("the run used a GPU but the profiler recorded no GPU kernels: CUPTI is usually restricted "
                  "to administrators (NVreg_RestrictProfilingToAdminUsers=1) or held by another profiler; "
                  "host-side figures only")
    out = {"source": tl.source, "device": tl.device, "device_name": tl.device_name,
           "gpu_kernels_recorded": kernels, "reason": reason, "steps": len(w.steps),
           "step_ms": [s.dur / 1000 for s in w.steps], "window_ms": w.ms}
    out.update(_gpu_figures(tl, w) if gpu_run and kernels else _cpu_figures(tl, w, gpu_run))
    out["memory"] = _memory_by_phase(tl, w.steps, w.lo, w.hi)
    if out["memory"] is None:
        out["memory_reason"] = "the profiler did not record memory (profile_memory was off)"
    return out


def _add_top(top: dict, name: str, category: str, us: float, **extra) -> None:
    row = top.setdefault(name, {"name": name, "us": 0.0, "calls": 0, "by_category": defaultdict(float), **extra})
    row["us"] += us
    row["calls"] += 1
    row["by_category"][category] += us


def _top_rows(top: dict, whole_us: float) -> list[dict]:
    """The TOP_N heaviest names; one name can serve several categories (aten::fill_ in the data
    loader and in the model), so each row takes the category that holds most of its time."""
    rows = sorted(top.values(), key=lambda r: -r["us"])[:TOP_N]
    return [{"name": r["name"], "category": max(r["by_category"], key=r["by_category"].get),
             "ms": r["us"] / 1000, "calls": r["calls"], "mean_us": r["us"] / r["calls"],
             "share": r["us"] / whole_us if whole_us else None,
             **{k: v for k, v in r.items() if k not in ("name", "us", "calls", "by_category")}} for r in rows]


def summarize_profile(prof, device: torch.device | str) -> dict:
    """The summary of a finished profiler window (the object torch.profiler hands to on_trace_ready).

    GPU runs: GPU busy vs idle, kernel time by category, top kernels, Tensor Core share, host vs
    device time per step, memory by phase. CPU runs: the CPU-side equivalents, with
    `device="cpu"`, `gpu_kernels_recorded=False` and a plain `reason`.
    """
    return summarize(timeline_from_profiler(prof, device))


def summarize_uploaded_trace(name: str, raw: bytes) -> dict:
    """The summary of a trace file someone uploaded, read in memory: messages name the file as it
    was uploaded (never a path on this server). ValueError for a file that is not a torch.profiler
    trace."""
    data = _parse_trace(raw, name)
    try:
        summary = summarize(timeline_from_trace(data))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{name} is JSON with trace events, but not as torch.profiler writes them "
                         f"({type(e).__name__}: {e})") from None
    if not summary.get("steps"):
        raise ValueError(f"{name} holds no profiled steps (ProfilerStep#N events): nothing to summarise; "
                         "record it with torch.profiler.profile(schedule=...) and prof.step() each step")
    summary["trace_file"] = name
    return summary


def summarize_trace_file(path: str | Path) -> dict:
    """The same summary as `summarize_profile`, from a saved Chrome-trace file (.json or .json.gz)."""
    summary = summarize(timeline_from_trace(_load_trace(path)))
    summary["trace_file"] = str(path)
    return summary
