"""The queue on a Ray cluster: when OPTLAB_RAY_ADDRESS names one, the scheduler hands runs to Ray.

OPTLAB_RAY_ADDRESS is the cluster's address (`HEAD:6379`, or `auto` for the cluster this machine
belongs to). Ray is an optional dependency (`make ray`); it is imported only inside functions
here, and this module only when the variable is set, so the engine imports without it.

Each run is one Ray task (`_run_worker`) asking for the run's GPUs on a GPU cluster (one CPU on a
CPU cluster). On its node the task starts `python -m optlab.worker RUN_ID` as the local scheduler
does (its own session, output appended to the run's worker.log), reports its node, waits, and
reports the worker's exit code. The task names itself the worker's parent (OPTLAB_SCHEDULER_PID):
if Ray ends the task's process (its scheduler, the Ray driver, exited), the worker sees its
parent gone, stops and marks its run interrupted. (And Ray ends a driver's process about 60 s
after it loses the cluster's head: a scheduler inside the app takes the app with it; README says
to run `optlab queue` apart.) A cancelled task (ray.cancel, which raises KeyboardInterrupt in
it) ends the worker's process group: SIGTERM, a grace period, SIGKILL.

The store stays the single source of truth: the worker writes progress, telemetry, results and
artifacts to OPTLAB_HOME itself, so OPTLAB_HOME must be the same path on every node, on a file
system every node sees. That is not enough on its own: the store is SQLite in WAL mode, and WAL
works only while every process that opens the database runs on one host ("WAL does not work over
a network filesystem", sqlite.org/wal.html). So a task that Ray places on another host than the
scheduler's refuses to start its worker, and the run fails with that reason. A local test cluster
(127.0.0.1) and a single many-GPU host satisfy this; nodes on other hosts need a store service in
front of the database, which does not exist yet.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

RETRY_S = 10.0        # a cluster that could not be reached is tried again after this long
REFRESH_S = 10.0      # the cluster's resources are read again after this long (nodes join and leave)
PROBE_S = 3.0         # ray.init waits many minutes on an address where nobody answers: knock first
POLL_S = 0.2

log = logging.getLogger("optlab.scheduler")


def host_id() -> str:
    """This host, as every process on it sees it: the kernel's boot id (containers on one host
    share it), the host name where that cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _probe(address: str) -> None:
    """Raise ConnectionError when nothing listens at HOST:PORT ('auto' is left to Ray)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S).close()


# -- the task, on a node of the cluster ----------------------------------------------------------------
def _run_worker(run_id: int, env: dict, log_path: str, store_host: str, grace_s: float):
    """The Ray task that runs one run's worker; a generator: first where it runs (or why it
    refused), then the worker's exit code. Pickled by value, so a node needs Ray and a Python
    that runs OptLab, not this module on the Ray worker's path."""
    import signal
    import subprocess
    import ray
    node = ray.util.get_node_ip_address()
    if host_id() != store_host:
        yield {"node": node, "refused": (
            f"Ray placed it on node {node}, another host than the scheduler's; the store (SQLite in WAL mode) "
            "can only be written from the host that holds it, so the worker was not started")}
        return
    env = {**os.environ, **env, "OPTLAB_SCHEDULER_PID": str(os.getpid())}
    with open(log_path, "ab") as out:
        out.write(f"{time.strftime('%H:%M:%S')} Ray task pid {os.getpid()} on node {node} starts the worker\n".encode())
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "optlab.worker", str(run_id)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield {"node": node, "task_pid": os.getpid(), "worker_pid": proc.pid}
        while proc.poll() is None:       # short sleeps: ray.cancel's KeyboardInterrupt lands between them
            time.sleep(POLL_S)
    except KeyboardInterrupt:            # ray.cancel: end the worker's group as the local scheduler does
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        raise
    finally:
        _signal_group(proc.pid, signal.SIGKILL)   # what the worker left behind (loader workers), or the worker
        proc.wait()
    yield proc.returncode


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_REMOTE = None


def _remote():
    """_run_worker as a Ray remote function (made once; pickled by value, see _run_worker)."""
    global _REMOTE
    if _REMOTE is None:
        import ray
        import ray.cloudpickle
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        # No retries: a rerun would find its run taken by the lost worker; the run fails with the reason.
        _REMOTE = ray.remote(max_retries=0, num_returns="streaming")(_run_worker)
    return _REMOTE


