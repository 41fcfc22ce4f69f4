"""Profiled windows: a few training steps after warm-up recorded with torch.profiler and written
where TensorBoard's torch-tb-profiler plugin reads them (OPTLAB_HOME/runs/<id>/tb/<name>/).

Steps outside the window run unprofiled; the loop leaves the window's steps (and the one after
it, which pays for writing the trace) out of the timing figures.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler


class ProfileWindow:
    def __init__(self, trace_dir: Path, device: torch.device, *, first_step: int, warmup: int = 2,
                 active: int = 3, worker_name: str = "train"):
        self.first, self.warmup, self.active = first_step, warmup, active
        self.trace_dir = Path(trace_dir)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.profiler_result = None
        handler = tensorboard_trace_handler(str(self.trace_dir), worker_name=worker_name, use_gzip=True)

        def on_ready(prof):
            handler(prof)
            self.profiler_result = prof   # kept for the in-app summary
        self.prof = profile(activities=activities, record_shapes=True, profile_memory=True,
                            schedule=schedule(wait=first_step, warmup=warmup, active=active, repeat=1),
                            on_trace_ready=on_ready)
        self.prof.start()
        self.open = True

    def step(self, step: int) -> None:
        if not self.open:
            return
        self.prof.step()
        if step >= self.first + self.warmup + self.active:
            self.close()

    def covers(self, step: int) -> bool:
        return self.first <= step <= self.first + self.warmup + self.active

    def close(self) -> None:
        if self.open:
            self.open = False
            self.prof.stop()

    @property
    def trace_files(self) -> list[Path]:
        return sorted(self.trace_dir.glob("*.pt.trace.json*"))
