"""The scheduler: hands queued runs to free slots and watches the worker processes.

One scheduler per OPTLAB_HOME (a lock file says which process it is); one slot per visible GPU
by default, one on a CPU-only machine. Each run gets its own process,
`python -m optlab.worker RUN_ID`, in a new session so that the whole process group can be
stopped, pinned to its slot's GPU. Order is fair: FIFO within a submitter, round-robin across
submitters (Store.fair_queue). A worker that dies leaves its run failed with the exit code or
signal and its last log lines; a cancel is a SIGTERM to the group, then SIGKILL after a grace
period. When a scheduler starts, runs left running by a dead worker become interrupted.
"""
from __future__ import annotations

import atexit
import fcntl
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from optlab import fairuse
from optlab.store import Run, Store
from optlab.worker import log_tail

log = logging.getLogger("optlab.scheduler")

GRACE_S = 10.0    # SIGTERM, then this long, then SIGKILL
STALE_S = 30.0    # a worker whose heartbeat is older than this is gone
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class SchedulerBusy(RuntimeError):
    """Another scheduler already hands out this store's runs."""


# -- slots ----------------------------------------------------------------------------------------------
def _gpu_count() -> int:
    if "torch" in sys.modules:   # already loaded: its count honours CUDA_VISIBLE_DEVICES
        import torch
        return torch.cuda.device_count()
    try:   # without loading torch (seconds) for a standalone `python -m optlab queue`
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:
        return 0


def visible_gpus() -> list[str]:
    """The GPUs this server may use, as values for a worker's CUDA_VISIBLE_DEVICES."""
    count = _gpu_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(count)]
    # CUDA stops reading the list at the first invalid entry, e.g. "-1"
    listed = list(itertools.takewhile(lambda x: x and not x.startswith("-"), (x.strip() for x in env.split(","))))
    return listed[:count]


def default_slots() -> int:
    """One slot per visible GPU; one on a CPU-only machine."""
    return max(1, len(visible_gpus()))


# -- processes ---------------------------------------------------------------------------------------
def describe_exit(returncode: int | None) -> str:
    """'exited with code 1', 'was killed by SIGKILL', ... from a Popen return code."""
    if returncode is None:
        return "ended (exit status unknown: it was not started by this scheduler)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (by a person, or by the kernel when memory ran out)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


def pid_alive(pid: int | None) -> bool:
    """Whether a process runs (reaping our own finished child; a zombie counts as gone)."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False              # our child, just reaped
    except ChildProcessError:
        pass                          # not our child: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal_group(pid: int, sig: int) -> None:
    """Signal the worker's process group (its DataLoader workers too); the pid alone if the
    worker is not a group leader, so that we never signal a group we belong to."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Job:
    run_id: int
    pid: int
    slot: int
    proc: subprocess.Popen | None = None   # None: adopted from an earlier scheduler
    log: Path | None = None
    term_at: float | None = None
    killed: bool = False
    stop_reason: str | None = None         # why the scheduler stopped it (over the room's budget)

    def poll(self) -> tuple[bool, int | None]:
        """(ended, return code); the code is unknown for adopted workers."""
        if self.proc is not None:
            rc = self.proc.poll()
            return rc is not None, rc
        return not pid_alive(self.pid), None


class SchedulerLock:
    """An flock on OPTLAB_HOME/scheduler.lock holding the owner's pid. The kernel drops it when
    the process dies, so a crashed scheduler never blocks the next one."""

    def __init__(self, home: Path):
        self.path = Path(home) / "scheduler.lock"
        self._file = None

    def acquire(self) -> tuple[bool, str]:
        """(acquired, pid of the holder)."""
        if self._file is not None:
            return True, str(os.getpid())
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            return False, holder
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return True, str(os.getpid())

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def claim_next(store: Store, worker_pid: int | None = None) -> Run | None:
    """Claim the next run in fair order; None when nothing is queued. Atomic: a run that someone
    else claimed (or cancelled) first is skipped, so every run is handed out at most once."""
    while True:
        queue = store.fair_queue()
        if not queue:
            return None
        for run in queue:
            if store.claim(run.id, worker_pid):
                return store.get(run.id)


