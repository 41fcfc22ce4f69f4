"""The scheduler: hands queued runs to free slots and watches the processes that run them.

One scheduler per OPTLAB_HOME (an flock on the folder itself says which process it is); one slot
per visible GPU by default, one on a CPU-only machine. Each run gets its own process,
`python -m optlab.worker RUN_ID`, in a new session so that the whole process group can be
stopped, pinned to its slots' GPUs. A data-parallel run (`gpus` > 1) takes one slot per rank on
GPUs, every slot on a CPU-only machine (its ranks share the cores), all at once, never part of
them. Order is fair: FIFO within a submitter, round-robin across submitters (Store.fair_queue);
the run at the head of that order waits for all its slots and the runs behind it wait with it.
A worker that dies leaves its run failed with the exit code or signal and its last log lines; a
cancel is a SIGTERM to the group, then SIGKILL after a grace period.

When OPTLAB_RAY_ADDRESS names a Ray cluster, runs go to Ray instead (optlab.raycluster): each one a
Ray task that runs the same worker on a node; the cluster's resources decide where, and at most
OPTLAB_RAY_MAX_RUNNING (default: its GPUs, or CPUs) are in flight. A run on Ray is judged by its
heartbeat only: its pid is a pid on another node.

Every running run is watched, whoever runs it: this scheduler's workers, a worker started by
hand or by an earlier scheduler, a foreground `optlab run` (both adopted: they take their slots). A
process that is gone, or sends no heartbeat for STALE_S (stopped, hung), is ended and its run
failed with the reason; one stopped while the store's write lock is held is ended at once (it
may hold the lock), so that it cannot hold everyone else's writes. When a scheduler starts, runs whose process is gone
become interrupted.
"""
from __future__ import annotations

import atexit
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optlab import fairuse
from optlab.device import visible_gpus
from optlab.store import Run, Store, StoreError
from optlab.storeservice import FOLDER_KEPT, FOLDER_SHIPPED, THROUGH_SERVICE
from optlab.worker import log_tail

log = logging.getLogger("optlab.scheduler")

GRACE_S = 10.0    # SIGTERM, then this long, then SIGKILL
STALE_S = 30.0    # a run whose process sent no heartbeat for this long is ended
LOCK_PROBE_S = 1.0   # a write lock held this long while a run's process is stopped: that process holds it
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class SchedulerBusy(RuntimeError):
    """Another scheduler already hands out this store's runs."""


# -- slots ----------------------------------------------------------------------------------------------
def default_slots() -> int:
    """One slot per visible GPU; one on a CPU-only machine."""
    return max(1, len(visible_gpus()))


def run_gpus(config: dict) -> int:
    """A run's data-parallel ranks (a config stored before the knob existed has one)."""
    return int(config.get("gpus") or 1)


def slots_for(config: dict, slots: int, on_gpus: bool) -> int:
    """The slots a run takes: one; a data-parallel run one per rank on GPUs, and every slot on a
    CPU-only machine (its ranks share the cores)."""
    gpus = run_gpus(config)
    if gpus <= 1:
        return 1
    return gpus if on_gpus else slots


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