# -- the scheduler's side -------------------------------------------------------------------------------
class RayTask:
    """One run's task, seen from the scheduler: what it reported, and a cancel sent once."""

    def __init__(self, ref, asks: str):
        self.ref = ref          # the task's ObjectRefGenerator
        self.asks = asks        # '1 GPU', '1 CPU': what it asked the cluster for
        self.cancelled = False

    def poll(self) -> tuple[str, object] | None:
        """None while the task has nothing new to say; ('node', report) where it runs (or
        {'refused': why}); ('exit', code) when the worker ended; ('lost', why) when Ray lost it."""
        import ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError
        if not ray.wait([self.ref], timeout=0)[0]:
            return None
        try:
            said = ray.get(next(self.ref))
        except StopIteration:
            return "lost", "its Ray task ended without the worker's exit code"
        except TaskCancelledError:
            return "lost", "its Ray task was cancelled"
        except RayTaskError as e:
            return "lost", f"its Ray task failed: {_one_line(e.cause) if e.cause else _one_line(e)}"
        except RayError as e:
            return "lost", f"its Ray worker was lost: {_one_line(e)}"
        return ("node", said) if isinstance(said, dict) else ("exit", said)

    def cancel(self) -> None:
        """ray.cancel once (a second one could interrupt the task's own clean-up)."""
        if not self.cancelled:
            import ray
            self.cancelled = True
            ray.cancel(self.ref)


class RayCluster:
    """A scheduler's connection to a Ray cluster: connects in the background (ray.init can block
    for minutes), says why it is not connected, and knows how many runs the cluster takes."""

    def __init__(self, address: str):
        self.address = address
        self.host = host_id()          # where the store is: a task on another host refuses to run (see above)
        self.connected = False
        self.problem: str | None = f"connecting to the Ray cluster at {address}"
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._resources: dict = {}
        self._largest_node_gpus = 0
        self._read_at = float("-inf")

    def ready(self) -> bool:
        """True once connected; until then starts (or retries) connecting in the background."""
        if self.connected:
            return True
        if (self._thread is None or not self._thread.is_alive()) and time.monotonic() >= self._retry_at:
            self._thread = threading.Thread(target=self._connect, name="optlab-ray-connect", daemon=True)
            self._thread.start()
        return False

    def _connect(self) -> None:
        try:
            import ray
        except ImportError:
            self._failed("OPTLAB_RAY_ADDRESS is set but Ray is not installed here (`make ray`); queued runs wait")
            return
        try:
            _probe(self.address)
            ray.init(address=self.address, ignore_reinit_error=True, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
            self._read(force=True)
        except Exception as e:
            self._failed(f"the Ray cluster at {self.address} cannot be reached ({_one_line(e)}); queued runs wait")
            return
        self.connected, self.problem = True, None
        log.info("connected to the Ray cluster at %s: %s", self.address, self.describe())

    def _failed(self, problem: str) -> None:
        if problem != self.problem:
            log.warning(problem)
        self.problem = problem
        self._retry_at = time.monotonic() + RETRY_S

    def _read(self, force: bool = False) -> None:
        if force or time.monotonic() - self._read_at > REFRESH_S:
            import ray
            self._resources = ray.cluster_resources()
            self._largest_node_gpus = int(max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")),
                                              default=0))
            self._read_at = time.monotonic()

    @property
    def gpus(self) -> int:
        self._read()
        return int(self._resources.get("GPU", 0))

    def capacity(self) -> int:
        """Runs in flight at most: OPTLAB_RAY_MAX_RUNNING, else the cluster's GPUs, else its CPUs."""
        value = os.environ.get("OPTLAB_RAY_MAX_RUNNING", "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"OPTLAB_RAY_MAX_RUNNING must be a whole number >= 1, not {value!r}")
            return int(value)
        self._read()
        return max(1, self.gpus or int(self._resources.get("CPU", 0)))

    def describe(self) -> str:
        self._read()
        what = f"{self.gpus} GPU(s)" if self.gpus else f"{int(self._resources.get('CPU', 0))} CPU(s), no GPU"
        return f"{what}; at most {self.capacity()} run(s) at a time"

    def _asks(self, config: dict) -> dict:
        """The task's resources: the run's GPUs on a GPU cluster (unless it asked for the CPU), else one CPU."""
        gpus = int(config.get("gpus") or 1)
        return {"num_gpus": gpus} if self.gpus and config.get("device") != "cpu" else {"num_cpus": 1}

    def never_fits(self, config: dict) -> str | None:
        """Why no node of the cluster can ever run this run, or None."""
        asks = self._asks(config)
        gpus = asks.get("num_gpus", 0)
        if gpus > self._largest_node_gpus:
            return (f"it needs {gpus} GPUs on one node and the largest node of the Ray cluster at {self.address} "
                    f"has {self._largest_node_gpus}: it could never start")
        return None

    def submit(self, run_id: int, config: dict, env: dict, log_path, grace_s: float) -> RayTask:
        asks = self._asks(config)
        ref = _remote().options(name=f"optlab run #{run_id}", **asks).remote(
            run_id, env, str(log_path), self.host, grace_s)
        what = f"{asks['num_gpus']} GPU(s)" if "num_gpus" in asks else "1 CPU"
        return RayTask(ref, what)
