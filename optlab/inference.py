"""Inference benchmark: latency at batch 1, throughput at a large batch, a batch-size sweep,
peak memory and multiply-accumulates, for any callable model on the device it targets.

Timing is honest in the same way as training: warm-up calls first (cuDNN autotunes once per
shape, lazy initialisation happens on the first call), then each timed call bracketed by CUDA
events on a GPU (read back after the loop) or by the host clock where the work is synchronous
(the CPU, ONNX Runtime). MACs are counted, never used in place of a measured time.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from optlab.measure import percentile

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


def benchmark(model: Callable, example: torch.Tensor, device: torch.device | str, *, repeats: int = 50,
              warmup: int = 10, throughput_batch: int = 256, throughput_repeats: int = 10,
              batch_sizes: tuple[int, ...] | list[int] = (1, 16, 256), timer: str = "auto",
              memory: bool = True, macs: bool = True, macs_model: Callable | None = None) -> dict:
    """Measure `model` on `device` with copies of `example` (one image, already in the model's
    input dtype and memory format, on the device).

    Returns latency_ms_p50/p90 at batch 1 over `repeats` calls, throughput_images_per_s over
    `throughput_repeats` calls at `throughput_batch`, `batch_sweep` (median latency and images/s
    at each of `batch_sizes`), peak_memory_mb (weights + input + the forward pass's own peak at
    the throughput batch) with memory_kind, macs per image (counted on `macs_model` when given,
    e.g. the float graph an int8 or exported model was made from) and how it was timed.
    Larger batches get up to 3 warm-up calls: kernels are chosen on the first call per shape.
    """
    device = torch.device(device)
    if timer not in TIMERS:
        raise ValueError(f"timer {timer!r} is not one of: {', '.join(TIMERS)}")
    if repeats < 1 or throughput_repeats < 1 or throughput_batch < 1 or warmup < 0:
        raise ValueError("repeats, throughput_repeats and throughput_batch must be >= 1; warmup >= 0")
    use_events = timer == "cuda_events" or (timer == "auto" and device.type == "cuda")
    if isinstance(model, nn.Module):
        model.eval()
    example = example[:1]
    big_warmup = min(max(warmup, 1), 3)
    with torch.no_grad():
        latency = time_calls(model, example, repeats, warmup, use_events)
        sweep = {1: latency}
        for n in sorted(set(batch_sizes) | {throughput_batch}):
            if n not in sweep:
                sweep[n] = time_calls(model, batch_like(example, n), throughput_repeats, big_warmup, use_events)
        peak_mb, memory_kind = None, None
        if memory:
            x = batch_like(example, throughput_batch)
            extra_mb, memory_kind = activation_peak_mb(model, x, device)
            own = tensor_bytes(model) if isinstance(model, nn.Module) else 0
            peak_mb = extra_mb + (own + x.numel() * x.element_size()) / 2**20
        counted = count_macs(macs_model or model, example) if macs else None
    busy = sweep[throughput_batch]
    return {
        "latency_ms_p50": percentile(latency, 50),
        "latency_ms_p90": percentile(latency, 90),
        "latency_repeats": repeats,
        "throughput_images_per_s": throughput_batch * len(busy) / (sum(busy) / 1000),
        "throughput_batch": throughput_batch,
        "throughput_repeats": len(busy),
        "batch_sweep": [{"batch": n, "latency_ms_p50": percentile(t, 50), "images_per_s": n * len(t) / (sum(t) / 1000)}
                        for n, t in sorted(sweep.items())],
        "peak_memory_mb": peak_mb,
        "memory_kind": memory_kind,
        "macs": counted,
        "timer": "cuda_events" if use_events else "perf_counter",
        "warmup": warmup,
        "threads": torch.get_num_threads(),
    }
