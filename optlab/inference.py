"""Inference benchmark: latency at batch 1, throughput at a large batch, a batch-size sweep,
peak memory and multiply-accumulates, for any callable model on the device it targets.

Timing is honest in the same way as training: warm-up calls first (cuDNN autotunes once per
shape, lazy initialisation happens on the first call), then each timed call bracketed by CUDA
events on a GPU (read back after the loop) or by the host clock where the work is synchronous
(the CPU, ONNX Runtime). MACs are counted, never used in place of a measured time.

Models that are compared are timed together, in interleaved rounds (baseline, v1, v2, ...,
baseline, v1, v2, ...), never one after the other: a slow minute on the machine then hits
every model, not only the one timed during it. Every time is reported with its spread (p10-p90)
and a 95 % interval of its median.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from optlab.measure import percentile
from optlab.stats import bootstrap_median_interval, quantile

TIMERS = ("auto", "cuda_events", "perf_counter")


def batch_like(example: torch.Tensor, n: int) -> torch.Tensor:
    """`n` copies of a one-image batch, in the example's dtype, device and memory format."""
    x = example.expand(n, *example.shape[1:])
    channels_last = example.dim() == 4 and example.is_contiguous(memory_format=torch.channels_last) \
        and not example.is_contiguous()
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def time_calls(model: Callable, x: torch.Tensor, repeats: int, warmup: int, use_events: bool) -> list[float]:
    """Milliseconds of each of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        model(x)
    if use_events:
        torch.cuda.synchronize()
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in pairs:
            start.record()
            model(x)
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in pairs]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in the state dict (weights and buffers; int8 weights count 1 byte)."""
    total = 0
    for value in model.state_dict().values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


