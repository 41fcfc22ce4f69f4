"""Honest timing and memory readings.

Device work is asynchronous: a step is timed by marks on the device timeline (CUDA events on a
GPU; on the CPU, where work is synchronous, the host clock), read back only after the epoch.
Nothing here synchronises inside a timed step.
"""
from __future__ import annotations

import resource
import statistics
import time

import torch


class DeviceClock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000.0

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class LatestLoss:
    """The newest loss the device has finished, read without waiting for it (for progress only)."""

    def __init__(self, device: torch.device, every_s: float = 0.5):
        self.cuda = device.type == "cuda"
        self.every_s, self.last_offer, self.value = every_s, 0.0, float("nan")
        self.pending = False
        if self.cuda:
            self.buffer = torch.zeros((), dtype=torch.float32, pin_memory=True)
            self.ready = torch.cuda.Event()

    def offer(self, loss: torch.Tensor) -> None:
        now = time.perf_counter()
        if now - self.last_offer < self.every_s:
            return
        self.last_offer = now
        if not self.cuda:
            self.value = float(loss.detach())
            return
        if self.pending and not self.ready.query():
            return                   # the previous copy has not landed yet; never wait for it
        if self.pending:
            self.value = float(self.buffer)
        self.buffer.copy_(loss.detach().float(), non_blocking=True)
        self.ready.record()
        self.pending = True


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak memory since the last reset: the CUDA caching allocator's view on a GPU; on the CPU
    the process's peak resident set (which also holds the data set and Python itself)."""
    if device.type == "cuda":
        return {"kind": "cuda_allocator",
                "allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}
    return {"kind": "host_rss", "allocated_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "reserved_mb": None}
