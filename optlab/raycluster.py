"""The queue on a Ray cluster: when OPTLAB_RAY_ADDRESS names one, the scheduler hands runs to Ray.

OPTLAB_RAY_ADDRESS is the cluster's address (`HEAD:6379`, or `auto` for the cluster this machine
belongs to). Ray is an optional dependency (`make ray`); it is imported only inside functions
here, and this module only when the variable is set, so the engine imports without it.

Each run is one Ray task (`_run_worker`) asking for the run's GPUs on a GPU cluster (one CPU on a
CPU cluster). On its node the task starts `python -m optlab.worker RUN_ID` as the local scheduler
does (its own session, output appended to the run's worker.log), reports its node, waits, and
reports the worker's exit code. The task names itself the worker's parent (OPTLAB_SCHEDULER_PID):
if Ray ends the task's process (its scheduler, the Ray driver, exited), the worker sees its
parent gone, stops and marks its run interrupted; if the task's process dies otherwise (killed,
out of memory), Ray reports it lost and the scheduler fails the run with Ray's reason. (And Ray
ends a driver's process about 60 s after it loses the cluster's head: a scheduler inside the app
takes the app with it; README says to run `optlab queue` apart.) A cancelled task (ray.cancel, which raises KeyboardInterrupt in
it) ends the worker's process group: SIGTERM, a grace period, SIGKILL.

The store stays the single source of truth. A task on the scheduler's host starts the worker on
OPTLAB_HOME itself, as the local scheduler does. The store is SQLite in WAL mode, which only
processes on its own host may open (sqlite.org/wal.html), so a task on another host gives its
worker a grant to the scheduler's store service instead (optlab.storeservice: the service's URL
and a token for that run alone) and a scratch OPTLAB_HOME on the node (under OPTLAB_NODE_HOME,
default ~/.optlab-node): progress, telemetry, events and results go through the service while
the run goes on; the run's folder (worker log, weights, traces) is shipped back when the worker
has ended, and the scratch folder removed. A node needs Ray, OptLab's code at the scheduler's
checkout path (or installed), and the data set (OPTLAB_DATA, default OPTLAB_NODE_HOME/data, or
the Debian package's folder).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

RETRY_S = 10.0        # a cluster that could not be reached is tried again after this long
REFRESH_S = 10.0      # the cluster's resources are read again after this long (nodes join and leave)
PROBE_S = 3.0         # ray.init waits many minutes on an address where nobody answers: knock first
POLL_S = 0.2
SHIP_TIMEOUT_S = 3600.0  # sending a run folder back to the store takes at most this long

log = logging.getLogger("optlab.scheduler")


def host_id() -> str:
    """This host, as every process on it sees it: the kernel's boot id (containers on one host
    share it), the host name where that cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


def place_timeout_s() -> float:
    """How long a run's task may wait for Ray to place it (OPTLAB_RAY_PLACE_TIMEOUT_S, default 600)."""
    value = os.environ.get("OPTLAB_RAY_PLACE_TIMEOUT_S", "").strip()
    try:
        seconds = float(value or 600)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"OPTLAB_RAY_PLACE_TIMEOUT_S must be a number of seconds > 0, not {value!r}")
    return seconds


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
def _run_worker(run_id: int, env: dict, log_path: str, store_host: str, grace_s: float, grant: dict | None):
    """The Ray task that runs one run's worker; a generator: first where it runs (or why it
    refused), then, on another host than the store's, what was shipped back, then the worker's
    exit code. Pickled by value, so a node needs Ray and a Python that runs OptLab, not this
    module on the Ray worker's path."""
    import signal
    import subprocess
    import ray
    node = ray.util.get_node_ip_address()
    env = {**os.environ, **env, "OPTLAB_SCHEDULER_PID": str(os.getpid()), "OPTLAB_PARENT_NAME": "Ray task"}
    scratch = None
    if host_id() != store_host:
        why = _service_problem(grant)
        if why:
            yield {"node": node, "refused": f"Ray placed it on node {node}, another host than the store's, and {why}"}
            return
        node_home = Path(env.get("OPTLAB_NODE_HOME") or "~/.optlab-node").expanduser()
        (node_home / "scratch").mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"run{run_id}-", dir=node_home / "scratch"))
        env.update(OPTLAB_HOME=str(scratch), OPTLAB_STORE_URL=grant["url"], OPTLAB_STORE_TOKEN=grant["token"],
                   OPTLAB_STORE_RUN=str(run_id), OPTLAB_DATA=env.get("OPTLAB_DATA") or str(node_home / "data"))
        log_path = scratch / "runs" / str(run_id) / "worker.log"
        log_path.parent.mkdir(parents=True)
    with open(log_path, "ab") as out:
        where = f" (store service {grant['url']}, scratch {scratch})" if scratch else ""
        out.write(f"{time.strftime('%H:%M:%S')} Ray task pid {os.getpid()} on node {node} starts the worker{where}\n"
                  .encode())
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "optlab.worker", str(run_id)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    shipped = None
    try:
        yield {"node": node, "task_pid": os.getpid(), "worker_pid": proc.pid, "scratch": str(scratch or "")}
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
        if scratch is not None:
            shipped = _ship(scratch, env, node)
    if shipped is not None:
        yield shipped
    yield proc.returncode