def count_macs(model: Callable, example: torch.Tensor) -> int | None:
    """Multiply-accumulates of one forward pass on `example`, from torch's FLOP counter (which
    counts 2 FLOPs per MAC for convolutions and matrix products). None where it sees no
    counted operator (int8 kernels, ONNX Runtime) or cannot run."""
    from torch.utils.flop_counter import FlopCounterMode
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    except Exception:  # a kernel the counter's dispatch mode cannot pass through
        return None
    flops = counter.get_total_flops()
    return int(flops // 2) if flops else None


def activation_peak_mb(model: Callable, x: torch.Tensor, device: torch.device) -> tuple[float | None, str]:
    """Peak memory allocated by one forward pass on top of what already lived (MB), and how it
    was read: the CUDA allocator's peak on a GPU; on the CPU the profiler's allocation record
    (allocations minus frees in time order), since the process's peak RSS is shared by all."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model(x)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, "cuda_allocator"
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20, "cpu_profiler"


def interleaved_times(models: list[Callable], inputs: list[torch.Tensor], *, rounds: int, calls: int,
                      use_events: list[bool]) -> list[list[float]]:
    """Milliseconds of every timed call of each model: `rounds` rounds, each timing `calls` calls
    of every model in turn (round-robin). Warm-up is the caller's."""
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, model in enumerate(models):
            times[i].extend(time_calls(model, inputs[i], calls, 0, use_events[i]))
    return times


def spread(ms: list[float]) -> dict:
    """Median, p10-p90 and the bootstrap 95 % interval of the median of per-call times (ms)."""
    ci = bootstrap_median_interval(ms)
    return {"p50": percentile(ms, 50), "p10": quantile(ms, 0.10), "p90": quantile(ms, 0.90),
            "ci95": list(ci) if ci else None, "calls": len(ms)}


def _plan(repeats: int, rounds: int) -> tuple[int, int]:
    """(rounds, calls per round) for at least `repeats` timed calls in up to `rounds` rounds."""
    rounds = max(1, min(rounds, repeats))
    return rounds, math.ceil(repeats / rounds)


def time_models(models: list[Callable], example: torch.Tensor | list[torch.Tensor], *, repeats: int = 50,
                warmup: int = 10, throughput_batch: int = 256, throughput_repeats: int = 20,
                batch_sizes: tuple[int, ...] | list[int] = (1, 16, 256), rounds: int = 5,
                use_events: bool | list[bool] = False) -> list[dict]:
    """Time several models on one device in interleaved rounds; one timing record per model.

    `example` is one image (or one per model: models may want other dtypes), already on the
    device. Batch 1 gets `repeats` timed calls per model, every other batch size of the sweep
    (the throughput batch included) `throughput_repeats`, spread over up to `rounds` rounds;
    each round visits every batch size and, within it, every model in turn. All models are
    warmed up before the first timed call."""
    if repeats < 1 or throughput_repeats < 1 or throughput_batch < 1 or warmup < 0 or rounds < 1:
        raise ValueError("repeats, throughput_repeats, throughput_batch and rounds must be >= 1; warmup >= 0")
    examples = example if isinstance(example, list) else [example] * len(models)
    events = use_events if isinstance(use_events, list) else [use_events] * len(models)
    for m in models:
        if isinstance(m, nn.Module):
            m.eval()
    sizes = sorted(set(batch_sizes) | {1, throughput_batch})
    plans = {n: _plan(repeats if n == 1 else throughput_repeats, rounds) for n in sizes}
    times = {n: [[] for _ in models] for n in sizes}
    with torch.no_grad():
        inputs = {n: [batch_like(e[:1], n) for e in examples] for n in sizes}
        for n in sizes:
            calls = warmup if n == 1 else min(max(warmup, 1), 3)   # kernels are chosen on the first call per shape
            for i, m in enumerate(models):
                time_calls(m, inputs[n][i], 0, calls, events[i])
        for r in range(max(k for k, _ in plans.values())):
            for n in sizes:
                k, calls = plans[n]
                if r < k:
                    got = interleaved_times(models, inputs[n], rounds=1, calls=calls, use_events=events)
                    for i, ms in enumerate(got):
                        times[n][i].extend(ms)
    records = []
    for i in range(len(models)):
        by_size = {n: spread(times[n][i]) for n in sizes}
        one, busy = by_size[1], by_size[throughput_batch]
        records.append({
            "latency_ms_p50": one["p50"], "latency_ms_p10": one["p10"], "latency_ms_p90": one["p90"],
            "latency_ms_ci95": one["ci95"], "latency_repeats": one["calls"],
            # images/s at the throughput batch from its median call (a few slow calls do not swing it)
            "throughput_images_per_s": throughput_batch / (busy["p50"] / 1000),
            "throughput_ci95": [throughput_batch / (busy["ci95"][1] / 1000), throughput_batch / (busy["ci95"][0] / 1000)]
            if busy["ci95"] else None,
            "throughput_batch": throughput_batch, "throughput_repeats": busy["calls"],
            "batch_sweep": [{"batch": n, "latency_ms_p50": t["p50"], "latency_ms_p10": t["p10"],
                             "latency_ms_p90": t["p90"], "latency_ms_ci95": t["ci95"], "calls": t["calls"],
                             "images_per_s": n / (t["p50"] / 1000)} for n, t in by_size.items()],
            "timer": "cuda_events" if events[i] else "perf_counter", "warmup": warmup,
            "rounds": max(k for k, _ in plans.values()), "interleaved_with": len(models) - 1,
            "threads": torch.get_num_threads()})
    return records


def uses_events(timer: str, device: torch.device) -> bool:
    if timer not in TIMERS:
        raise ValueError(f"timer {timer!r} is not one of: {', '.join(TIMERS)}")
    return timer == "cuda_events" or (timer == "auto" and device.type == "cuda")


def static_figures(model: Callable, example: torch.Tensor, device: torch.device, *, throughput_batch: int = 256,
                   memory: bool = True, macs: bool = True, macs_model: Callable | None = None) -> dict:
    """What is measured once per model, outside the timed rounds: peak memory (weights + input +
    the forward pass's own peak at the throughput batch) with how it was read, and MACs per image
    (counted on `macs_model` when given, e.g. the float graph an int8 or exported model was made from)."""
    if isinstance(model, nn.Module):
        model.eval()
    example = example[:1]
    peak_mb, memory_kind = None, None
    with torch.no_grad():
        if memory:
            x = batch_like(example, throughput_batch)
            extra_mb, memory_kind = activation_peak_mb(model, x, device)
            own = tensor_bytes(model) if isinstance(model, nn.Module) else 0
            peak_mb = extra_mb + (own + x.numel() * x.element_size()) / 2**20
        counted = count_macs(macs_model or model, example) if macs else None
    return {"peak_memory_mb": peak_mb, "memory_kind": memory_kind, "macs": counted}


def benchmark(model: Callable, example: torch.Tensor, device: torch.device | str, *, repeats: int = 50,
              warmup: int = 10, throughput_batch: int = 256, throughput_repeats: int = 20,
              batch_sizes: tuple[int, ...] | list[int] = (1, 16, 256), rounds: int = 5, timer: str = "auto",
              memory: bool = True, macs: bool = True, macs_model: Callable | None = None) -> dict:
    """Measure one `model` on `device` with copies of `example` (one image, already in the model's
    input dtype and memory format, on the device): `time_models` for one model plus `static_figures`.
    To compare models, time them together with `time_models` instead."""
    device = torch.device(device)
    events = uses_events(timer, device)
    (timing,) = time_models([model], example, repeats=repeats, warmup=warmup, throughput_batch=throughput_batch,
                            throughput_repeats=throughput_repeats, batch_sizes=batch_sizes, rounds=rounds,
                            use_events=events)
    return {**timing, **static_figures(model, example, device, throughput_batch=throughput_batch, memory=memory,
                                       macs=macs, macs_model=macs_model)}
