"""Memory figures with one definition each, measured per phase.

A run reports up to four figures, each with its label stored beside it (LABELS), so a page never
shows two different numbers under the same name:

* process peak — the training process's largest resident set during the phase;
* process tree peak — the largest summed resident set of the training process and its
  DataLoader workers, sampled during the phase the way the telemetry chart samples it (pages
  shared after fork count in every process, as `ps` counts them);
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
import threading
import weakref
from pathlib import Path

TREE_EVERY_S = 0.25    # sampling period of the process tree's resident memory

LABELS = {
    "process_peak_mb": "process peak RSS: the training process's largest resident memory during training "
                       "(data set, model, Python and PyTorch included; loader workers not)",
    "process_tree_peak_mb": "process tree peak RSS: the training process plus its DataLoader workers, the largest "
                            "sum of their resident memory sampled every 0.25 s during training, as the telemetry "
                            "chart sums it (shared pages counted in each process; never less than the process peak)",
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


def _children(pid: int | str) -> list[int]:
    """Direct children of `pid`, from every thread's /proc/PID/task/TID/children."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):
            pass
    return found


def tree_rss_mb(pid: int | None = None) -> float:
    """Summed resident memory of `pid` (default: this process) and all its descendants, now."""
    todo, total = [pid or os.getpid()], 0
    while todo:
        p = todo.pop()
        total += _status_kb("VmRSS", p) or 0
        todo += _children(p)
    return total / 1024


class PhasePeak:
    """Peak memory over one phase: `start()` resets the peaks, `figures()` reads them.

        peak = PhasePeak(device).start()
        ...            # the phase
        memory = peak.figures()
    """

    def __init__(self, device, tree: bool = False):
        self.device = device
        self.reset_done = False
        self.tree = tree                  # sample the process tree (a thread; training only)
        self.tree_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PhasePeak":
        release_freed_memory()
        self.reset_done = reset_process_peak()
        if self.device.type == "cuda":
            import torch
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.tree:
            # The thread holds only a weak reference: a phase that ends in an exception (out of
            # memory, a cancel) never reads its figures, and its sampler then stops by itself.
            self._thread = threading.Thread(target=_sample_tree, args=(weakref.ref(self), self._stop),
                                            name="memory-tree", daemon=True)
            self._thread.start()
        return self

    def figures(self) -> dict:
        """Every figure of the phase with its label (None where it does not apply)."""
        own, method = process_peak_mb(self.reset_done)
        tree = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            tree = max(self.tree_peak_mb, tree_rss_mb(), own)
        out = {"process_peak_mb": own, "process_tree_peak_mb": tree,
               "device_peak_allocated_mb": None, "device_peak_reserved_mb": None,
               "process_peak_method": method}
        if self.device.type == "cuda":
            import torch
            out["device_peak_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["device_peak_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        out["labels"] = {k: LABELS[k] for k in LABELS if out[k] is not None}
        return out


def _sample_tree(ref, stop: threading.Event) -> None:
    while not stop.is_set():
        rss = tree_rss_mb()
        peak = ref()
        if peak is None:
            return
        peak.tree_peak_mb = max(peak.tree_peak_mb, rss)
        del peak
        stop.wait(TREE_EVERY_S)


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