def _service_problem(grant: dict | None) -> str | None:
    """Why a worker here could not write the store through the service, or None."""
    if not grant:
        return "its scheduler serves no store service"
    import urllib.request
    try:
        with urllib.request.urlopen(grant["url"] + "/v1/ping", timeout=PROBE_S) as reply:
            reply.read()
        return None
    except OSError as e:
        return f"the store service at {grant['url']} cannot be reached from there ({getattr(e, 'reason', e)})"


def _ship(scratch: Path, env: dict, node: str) -> dict:
    """Send the run's folder back through the service, then remove the scratch folder; kept, and
    said where, when it could not be sent."""
    import subprocess
    try:
        done = subprocess.run([sys.executable, "-m", "optlab.storeservice", "ship"], env=env, capture_output=True,
                              text=True, timeout=SHIP_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        return {"kept": f"its folder stays on node {node} in {scratch}: {_one_line(e)}"}
    said = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        return {"shipped": said[-1] if said else "shipped"}
    return {"kept": f"its folder stays on node {node} in {scratch}: " + (said[-1] if said else f"exit {done.returncode}")}


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


@dataclasses.dataclass(frozen=True)
class NodeShape:
    """What the cluster's nodes can hold: the most GPUs and CPUs on one node, and the CPUs a GPU
    can count on (the fewest per GPU over the nodes that have GPUs)."""
    gpus: int
    cpus: int
    cpus_per_gpu: int

    @classmethod
    def of(cls, nodes: list[dict]) -> "NodeShape":
        with_gpus = [n for n in nodes if n.get("GPU", 0) >= 1]
        return cls(int(max((n.get("GPU", 0) for n in nodes), default=0)),
                   int(max((n.get("CPU", 0) for n in nodes), default=0)),
                   max(1, min((int(n.get("CPU", 0) // n["GPU"]) for n in with_gpus), default=1)))


def task_resources(config: dict, cluster_has_gpus: bool, shape: NodeShape) -> dict:
    """A run's Ray task asks for its GPUs on a GPU cluster (unless it runs on the CPU), with the
    CPUs that come with them on the node: Ray gives a task OMP_NUM_THREADS = its CPUs, and one
    thread would starve the `cpu` input pipeline. On the CPU it asks for a CPU per rank."""
    gpus = int(config.get("gpus") or 1)
    if cluster_has_gpus and config.get("device") != "cpu":
        return {"num_gpus": gpus, "num_cpus": gpus * shape.cpus_per_gpu}
    return {"num_cpus": gpus}


# -- the scheduler's side -------------------------------------------------------------------------------
class RayTask:
    """One run's task, seen from the scheduler: what it reported, and a cancel sent once."""

    def __init__(self, ref, asks: str):
        self.ref = ref          # the task's ObjectRefGenerator
        self.asks = asks        # '1 GPU(s) and 8 CPU(s)', '1 CPU': what it asked the cluster for
        self.cancelled = False
        self.asked_at = time.monotonic()
        self.placed = False     # the task said where it runs

    def unplaced_for(self) -> float:
        """How long Ray has held the task without placing it (0 once placed)."""
        return 0.0 if self.placed else time.monotonic() - self.asked_at

    def poll(self) -> tuple[str, object] | None:
        """None while the task has nothing new to say; ('node', report) where it runs (or
        {'refused': why}); ('shipped', what) or ('kept', why) for the run folder of a worker on
        another host; ('exit', code) when the worker ended; ('lost', why) when Ray lost it."""
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
        if not isinstance(said, dict):
            return "exit", said
        kind = next((k for k in ("shipped", "kept") if k in said), "node")
        self.placed = True
        return kind, (said[kind] if kind != "node" else said)

    def cancel(self) -> None:
        """ray.cancel once (a second one could interrupt the task's own clean-up)."""
        if not self.cancelled:
            import ray
            self.cancelled = True
            ray.cancel(self.ref)


class RayCluster:
    """A scheduler's connection to a Ray cluster: connects in the background (ray.init can block
    for minutes), says why it is not connected, and knows how many runs the cluster takes."""

    def __init__(self, address: str, store=None):
        self.address = address
        self.store = store
        self.host = host_id()          # where the store is: a task on another host writes through the service
        self.service = None            # optlab.storeservice.StoreService, once connected
        self.place_timeout_s = place_timeout_s()   # a bad value is refused when the scheduler is made
        self.connected = False
        self.problem: str | None = f"connecting to the Ray cluster at {address}"
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._resources: dict = {}
        self._shape = NodeShape(0, 0, 1)
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
        if self.store is not None:
            from optlab.storeservice import shared_service
            try:   # where the nodes reach this process: its address as the cluster sees it
                self.service = shared_service(self.store, ray.util.get_node_ip_address())
            except (OSError, ValueError) as e:
                self._failed(f"the store service for the Ray cluster's nodes cannot start ({_one_line(e)}); "
                             "queued runs wait")
                return
        self.connected, self.problem = True, None
        log.info("connected to the Ray cluster at %s: %s; store service for other hosts at %s", self.address,
                 self.describe(), self.service.url if self.service else "none")

    def _failed(self, problem: str) -> None:
        if problem != self.problem:
            log.warning(problem)
        self.problem = problem
        self._retry_at = time.monotonic() + RETRY_S

    def _read(self, force: bool = False) -> None:
        if force or time.monotonic() - self._read_at > REFRESH_S:
            import ray
            self._resources = ray.cluster_resources()
            self._shape = NodeShape.of([n["Resources"] for n in ray.nodes() if n.get("Alive")])
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
        return task_resources(config, bool(self.gpus), self._shape)

    def never_fits(self, config: dict) -> str | None:
        """Why no node of the cluster can ever run this run, or None."""
        asks = self._asks(config)
        gpus, cpus = asks.get("num_gpus", 0), asks.get("num_cpus", 0)
        if gpus > self._shape.gpus:
            return (f"it needs {gpus} GPUs on one node and the largest node of the Ray cluster at {self.address} "
                    f"has {self._shape.gpus}: it could never start")
        if cpus > self._shape.cpus:
            return (f"it needs {cpus} CPUs on one node (a rank each) and the largest node of the Ray cluster at "
                    f"{self.address} has {self._shape.cpus}: it could never start")
        return None

    def submit(self, run_id: int, config: dict, env: dict, log_path, grace_s: float) -> RayTask:
        asks = self._asks(config)
        grant = self.service.grant(run_id) if self.service is not None else None
        ref = _remote().options(name=f"optlab run #{run_id}", **asks).remote(
            run_id, env, str(log_path), self.host, grace_s, grant)
        what = (f"{asks['num_gpus']} GPU(s) and {asks['num_cpus']} CPU(s)" if "num_gpus" in asks
                else f"{asks['num_cpus']} CPU" + ("s" if asks["num_cpus"] > 1 else ""))
        return RayTask(ref, what)
