"""Measure the machine, not other people: the CPU budget of a run and who else used the CPU.

Two things make CPU figures lie on a shared machine. A run that starts more threads and loader
workers than it has cores competes with itself; and other people's processes take cores from
the timed steps. So a run

* plans its CPU use from the cores it may use (affinity, the cgroup CPU quota, and the share the
  scheduler gives its slot in OMP_NUM_THREADS): loader workers first, intra-op threads for the
  rest, the two together never more than the budget;
* records the host's load and how much CPU *other* processes took on its cores while it trained,
  and calls the measurement disturbed beyond OTHERS_SHARE.

Standard library only: the worker plans its threads before torch is imported.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

OTHERS_SHARE = 0.10   # others may take this share of the run's own cores before a run is "disturbed"
CGROUP_ROOT = Path("/sys/fs/cgroup")


# -- the cores a process may use ----------------------------------------------------------------------
def _cgroup_dirs(kind: str, proc_cgroup: str, root: Path) -> list[Path]:
    """The process's cgroup folders for controller `kind`, innermost first (v2 and v1 layouts)."""
    dirs = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        base = root if controllers == "" else (root / kind if kind in controllers.split(",") else None)
        if base is None:
            continue
        p = Path(path.strip() or "/")
        for d in [p, *p.parents]:
            dirs.append(base / str(d).lstrip("/"))
    return dirs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_quota(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> float | None:
    """Cores the cgroup CPU quota allows (the tightest of the hierarchy), or None without a quota.
    Reads cgroup v2 `cpu.max` ("200000 100000") or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`."""
    text = proc_cgroup if proc_cgroup is not None else (_read(Path("/proc/self/cgroup")) or "")
    quotas = []
    for d in _cgroup_dirs("cpu", text, root):
        v2 = _read(d / "cpu.max")
        if v2:
            quota, _, period = v2.partition(" ")
            if quota != "max" and period:
                quotas.append(int(quota) / int(period))
            continue
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def cgroup_memory_limit_mb(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup memory limit in MB (the tightest of the hierarchy), or None without one.
    Reads cgroup v2 `memory.max` or v1 `memory.limit_in_bytes` (values near 2**63 mean no limit)."""
    text = proc_cgroup if proc_cgroup is not None else (_read(Path("/proc/self/cgroup")) or "")
    limits = []
    for d in _cgroup_dirs("memory", text, root):
        value = _read(d / "memory.max") or _read(d / "memory.limit_in_bytes")
        if value and value.isdigit() and int(value) < 2**60:
            limits.append(int(value) / 2**20)
    return min(limits) if limits else None


def affinity_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_budget(environ=None) -> tuple[int, str]:
    """(cores this process may use, what set that number): the smallest of its CPU affinity, the
    cgroup CPU quota (rounded down, at least 1) and OMP_NUM_THREADS when set (the scheduler sets it
    to its slot's share; a person may set it too)."""
    environ = os.environ if environ is None else environ
    limits = [(len(affinity_cpus()), "CPU affinity")]
    quota = cgroup_cpu_quota()
    if quota is not None:
        limits.append((max(1, math.floor(quota)), f"cgroup CPU quota ({quota:g} cores)"))
    omp = environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) >= 1:
        limits.append((int(omp), "OMP_NUM_THREADS"))
    return min(limits, key=lambda item: item[0])


# -- the plan: loader workers first, intra-op threads for the rest ------------------------------------
@dataclass
class ThreadPlan:
    cores: int                    # the budget: cores this run may use
    cores_source: str             # what set it (affinity, cgroup quota, OMP_NUM_THREADS)
    loader_workers: int           # DataLoader worker processes of the training pipeline
    requested_workers: int        # what the config asked for
    intra_op_threads: int         # torch.set_num_threads
    interop_threads: int | None = None   # torch's inter-op pool (filled in once torch is loaded)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def note(self) -> str | None:
        """Why the loader got fewer workers than asked for, or None."""
        if self.loader_workers >= self.requested_workers:
            return None
        return (f"DataLoader workers {self.requested_workers} -> {self.loader_workers}: with "
                f"{self.intra_op_threads} intra-op thread(s) they fill the {self.cores} core(s) this run may use "
                f"({self.cores_source}); more would compete with the training threads")


def plan_threads(cores: int, pipeline: str, requested_workers: int, cores_source: str = "given") -> ThreadPlan:
    """Split `cores` between DataLoader workers (the cpu pipeline only) and intra-op threads.

    Workers come first because a starved loader stalls every step, but at least one core stays
    with the training threads: workers = min(asked, cores - 1), threads = cores - workers."""
    cores = max(1, int(cores))
    asked = max(0, int(requested_workers)) if pipeline == "cpu" else 0
    workers = min(asked, cores - 1)
    return ThreadPlan(cores, cores_source, workers, asked, cores - workers)


def plan_for(cfg, environ=None) -> ThreadPlan:
    cores, source = cpu_budget(environ)
    return plan_threads(cores, cfg.pipeline, cfg.num_workers, source)


def apply_plan(plan: ThreadPlan) -> ThreadPlan:
    """Set torch's intra-op threads to the plan's and record the inter-op pool's size."""
    import torch
    torch.set_num_threads(plan.intra_op_threads)
    plan.interop_threads = torch.get_num_interop_threads()
    return plan


# -- who used the CPU while we trained ------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_busy_seconds(cpus: list[int]) -> float | None:
    """Busy time (user, nice, system, irq, softirq, steal) of the listed CPUs since boot (s)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:9]]
            busy += values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    return busy / TICK


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()   # fields from "state" on (the name may hold spaces)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (loader workers, their children)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        fields = _stat_fields(entry)
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_tree_cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time of this process (all threads, and children it has reaped) plus its live descendants."""
    pid = pid or os.getpid()
    own = _stat_fields(pid)
    if own is None:
        return None
    # utime, stime, cutime, cstime are fields 14..17 of /proc/PID/stat (11..14 after the state)
    total = sum(int(v) for v in own[11:15])
    for child in descendants(pid):
        fields = _stat_fields(child)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


@dataclass
class CpuSnapshot:
    t: float                      # monotonic seconds
    busy_s: float | None          # busy time of the run's CPUs since boot
    tree_s: float | None          # this process tree's CPU time
    load1: float | None           # 1-minute load average

    @classmethod
    def take(cls, cpus: list[int]) -> "CpuSnapshot":
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return cls(time.monotonic(), _cpu_busy_seconds(cpus), process_tree_cpu_seconds(), load)


def host_record(before: CpuSnapshot, after: CpuSnapshot, cpus: int, budget: int | None = None,
                plan: ThreadPlan | None = None, threshold: float = OTHERS_SHARE,
                during: str = "while it trained") -> dict:
    """What the host did while the run trained, and whether that disturbed the measurement.

    Other processes' CPU time on the run's `cpus` CPUs is the CPUs' busy time minus this process
    tree's. A run that may use only `budget` of them leaves the rest to others; the run is
    `disturbed` when others kept busy more than those free cores plus `threshold` of its own:
    others_cpu_s / wall > (cpus - budget) + threshold x budget."""
    budget = min(cpus, budget or cpus)
    wall = after.t - before.t
    out = {"cpus": cpus, "cores": budget, "wall_s": wall, "load1_before": before.load1, "load1_after": after.load1,
           "own_cpu_s": None, "others_cpu_s": None, "others_share": None, "others_share_of_run_cores": None,
           "threshold": threshold, "disturbed": False, "reason": None, "threads": plan.to_dict() if plan else None}
    if None in (before.busy_s, after.busy_s, before.tree_s, after.tree_s) or wall <= 0:
        out["reason"] = "the host's CPU counters (/proc/stat) could not be read: disturbance not measured"
        return out
    own = max(0.0, after.tree_s - before.tree_s)
    others = max(0.0, (after.busy_s - before.busy_s) - own)
    on_run_cores = max(0.0, others / wall - (cpus - budget)) / budget
    out.update(own_cpu_s=own, others_cpu_s=others, others_share=others / (wall * cpus),
               others_share_of_run_cores=on_run_cores)
    if on_run_cores > threshold:
        out["disturbed"] = True
        out["reason"] = (f"other processes took {100 * on_run_cores:.0f} % of the {budget} core(s) this run may use "
                         f"{during} (more than {100 * threshold:.0f} %): its speed figures are probably low; "
                         "run it again on a quieter machine")
    return out


class HostWatch:
    """Snapshots of the run's CPUs around a phase: `start()` before it, `finish()` after."""

    def __init__(self, plan: ThreadPlan | None = None, during: str = "while it trained"):
        self.plan, self.during = plan, during
        self.cpus = affinity_cpus()
        self.before: CpuSnapshot | None = None

    def start(self) -> "HostWatch":
        self.before = CpuSnapshot.take(self.cpus)
        return self

    def finish(self) -> dict:
        return host_record(self.before, CpuSnapshot.take(self.cpus), len(self.cpus),
                           self.plan.cores if self.plan else None, self.plan, during=self.during)
