"""Memory figures with one definition each, measured per phase.

A run reports up to four figures, each with its label stored beside it (LABELS), so a page never
shows two different numbers under the same name:

* process peak — the training process's largest resident set during the phase;
* process tree peak — the training process plus its DataLoader workers, each at its own peak
  (pages shared after fork are counted in every process, as `ps` and the telemetry chart count
  them);
* device peak allocated / reserved — the CUDA caching allocator's peaks during the phase.

`ru_maxrss` only grows, so an earlier phase (the batch-size search, a larger trial batch) would
leak into every later figure. On Linux a phase starts by resetting the kernel's high-water mark
(`VmHWM`, by writing "5" to /proc/self/clear_refs); where that is not allowed the figure is the
peak since the process started, and `process_peak_method` says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from pathlib import Path

LABELS = {
    "process_peak_mb": "process peak RSS: the training process's largest resident memory during training "
                       "(data set, model, Python and PyTorch included; loader workers not)",
    "process_tree_peak_mb": "process tree peak RSS: the training process plus its DataLoader workers, each at its "
                            "own peak during training (shared pages counted in each, as the telemetry chart does)",
    "device_peak_allocated_mb": "GPU peak allocated: the most tensor memory the CUDA caching allocator handed out "
                                "during training",
    "device_peak_reserved_mb": "GPU peak reserved: the most memory the CUDA caching allocator held from the driver "
                               "during training (allocated plus its cache)",
}
SHORT = {"process_peak_mb": "process peak RSS", "process_tree_peak_mb": "process tree peak RSS",
         "device_peak_allocated_mb": "GPU peak allocated", "device_peak_reserved_mb": "GPU peak reserved"}


def _status_kb(field: str, pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_process_peak() -> bool:
    """Start a new high-water mark of this process's resident set; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def release_freed_memory() -> None:
    """Hand memory freed by Python and PyTorch back to the system (glibc keeps it otherwise), so a
    phase that follows a larger one starts from what is really in use."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError, TypeError):   # not glibc
        pass


def process_peak_mb(reset_done: bool) -> tuple[float, str]:
    """(peak resident MB of this process, how it was read)."""
    hwm = _status_kb("VmHWM")
    if reset_done and hwm is not None:
        return hwm / 1024, "VmHWM, reset at the start of the phase"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss: peak since the process started"


def children_peak_mb(pid: int | None = None) -> float:
    """Sum of the peak resident sets of this process's live descendants (loader workers)."""
    from optlab.hostload import descendants
    total = 0
    for child in descendants(pid or os.getpid()):
        total += _status_kb("VmHWM", child) or 0
    return total / 1024


class PhasePeak:
    """Peak memory over one phase: `start()` resets the peaks, `figures()` reads them.

        peak = PhasePeak(device).start()
        ...            # the phase
        memory = peak.figures()
    """

    def __init__(self, device):
        self.device = device
        self.reset_done = False

    def start(self) -> "PhasePeak":
        release_freed_memory()
        self.reset_done = reset_process_peak()
        if self.device.type == "cuda":
            import torch
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def process_peak_mb(self) -> float:
        return process_peak_mb(self.reset_done)[0]

    def figures(self) -> dict:
        """Every figure of the phase with its label (None where it does not apply)."""
        own, method = process_peak_mb(self.reset_done)
        out = {"process_peak_mb": own, "process_tree_peak_mb": own + children_peak_mb(),
               "device_peak_allocated_mb": None, "device_peak_reserved_mb": None,
               "process_peak_method": method}
        if self.device.type == "cuda":
            import torch
            out["device_peak_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["device_peak_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        out["labels"] = {k: LABELS[k] for k in LABELS if out[k] is not None}
        return out


def headline_memory(summary: dict) -> tuple[float | None, str]:
    """The run's headline memory figure and its label: the GPU allocator's peak on a GPU, the
    process peak on the CPU; runs stored before the figures had labels keep their old meaning."""
    memory = summary.get("memory") or {}
    key = "device_peak_allocated_mb" if memory.get("device_peak_allocated_mb") is not None else "process_peak_mb"
    if memory.get(key) is not None:
        return memory[key], memory.get("labels", {}).get(key, LABELS[key])
    old = ("GPU allocator peak" if summary.get("memory_kind") == "cuda_allocator"
           else "peak resident memory of the process since it started (recorded before figures had labels)")
    return summary.get("peak_memory_mb"), old


def memory_limit_mb() -> tuple[float | None, str]:
    """(memory this process may use in MB, what set it): the host's MemTotal or the cgroup
    memory limit, whichever is lower; None where neither can be read."""
    from optlab.hostload import cgroup_memory_limit_mb
    limits = []
    try:
        with open("/proc/meminfo") as f:
            limits.append((int(f.readline().split()[1]) / 1024, "host MemTotal"))
    except (OSError, ValueError, IndexError):
        pass
    cgroup = cgroup_memory_limit_mb()
    if cgroup is not None:
        limits.append((cgroup, "cgroup memory limit"))
    if not limits:
        return None, "unknown"
    return min(limits, key=lambda item: item[0])