def process_state(pid: int | None) -> str | None:
    """The kernel's one-letter state of a process ('R', 'S', 'T' stopped, 'Z', ...), None if gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def holds_write_lock(pid: int | None, paths: list[Path]) -> bool | None:
    """Whether process `pid` holds a POSIX write lock on one of `paths` (SQLite's write lock is
    one on the -shm file in WAL mode), from /proc/locks; None where that cannot be read."""
    try:
        inodes = {os.stat(p).st_ino for p in paths if os.path.exists(p)}
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 1234 fe:00:2146737 120 120"; waiting requests carry "->"
        parts = line.split()
        if len(parts) >= 6 and "->" not in parts and parts[1] == "POSIX" and parts[3] == "WRITE" \
                and parts[4] == str(pid) and int(parts[5].rsplit(":", 1)[1]) in inodes:
            return True
    return False


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int, wait_s: float = 5.0) -> None:
    """SIGKILL one process that is not our child, and wait (briefly) until it is gone, so that
    the store locks it held are free."""
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


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
    """A run this scheduler watches. Its worker is a process started here (`proc`), a task handed
    to a Ray cluster (`task`), or neither: a process or a Ray run adopted from an earlier
    scheduler or started by hand, judged by its pid, or by its heartbeat alone on Ray."""
    run_id: int
    pid: int | None
    slots: tuple[int, ...]                 # the slots it holds (none on Ray)
    proc: subprocess.Popen | None = None
    log: Path | None = None
    term_at: float | None = None
    killed: bool = False
    stop_reason: str | None = None         # why the scheduler stopped it (over the room's budget)
    needs: int = 1                         # the slots its config needs: an adopted run takes the rest as they free up
    task: Any = None                       # optlab.raycluster.RayTask
    on_ray: bool = False

    def poll(self) -> tuple[bool, int | None]:
        """(ended, return code) of a local process; the code is unknown for adopted workers."""
        if self.proc is not None:
            rc = self.proc.poll()
            return rc is not None, rc
        return not pid_alive(self.pid), None


class SchedulerLock:
    """An flock on the OPTLAB_HOME folder itself, held for the scheduler's life; the kernel drops
    it when the process dies, so a crashed scheduler never blocks the next one. (A lock on a
    file is lost when someone deletes the file: the next scheduler locks a new file of the same
    name. The folder holding the store cannot be deleted from under it.) `scheduler.lock` holds
    the holder's pid, for messages only."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.path = self.home / "scheduler.lock"
        self._fd: int | None = None

    def acquire(self) -> tuple[bool, str]:
        """(acquired, pid of the holder)."""
        if self._fd is not None:
            return True, str(os.getpid())
        fd = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False, self._holder()
        self._fd = fd
        try:
            self.path.write_text(f"{os.getpid()}\n")
        except OSError:
            pass   # the lock holds without the note
        return True, str(os.getpid())

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            if self._holder() == str(os.getpid()):
                try:
                    self.path.write_text("")
                except OSError:
                    pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def cancel(store: Store, run_id: int) -> str:
    """Cancel a queued or running run. A queued run is cancelled at once; a running run is asked
    to stop (its process polls the flag; the scheduler sends SIGTERM, then SIGKILL) and ends
    cancelled; a running run whose process is gone or silent is cancelled at once. Returns the
    status the run now has or is heading to: 'cancelled', or the finished status it already had
    ('done', 'failed', ...). Raises LookupError for an unknown id."""
    status = store.request_cancel(run_id)
    if status is None:
        raise LookupError(f"no run #{run_id}")
    if status == "running":
        store.add_event(run_id, "cancel requested")
        gone = gone_reason(store.get(run_id))
        if gone and store.finish_if_running(run_id, "cancelled", error=f"cancelled: {gone}"):
            store.add_event(run_id, f"cancelled at once: {gone}", level="warning")
        return "cancelled"
    return status


def gone_reason(run: Run, stale_s: float = STALE_S) -> str | None:
    """Why nobody is running this 'running' run any more (its process is gone, or silent for
    longer than `stale_s`), or None while its process is alive and beating."""
    if run is None or run.status != "running":
        return None
    if run.cluster:   # its worker runs on a node of a Ray cluster: its pid means nothing here
        age = time.time() - (run.heartbeat_at or run.started_at or run.created_at)
        if age > stale_s:
            return f"its worker on the Ray cluster at {run.cluster} sent no heartbeat for {age:.0f} s"
        return None
    if not run.worker_pid:
        return "no process was recorded for it"
    if not pid_alive(run.worker_pid):
        return f"its process (pid {run.worker_pid}) was gone"
    age = time.time() - (run.heartbeat_at or run.started_at or run.created_at)
    if age > stale_s:
        return f"its process (pid {run.worker_pid}) sent no heartbeat for {age:.0f} s"
    return None