def cancel(store: Store, run_id: int) -> str:
    """Cancel a queued or running run. A queued run is cancelled at once; a running run is asked
    to stop (its worker polls the flag; the scheduler sends SIGTERM, then SIGKILL) and ends
    cancelled. Returns the status the run now has or is heading to: 'cancelled', or the finished
    status it already had ('done', 'failed', ...). Raises LookupError for an unknown id."""
    status = store.request_cancel(run_id)
    if status is None:
        raise LookupError(f"no run #{run_id}")
    if status == "running":
        store.add_event(run_id, "cancel requested")
        return "cancelled"
    return status


# -- the scheduler ----------------------------------------------------------------------------------
class Scheduler:
    def __init__(self, store: Store, slots: int | None = None, poll_s: float = 0.5, *,
                 grace_s: float = GRACE_S, stale_s: float = STALE_S):
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be a whole number >= 1, not {slots!r}")
        self.store = store
        self.gpus = visible_gpus()
        self.slots = slots or max(1, len(self.gpus))
        self.poll_s, self.grace_s, self.stale_s = poll_s, grace_s, stale_s
        self.jobs: dict[int, Job] = {}
        self.active = False            # True while this scheduler holds the lock and hands out runs
        self.message = "not started"
        self._lock = SchedulerLock(store.home)
        self._tick_lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopping = False
        self._recovered = False

    def __repr__(self) -> str:
        return f"Scheduler({self.store.home}, slots={self.slots}, active={self.active}, jobs={sorted(self.jobs)})"

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        """Hand out runs from a daemon thread (idempotent)."""
        with self._tick_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="optlab-scheduler", daemon=True)
                self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.poll_s)

    def request_stop(self) -> None:
        """Ask the thread or run_until_idle to return at the next poll (safe in a signal handler)."""
        self._stop.set()

    def stop(self, kill: bool = False) -> None:
        """Stop handing out runs. Running workers go on (a later scheduler adopts them) unless
        `kill`: then each gets SIGTERM, SIGKILL after the grace period, and its run ends interrupted."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self.poll_s))
        with self._tick_lock:
            if kill:
                self._stop_all()
            self._release()

    def run_until_idle(self, timeout_s: float | None = None) -> bool:
        """Hand out runs in the foreground until nothing is queued and no worker runs.
        True when idle, False on timeout or request_stop(). Raises SchedulerBusy when another
        scheduler holds this store."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        background = self._thread is not None and self._thread.is_alive()
        if not background:
            self._stop.clear()
        try:
            while True:
                if not background:
                    self.tick()
                    if not self.active:
                        raise SchedulerBusy(self.message)
                if self.idle():
                    return True
                if deadline is not None and time.monotonic() > deadline:
                    return False
                if self._stop.wait(self.poll_s):
                    return False
        finally:
            if not background:
                with self._tick_lock:
                    if not self.jobs:
                        self._release()

    def run_forever(self) -> None:
        """Hand out runs in the foreground until request_stop(). Raises SchedulerBusy when
        another scheduler holds this store."""
        while not self._stop.is_set():
            self.tick()
            if not self.active:
                raise SchedulerBusy(self.message)
            self._stop.wait(self.poll_s)

    def idle(self) -> bool:
        with self._tick_lock:
            return not self.jobs and not self.store.list(status="queued", limit=1)

    # -- one round ----------------------------------------------------------------------------------
    def tick(self) -> None:
        """One round: take the lock if free, recover, reap, enforce cancels, fill free slots."""
        with self._tick_lock:
            try:
                if not self._acquire():
                    return
                if not self._recovered:
                    self._recover()
                    self._recovered = True
                self._reap()
                self._enforce_budget()
                self._enforce_cancels()
                if fairuse.paused(self.store) is None:
                    self._fill()
            except Exception:   # a busy database or a failed spawn must not end the scheduler
                log.exception("scheduler round failed; trying again")

    def _acquire(self) -> bool:
        if self.active:
            return True
        ok, holder = self._lock.acquire()
        if ok:
            self.active, self._recovered = True, False
            where = ", ".join(f"GPU {g}" for g in self.gpus) or "the CPU"
            self.message = f"handing out runs from {self.store.home} to {self.slots} slot(s) on {where}"
            log.info("scheduler pid %d: %s", os.getpid(), self.message)
        else:
            who = f"pid {holder}" + (", this process" if holder == str(os.getpid()) else "")
            message = (f"another scheduler ({who}) already hands out the runs of {self.store.home}; "
                       "this one hands out nothing")
            if message != self.message:
                log.warning(message)
            self.message = message
        return ok

    def _release(self) -> None:
        if self.active:
            self._lock.release()
            self.active = False
            self.message = "stopped"

    def _recover(self) -> None:
        """Runs left running by an earlier scheduler: adopt those whose worker is alive and
        beating, mark the rest interrupted. Runs executed in-process (`optlab run`) have no
        heartbeat and are not ours to judge."""
        for run in self.store.list(status="running", newest_first=False):
            if run.id in self.jobs or (run.heartbeat_at is None and run.worker_pid is None):
                continue
            alive = pid_alive(run.worker_pid)
            fresh = run.heartbeat_at is not None and time.time() - run.heartbeat_at < self.stale_s
            if alive and fresh:
                self.jobs[run.id] = Job(run.id, run.worker_pid, self._free_slot())
                self.store.add_event(run.id, f"scheduler pid {os.getpid()} adopted worker pid {run.worker_pid}")
                log.info("run #%d: adopted its live worker pid %d", run.id, run.worker_pid)
                continue
            why = ("its worker never started" if not run.worker_pid else
                   f"its worker (pid {run.worker_pid}) was gone" if not alive else
                   f"its worker (pid {run.worker_pid}) sent no heartbeat for {self.stale_s:.0f} s")
            self._end(run.id, "cancelled" if run.cancel_requested else "interrupted",
                      f"{why} when the scheduler started", self._log_path(run.id))

    def _reap(self) -> None:
        for job in list(self.jobs.values()):
            ended, rc = job.poll()
            if ended:
                self._settle(job, rc)
            elif job.proc is None:
                run = self.store.get(job.run_id)
                if run is None:
                    self.jobs.pop(job.run_id, None)
                elif run.status == "running" and time.time() - (run.heartbeat_at or 0) > self.stale_s:
                    self.jobs.pop(job.run_id, None)
                    self._end(job.run_id, "interrupted",
                              f"its worker (pid {job.pid}) sent no heartbeat for {self.stale_s:.0f} s",
                              self._log_path(job.run_id))

    def _settle(self, job: Job, returncode: int | None) -> None:
        """The worker process ended: if it left its run running, say why the run ended."""
        self.jobs.pop(job.run_id, None)
        if job.proc is not None:   # we started it as a group leader: end what it left behind
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        run = self.store.get(job.run_id)
        if run is None:
            return
        how = describe_exit(returncode)
        if job.stop_reason and run.status == "cancelled":     # the worker ended it: keep our reason
            self.store.update(job.run_id, error=job.stop_reason)
        elif job.stop_reason and run.status == "running":
            self._end(job.run_id, "cancelled", f"{job.stop_reason} (the worker {how})", self._log_path(job.run_id))
            return
        if run.status != "running":
            tail = log_tail(self._log_path(job.run_id))
            if tail:
                self.store.update(job.run_id, log_tail=tail)
            log.info("run #%d %s (worker %s)", job.run_id, run.status, how)
            return
        if run.cancel_requested:
            status, error = "cancelled", f"cancelled on request (the worker {how})"
        elif self._stopping:
            status, error = "interrupted", f"the scheduler stopped (the worker {how})"
        else:
            status, error = "failed", f"worker {how}"
        self._end(job.run_id, status, error, self._log_path(job.run_id), with_lines=status == "failed")

    def _end(self, run_id: int, status: str, error: str, log_path: Path, with_lines: bool = False) -> None:
        """running -> status with the reason and the log's last lines (unless the run ended meanwhile)."""
        tail = log_tail(log_path)
        if with_lines and tail:
            error += "; last log lines:\n" + "\n".join(tail.splitlines()[-5:])
        if self.store.finish_if_running(run_id, status, error=error, log_tail=tail):
            self.store.add_event(run_id, error, level="error" if status == "failed" else "warning")
            log.warning("run #%d %s: %s", run_id, status, error.splitlines()[0])

    def _enforce_budget(self) -> None:
        """Stop a run that has run longer than the room's budget per run (OPTLAB_RUN_BUDGET_S)."""
        budget = fairuse.Limits.from_env().budget_s
        if not budget or not self.jobs:
            return
        for run in self.store.list(ids=list(self.jobs), status="running"):
            job = self.jobs.get(run.id)
            ran = time.time() - (run.started_at or time.time())
            if job is None or job.stop_reason or ran <= budget:
                continue
            job.stop_reason = (f"stopped after {ran:.0f} s: over this room's budget of {budget:.0f} s per run "
                               "(OPTLAB_RUN_BUDGET_S)")
            self.store.add_event(run.id, job.stop_reason, level="warning")
            self.store.request_cancel(run.id)

    def _enforce_cancels(self) -> None:
        if not self.jobs:
            return
        now = time.monotonic()
        for run in self.store.list(ids=list(self.jobs)):
            job = self.jobs.get(run.id)
            if job is None or not run.cancel_requested:
                continue
            if job.term_at is None:
                job.term_at = now
                _signal_group(job.pid, signal.SIGTERM)
                self.store.add_event(run.id, f"cancel: SIGTERM to worker group {job.pid}")
            elif not job.killed and now - job.term_at > self.grace_s:
                job.killed = True
                _signal_group(job.pid, signal.SIGKILL)
                self.store.add_event(run.id, f"cancel: no exit after {self.grace_s:.0f} s, SIGKILL to group {job.pid}",
                                     level="warning")

    def _fill(self) -> None:
        while len(self.jobs) < self.slots and not self._stopping and not self._stop.is_set():
            run = claim_next(self.store)
            if run is None:
                return
            self._spawn(run)

    def _free_slot(self) -> int:
        used = {j.slot for j in self.jobs.values()}
        return next((s for s in range(self.slots) if s not in used), -1)

    def _log_path(self, run_id: int) -> Path:
        return self.store.artifacts_dir(run_id, create=False) / "worker.log"

    def worker_env(self, slot: int) -> dict[str, str]:
        """The worker's environment: this store, this scheduler's pid (the worker stops if it
        dies), the slot's GPU, and a fair share of the CPU threads."""
        env = dict(os.environ)
        env["OPTLAB_HOME"] = str(self.store.home)
        env["OPTLAB_SCHEDULER_PID"] = str(os.getpid())
        env["PYTHONUNBUFFERED"] = "1"
        if Path(PACKAGE_ROOT).name not in ("site-packages", "dist-packages"):   # a checkout, not an install
            env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        if self.gpus and slot >= 0:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        if "OMP_NUM_THREADS" not in os.environ:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            env["OMP_NUM_THREADS"] = str(max(1, cpus // self.slots))
        return env

    def _spawn(self, run: Run) -> None:
        slot = self._free_slot()
        path = self._log_path(run.id)
        try:
            env = self.worker_env(slot)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "optlab.worker", str(run.id)], stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except Exception as e:   # the run is claimed: it must not stay running without a worker
            self._end(run.id, "failed", f"could not start a worker: {type(e).__name__}: {e}", path)
            return
        self.store.update(run.id, worker_pid=proc.pid)
        self.jobs[run.id] = Job(run.id, proc.pid, slot, proc, path)
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if self.gpus else "the CPU"
        self.store.add_event(run.id, f"worker pid {proc.pid} started on slot {slot} ({where}) by scheduler pid {os.getpid()}")
        log.info("run #%d (%s): worker pid %d on slot %d (%s)", run.id, run.user or "anonymous", proc.pid, slot, where)

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait up to the grace period, SIGKILL what is left; runs end interrupted."""
        self._stopping = True
        try:
            for job in self.jobs.values():
                _signal_group(job.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            while self.jobs and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.1)
            for job in list(self.jobs.values()):
                _signal_group(job.pid, signal.SIGKILL)
                if job.proc is not None:
                    try:
                        job.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        log.error("worker pid %d survived SIGKILL", job.pid)
            self._reap()
        finally:
            self._stopping = False


# -- one per process ----------------------------------------------------------------------------------
_SHARED: dict[Path, Scheduler] = {}
_SHARED_LOCK = threading.Lock()


def shared_scheduler(store: Store | None = None) -> Scheduler:
    """The process-wide, started scheduler for this store's OPTLAB_HOME (the app wraps it in
    st.cache_resource). OPTLAB_SLOTS overrides the slot count. If another process already
    schedules this store, this one hands out nothing and says so in `.message`."""
    store = store or Store()
    key = store.home.resolve()
    with _SHARED_LOCK:
        scheduler = _SHARED.get(key)
        if scheduler is None:
            slots = os.environ.get("OPTLAB_SLOTS")
            scheduler = _SHARED[key] = Scheduler(store, slots=int(slots) if slots else None)
            atexit.register(scheduler.stop, kill=True)
        return scheduler.start()