# -- the scheduler ----------------------------------------------------------------------------------
class Scheduler:
    def __init__(self, store: Store, slots: int | None = None, poll_s: float = 0.5, *,
                 grace_s: float = GRACE_S, stale_s: float = STALE_S):
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be a whole number >= 1, not {slots!r}")
        self.store = store
        self.gpus = visible_gpus()
        self.slots = slots or max(1, len(self.gpus))
        address = os.environ.get("OPTLAB_RAY_ADDRESS", "").strip()
        self.ray = None                # the Ray cluster runs go to, when OPTLAB_RAY_ADDRESS names one
        if address:
            from optlab.raycluster import RayCluster
            self.ray = RayCluster(address, store)
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
        self._trouble: str | None = None        # the last round's failure, logged once
        self.store_error: Exception | None = None   # the store cannot be used (gone, read-only)
        self._locked: bool | None = None        # this round's answer to "is the store locked?"

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
                    if self.store_error is not None:
                        raise self.store_error
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
            if self.store_error is not None:
                raise self.store_error
            if not self.active:
                raise SchedulerBusy(self.message)
            self._stop.wait(self.poll_s)

    def idle(self) -> bool:
        """Nothing queued, nothing running, and no tuning that will queue more trials."""
        from optlab import autotune
        with self._tick_lock:
            return not self.jobs and not self.store.list(status="queued", limit=1) \
                and not autotune.tunings(self.store, active=True)

    def _advance_tunings(self) -> None:
        """The autotuner's round (optlab.autotune): finished trials told, the next ones queued. A
        tuning that fails is ended with the reason; the queue goes on."""
        from optlab import autotune
        for tuning in autotune.tunings(self.store, active=True):   # Optuna is loaded only for one under way
            try:
                autotune.advance(self.store, tuning.id)
            except Exception as e:
                log.exception("tuning %s failed", tuning.id)
                autotune.end_failed(self.store, tuning.id, f"{type(e).__name__}: {e}")

    # -- one round ----------------------------------------------------------------------------------
    def tick(self) -> None:
        """One round: take the lock if free, watch every running run, reap, enforce cancels,
        fill free slots. A failure is logged once (not every round) and the next round tries again."""
        with self._tick_lock:
            self._locked = None
            try:
                if not self._acquire():
                    return
                if self.ray is not None:
                    self.ray.ready()    # connects in the background, once
                self._watch(starting=not self._recovered)
                self._recovered = True
                self._reap()
                self._advance_tunings()
                self._enforce_budget()
                self._enforce_cancels()
                if fairuse.paused(self.store) is None:
                    self._fill()
            except StoreError as e:   # gone, read-only, full: say it once, in one line
                self.store_error = e
                self._report(f"the scheduler cannot use the store: {e}", traceback=False)
            except Exception as e:   # a failed spawn or a bug must not end the scheduler
                self._report(f"scheduler round failed ({type(e).__name__}: {e}); trying again", traceback=True)
            else:
                self.store_error = None
                if self._trouble is not None:
                    log.info("scheduler rounds work again")
                    self._trouble = None
                    self.message = self._active_message() if self.active else self.message
                elif self.ray is not None and self.active:   # the cluster's state changes between rounds
                    self.message = self._active_message()

    def _report(self, message: str, traceback: bool) -> None:
        if message != self._trouble:
            self._trouble = message
            self.message = message
            log.error(message, exc_info=traceback)

    def _acquire(self) -> bool:
        if self.active:
            return True
        ok, holder = self._lock.acquire()
        if ok:
            self.active, self._recovered = True, False
            self.message = self._active_message()
            log.info("scheduler pid %d: %s", os.getpid(), self.message)
        else:
            who = f"pid {holder}" + (", this process" if holder == str(os.getpid()) else "")
            message = (f"another scheduler ({who}) already hands out the runs of {self.store.home}; "
                       "this one hands out nothing")
            if message != self.message:
                log.warning(message)
            self.message = message
        return ok

    def _active_message(self) -> str:
        if self.ray is not None:
            if not self.ray.connected:
                return self.ray.problem or f"connecting to the Ray cluster at {self.ray.address}"
            return f"handing out runs from {self.store.home} to the Ray cluster at {self.ray.address} ({self.ray.describe()})"
        where = ", ".join(f"GPU {g}" for g in self.gpus) or "the CPU"
        return f"handing out runs from {self.store.home} to {self.slots} slot(s) on {where}"

    def _release(self) -> None:
        if self.active:
            self._lock.release()
            self.active = False
            self.message = "stopped"

    def _watch(self, starting: bool) -> None:
        """Every running run that none of this scheduler's workers runs: a worker started by an
        earlier scheduler or by hand, or a foreground `optlab run`. A live, beating process is
        adopted (it takes the slots its config needs and is watched like our own); for the others
        the run ends with the reason: interrupted when found at start, failed when its process ends
        later. A run on a Ray cluster is judged by its heartbeat alone (its pid is on another node)."""
        for run in self.store.list(status="running", newest_first=False):
            if run.id in self.jobs:
                continue
            if run.cluster:
                why = gone_reason(run, self.stale_s)
                if why is None:
                    self._adopt(run, f"its worker on the Ray cluster at {run.cluster}, watched by its heartbeat")
                    continue
                if self._store_locked():
                    continue   # the lock, not the worker, may keep its heartbeat from the store
                status = "cancelled" if run.cancel_requested else "interrupted" if starting else "failed"
                self._end(run.id, status, why + (" when the scheduler started" if starting else ""),
                          self._log_path(run.id))
                continue
            if pid_alive(run.worker_pid):
                why = self._frozen(run)   # before any write: a stopped process may hold the lock
                if why is None:
                    if gone_reason(run, self.stale_s) is None:
                        self._adopt(run, f"its process (pid {run.worker_pid})")
                    continue   # silent while the store is locked: not judged this round
                _kill(run.worker_pid)
                status = "cancelled" if run.cancel_requested else "failed"
            else:
                why = gone_reason(run, self.stale_s)
                status = "cancelled" if run.cancel_requested else "interrupted" if starting else "failed"
                if starting:
                    why += " when the scheduler started"
            self._end(run.id, status, why, self._log_path(run.id))

    def _adopt(self, run: Run, what: str) -> None:
        need = 0 if run.cluster else self.slots_needed(run.config)
        self.jobs[run.id] = Job(run.id, run.worker_pid, (), needs=need, on_ray=bool(run.cluster))
        self._take_owed_slots()
        self.store.add_event(run.id, f"scheduler pid {os.getpid()} adopted {what}")
        log.info("run #%d: adopted %s", run.id, what)

    def _frozen(self, run: Run) -> str | None:
        """Why the live process of a running run must be ended, or None: no heartbeat for
        stale_s, or stopped (SIGSTOP) while the store is locked: it may hold the lock everyone
        else waits for. A silent process that is not stopped is not judged while the store is
        locked: the lock, not the process, may be what keeps its heartbeat from the store. A
        worker on a Ray cluster is judged by its heartbeat alone."""
        age = time.time() - (run.heartbeat_at or run.started_at or run.created_at)
        if run.cluster:
            why = gone_reason(run, self.stale_s)
            return f"{why}; it was ended" if why and not self._store_locked() else None
        stopped = process_state(run.worker_pid) in ("T", "t")
        if stopped:
            held = holds_write_lock(run.worker_pid, [self.store.path, Path(f"{self.store.path}-shm")])
            if held or (held is None and self._store_locked()):
                return (f"its process (pid {run.worker_pid}) was stopped (SIGSTOP or Ctrl-Z) holding the store "
                        "locked; it was ended so that the other processes can go on")
        if age > self.stale_s and (stopped or not self._store_locked()):
            how = "stopped (SIGSTOP or Ctrl-Z)" if stopped else "hung"
            return f"its process (pid {run.worker_pid}) sent no heartbeat for {age:.0f} s ({how}); it was ended"
        return None

    def _store_locked(self) -> bool:
        if self._locked is None:
            self._locked = self.store.write_locked(timeout_s=LOCK_PROBE_S)
        return self._locked

    def _reap(self) -> None:
        for job in list(self.jobs.values()):
            if job.task is not None:
                self._reap_ray(job)
                continue
            ended, rc = (False, None) if job.on_ray else job.poll()
            if ended:
                self._settle(job, rc)
                continue
            run = self.store.get(job.run_id)
            if run is None or run.status != "running":
                if job.proc is None:
                    self.jobs.pop(job.run_id, None)   # an adopted process or Ray run that finished its run
                continue
            frozen = self._frozen(run)
            if frozen is not None:
                # Kill first: a stopped process may hold the store's write lock, which _end needs.
                if job.proc is not None:
                    _signal_group(job.pid, signal.SIGKILL)
                    try:
                        job.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                else:   # adopted: a process here is killed; a worker on Ray has no task of ours to cancel
                    if not job.on_ray:
                        _kill(job.pid)
                    self.jobs.pop(job.run_id, None)
                status = "cancelled" if run.cancel_requested else "failed"
                self._end(job.run_id, status, frozen, self._log_path(job.run_id), with_lines=status == "failed")

    def _reap_ray(self, job: Job) -> None:
        """What a run's Ray task said since the last round (where it runs, how it ended); a worker
        there that stopped beating is ended through its task."""
        while (said := job.task.poll()) is not None:
            kind, value = said
            if kind == "node" and "refused" in value:
                self._end(job.run_id, "failed", value["refused"], job.log)
            elif kind == "node":
                through = f"; {THROUGH_SERVICE}, scratch {value['scratch']}" if value.get("scratch") else ""
                self.store.add_event(job.run_id, f"handed to Ray cluster at {self.ray.address}, node {value['node']} "
                                                 f"(Ray task pid {value['task_pid']}, worker pid {value['worker_pid']}{through})")
            elif kind in ("shipped", "kept"):
                self.store.add_event(job.run_id, f"{FOLDER_SHIPPED} {value.removeprefix('shipped ')}" if kind == "shipped"
                                     else f"{FOLDER_KEPT}: {value}", level="info" if kind == "shipped" else "warning")
            else:
                self._settle(job, value if kind == "exit" else None, lost=value if kind == "lost" else None)
                return
        waited, limit = job.task.unplaced_for(), self.ray.place_timeout_s
        if waited > limit:   # the cluster's resources are held by other work: say so rather than wait for ever
            job.task.cancel()
            self._end(job.run_id, "failed", f"the Ray cluster at {self.ray.address} did not place it within {limit:.0f} s "
                                            f"(it asked for {job.task.asks}; other work holds them); submit it again "
                                            "later, or wait longer with OPTLAB_RAY_PLACE_TIMEOUT_S", job.log)
            return
        run = self.store.get(job.run_id)
        if run is None or run.status != "running" or not run.worker_pid:
            return   # ended (its task ends soon), or waiting in Ray's queue for its resources
        frozen = self._frozen(run)
        if frozen is not None:
            job.task.cancel()   # the task ends the worker's group: SIGTERM, then SIGKILL
            status = "cancelled" if run.cancel_requested else "failed"
            self._end(job.run_id, status, frozen, job.log, with_lines=status == "failed")

    def _settle(self, job: Job, returncode: int | None, lost: str | None = None) -> None:
        """The worker ended (or Ray `lost` it): if it left its run running, say why the run ended.
        The job is let go only once the store took it, so a store that cannot be written (a full
        disk) is tried again next round, never left `running` with no one watching."""
        if job.proc is not None:   # we started it as a group leader: end what it left behind
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        run = self.store.get(job.run_id)
        exit_text = describe_exit(returncode)
        how = lost or f"the worker {exit_text}"
        if run is None:
            pass
        elif job.stop_reason and run.status == "cancelled":     # the worker ended it: keep our reason
            self.store.update(job.run_id, error=job.stop_reason)
        elif job.stop_reason and run.status == "running":
            self._end(job.run_id, "cancelled", f"{job.stop_reason} ({how})", self._log_path(job.run_id))
            return
        if run is None:
            pass
        elif lost and run.status == "interrupted" and not self._stopping:
            # its worker saw its Ray task die before Ray told us why: a lost task fails the run, with Ray's reason
            error = f"{lost} (its worker then stopped: {run.error})"
            self.store.finish(job.run_id, "failed", error=error)
            self.store.add_event(job.run_id, error, level="error")
            log.warning("run #%d failed: %s", job.run_id, error)
        elif run.status != "running":
            tail = log_tail(self._log_path(job.run_id))
            if tail:
                self.store.update(job.run_id, log_tail=tail)
            log.info("run #%d %s (%s)", job.run_id, run.status, how)
        else:
            if run.cancel_requested:
                status, error = "cancelled", f"cancelled on request ({how})"
            elif self._stopping:
                status, error = "interrupted", f"the scheduler stopped ({how})"
            else:
                status, error = "failed", lost or f"worker {exit_text}"
            self._end(job.run_id, status, error, self._log_path(job.run_id), with_lines=status == "failed")
        self.jobs.pop(job.run_id, None)

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
            if job.on_ray:
                # Its worker obeys the store's cancel flag within half a second (its heartbeat);
                # the task is cancelled only if it is still running after the grace period.
                if job.term_at is None:
                    job.term_at = now
                elif job.task is not None and not job.task.cancelled and now - job.term_at > self.grace_s:
                    job.task.cancel()
                    self.store.add_event(run.id, f"cancel: no exit after {self.grace_s:.0f} s, its Ray task cancelled",
                                         level="warning")
                continue
            # Our workers lead their own process group; an adopted process (a foreground
            # `optlab run`) may share a group with a person's shell pipeline: the pid alone.
            send = _signal_group if job.proc is not None else _signal_pid
            if job.term_at is None:
                job.term_at = now
                send(job.pid, signal.SIGTERM)
                self.store.add_event(run.id, f"cancel: SIGTERM to worker group {job.pid}")
            elif not job.killed and now - job.term_at > self.grace_s:
                job.killed = True
                send(job.pid, signal.SIGKILL)
                self.store.add_event(run.id, f"cancel: no exit after {self.grace_s:.0f} s, SIGKILL to group {job.pid}",
                                     level="warning")

    # -- slots --------------------------------------------------------------------------------------
    def _fill(self) -> None:
        """Start the run at the head of the fair queue (Store.fair_queue) while it can start. A run
        takes all the slots it needs at once, never part of them. While the head of the queue
        waits for its slots, the runs behind it wait too, even those that would fit: the order
        stays fair, and a big run cannot be starved by small ones slipping past it. A run that
        needs more slots than this scheduler has at all could never start: it fails at once, with
        both numbers, and the queue goes on. On Ray the cluster places the runs; at most
        `ray.capacity()` are in flight."""
        self._take_owed_slots()
        while not self._stopping and not self._stop.is_set():
            queue = self.store.fair_queue()
            if not queue:
                return
            run = queue[0]
            if self.ray is not None and (not self.ray.connected or
                                         sum(j.on_ray for j in self.jobs.values()) >= self.ray.capacity()):
                return
            never = self.ray.never_fits(run.config) if self.ray is not None else self._never_fits(run.config)
            if never:
                self._refuse(run, never)
                continue
            slots = () if self.ray is not None else self._choose_slots(self.slots_needed(run.config))
            if slots is None:
                return   # the head waits for its slots; so does everyone behind it
            if self.store.claim(run.id):
                run = self.store.get(run.id)
                if self.ray is not None:
                    self._spawn_ray(run)
                else:
                    self._spawn(run, slots)

    def slots_needed(self, config: dict) -> int:
        return slots_for(config, self.slots, bool(self.gpus))

    def _gpu_of(self, slot: int) -> str:
        return self.gpus[slot % len(self.gpus)]

    def _free_slots(self) -> list[int]:
        used = {s for job in self.jobs.values() for s in job.slots}
        return [s for s in range(self.slots) if s not in used]

    def _choose_slots(self, need: int) -> tuple[int, ...] | None:
        """`need` free slots, each on its own GPU (two slots may share one when there are more
        slots than GPUs); None when that many are not free now."""
        chosen, gpus = [], set()
        for slot in self._free_slots():
            gpu = self._gpu_of(slot) if self.gpus else slot
            if gpu not in gpus:
                chosen.append(slot)
                gpus.add(gpu)
            if len(chosen) == need:
                return tuple(chosen)
        return None

    def _never_fits(self, config: dict) -> str | None:
        """Why this run could never start here, or None."""
        need = self.slots_needed(config)
        have = len({self._gpu_of(s) for s in range(self.slots)}) if self.gpus else self.slots
        if need <= have:
            return None
        return (f"gpus {run_gpus(config)} needs {need} slots at once, each on its own GPU, and this scheduler has "
                f"{have} (its slots on the GPUs it sees: OPTLAB_SLOTS, --slots, CUDA_VISIBLE_DEVICES): "
                "it could never start")

    def _refuse(self, run: Run, why: str) -> None:
        """Fail a queued run that could never start (it never ran: no start time)."""
        if self.store.claim(run.id) and self.store.finish_if_running(run.id, "failed", error=why, started_at=None):
            self.store.add_event(run.id, why, level="error")
            log.warning("run #%d failed: %s", run.id, why)

    def _take_owed_slots(self) -> None:
        """An adopted run that found its slots taken takes them as they free up, before any queued run."""
        for job in self.jobs.values():
            while len(job.slots) < job.needs and (free := self._free_slots()):
                job.slots += (free[0],)

    # -- workers ----------------------------------------------------------------------------------
    def _log_path(self, run_id: int) -> Path:
        return self.store.artifacts_dir(run_id, create=False) / "worker.log"

    def _store_env(self) -> dict[str, str]:
        """What a worker needs wherever it runs: this store, this checkout on its path, unbuffered output."""
        env = {"OPTLAB_HOME": str(self.store.home), "PYTHONUNBUFFERED": "1"}
        if Path(PACKAGE_ROOT).name not in ("site-packages", "dist-packages"):   # a checkout, not an install
            env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        return env

    def worker_env(self, slots: tuple[int, ...]) -> dict[str, str]:
        """A local worker's environment: this store, this scheduler's pid (the worker stops if it
        dies), its slots' GPUs, and its slots' share of the CPU threads (all of them for a
        data-parallel run on a CPU-only machine, which divides them between its ranks)."""
        env = {**os.environ, **self._store_env(), "OPTLAB_SCHEDULER_PID": str(os.getpid())}
        if self.gpus and slots:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self._gpu_of(s) for s in slots)
        if "OMP_NUM_THREADS" not in os.environ:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            env["OMP_NUM_THREADS"] = str(max(1, cpus * max(1, len(slots)) // self.slots))
        return env

    def ray_env(self) -> dict[str, str]:
        """What a worker on a Ray node takes from here: OptLab's settings and `_store_env`. The node
        gives the rest (its PATH; the GPUs Ray gave the task in CUDA_VISIBLE_DEVICES and its CPUs in
        OMP_NUM_THREADS), and the task names itself the worker's parent, not this scheduler."""
        env = {k: v for k, v in os.environ.items()
               if k.startswith("OPTLAB_") and not k.startswith(("OPTLAB_RAY_", "OPTLAB_SCHEDULER"))}
        return {**env, **self._store_env()}

    def _spawn(self, run: Run, slots: tuple[int, ...]) -> None:
        path = self._log_path(run.id)
        try:
            env = self.worker_env(slots)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "optlab.worker", str(run.id)], stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except Exception as e:   # the run is claimed: it must not stay running without a worker
            self._end(run.id, "failed", f"could not start a worker: {type(e).__name__}: {e}", path)
            return
        self.store.update(run.id, worker_pid=proc.pid)
        self.jobs[run.id] = Job(run.id, proc.pid, slots, proc, path, needs=len(slots))
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if self.gpus else "the CPU"
        on = f"slot {slots[0]}" if len(slots) == 1 else "slots " + ",".join(map(str, slots))
        self.store.add_event(run.id, f"worker pid {proc.pid} started on {on} ({where}) by scheduler pid {os.getpid()}")
        log.info("run #%d (%s): worker pid %d on %s (%s)", run.id, run.user or "anonymous", proc.pid, on, where)

    def _spawn_ray(self, run: Run) -> None:
        path = self._log_path(run.id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.store.update(run.id, cluster=self.ray.address)   # from now on judged by its heartbeat, not a pid here
            task = self.ray.submit(run.id, run.config, self.ray_env(), path, self.grace_s)
        except Exception as e:   # the run is claimed: it must not stay running without a worker
            self._end(run.id, "failed", f"could not hand it to the Ray cluster at {self.ray.address}: "
                                        f"{type(e).__name__}: {e}", path)
            return
        self.jobs[run.id] = Job(run.id, None, (), log=path, needs=0, task=task, on_ray=True)
        self.store.add_event(run.id, f"asked the Ray cluster at {self.ray.address} for {task.asks} "
                                     f"(scheduler pid {os.getpid()})")
        log.info("run #%d (%s): handed to the Ray cluster at %s (%s)", run.id, run.user or "anonymous",
                 self.ray.address, task.asks)

    def _stop_all(self) -> None:
        """SIGTERM every worker this scheduler started (cancel its Ray task), wait up to the grace
        period, SIGKILL what is left; their runs end interrupted. Adopted processes (a foreground
        `optlab run`, a worker started by hand) are not ours to stop: they go on, and a later
        scheduler adopts them."""
        self._stopping = True
        try:
            for run_id in [j.run_id for j in self.jobs.values() if j.proc is None and j.task is None]:
                self.jobs.pop(run_id)
            for job in self.jobs.values():
                if job.task is not None:
                    job.task.cancel()   # the task itself SIGTERMs, waits the grace period, SIGKILLs
                else:
                    _signal_group(job.pid, signal.SIGTERM)
            on_ray = any(job.task is not None for job in self.jobs.values())
            deadline = time.monotonic() + self.grace_s + (5.0 if on_ray else 0.0)
            while self.jobs and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.1)
            for job in list(self.jobs.values()):
                if job.task is not None:
                    log.error("run #%d: its Ray task did not end within %.0f s", job.run_id, self.grace_s + 5)
                    continue
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
