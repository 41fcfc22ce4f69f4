"""One TensorBoard per OPTLAB_HOME, serving every run's profiler traces.

`start()` launches `tensorboard --logdir OPTLAB_HOME/runs` once and records its pid and port in
OPTLAB_HOME/tensorboard.json; later calls (other sessions, other pages) reuse it while it answers.
Address: OPTLAB_TB_HOST / OPTLAB_TB_PORT, default 127.0.0.1:6006.

The torch-tb-profiler plugin names a run after the folder holding its trace, relative to the
log directory ("12/tb/run12"), and its page has no deep links: the URL opens the plugin and the
person picks that run in its Runs list. Its charts load Google Charts from the internet, so
offline the page stays blank; the in-app Profile page shows the same figures without it.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from optlab.store import optlab_home
from optlab.scheduler import pid_alive

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 6006
PLUGIN = "pytorch_profiler"
OFFLINE_NOTE = ("TensorBoard's profiler page draws its charts with Google Charts from the internet: "
                "without internet access it stays blank.")


class TensorBoardError(RuntimeError):
    """TensorBoard could not be started or reached; the message says why and what to change."""


@dataclass
class TensorBoard:
    pid: int
    host: str
    port: int
    logdir: str
    reused: bool = False

    @property
    def url(self) -> str:
        # listening on every interface: the address the room uses (OPTLAB_PUBLIC_HOST, set by make workshop)
        host = (os.environ.get("OPTLAB_PUBLIC_HOST") or socket.gethostname()) if self.host in ("0.0.0.0", "::") \
            else self.host
        return f"http://{host}:{self.port}/"

    @property
    def plugin_url(self) -> str:
        return f"{self.url}#{PLUGIN}"

    @property
    def _probe_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    def data_url(self, route: str) -> str:
        """The URL of one of the profiler plugin's JSON endpoints, e.g. 'runs' or 'views?run=...'."""
        return f"http://{self._probe_host}:{self.port}/data/plugin/{PLUGIN}/{route}"

    def answers(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self._probe_host}:{self.port}/data/plugins_listing",
                                        timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False


def address() -> tuple[str, int]:
    """(host, port) from OPTLAB_TB_HOST / OPTLAB_TB_PORT, validated."""
    host = os.environ.get("OPTLAB_TB_HOST", DEFAULT_HOST).strip() or DEFAULT_HOST
    raw = os.environ.get("OPTLAB_TB_PORT", str(DEFAULT_PORT)).strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise TensorBoardError(f"OPTLAB_TB_PORT must be a port number 1..65535, not {raw!r}")
    return host, int(raw)


def _state_file(home: Path) -> Path:
    return home / "tensorboard.json"


def command(home: str | Path | None = None, host: str | None = None, port: int | None = None) -> list[str]:
    """The command line that serves OPTLAB_HOME/runs (what `start` runs, and what the CLI prints)."""
    home = Path(home) if home else optlab_home()
    default_host, default_port = address()
    return ["tensorboard", "--logdir", str(home / "runs"), "--host", host or default_host,
            "--port", str(port or default_port)]


def running(home: str | Path | None = None) -> TensorBoard | None:
    """The TensorBoard recorded for this home, if its process is alive and it answers."""
    home = Path(home) if home else optlab_home()
    try:
        data = json.loads(_state_file(home).read_text())
        tb = TensorBoard(int(data["pid"]), data["host"], int(data["port"]), data["logdir"], reused=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tb if pid_alive(tb.pid) and tb.answers() else None


def start(home: str | Path | None = None, *, host: str | None = None, port: int | None = None,
          wait_s: float = 60.0) -> TensorBoard:
    """Start TensorBoard over OPTLAB_HOME/runs, or return the one already serving it.

    Raises TensorBoardError when it does not come up within `wait_s` (a port already taken, say),
    with the end of its log.
    """
    home = Path(home) if home else optlab_home()
    (home / "runs").mkdir(parents=True, exist_ok=True)
    default_host, default_port = address()
    host, port = host or default_host, int(port or default_port)
    # One starter at a time: two pages clicking "Open in TensorBoard" together start one server.
    with open(home / "tensorboard.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = running(home)
        if current is not None:
            return current
        log = home / "tensorboard.log"
        cmd = [sys.executable, "-m", "tensorboard.main"] + command(home, host, port)[1:]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # outlives the page's rerun and its process
        tb = TensorBoard(proc.pid, host, port, str(home / "runs"))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-800:]
                raise TensorBoardError(f"TensorBoard exited at start (port {port} taken? set OPTLAB_TB_PORT): {tail}")
            if tb.answers(timeout=0.5):
                _state_file(home).write_text(json.dumps(asdict(tb) | {"reused": False}))
                return tb
            time.sleep(0.3)
        proc.terminate()
        raise TensorBoardError(f"TensorBoard did not answer on {host}:{port} within {wait_s:.0f} s; see {log}")


def stop(home: str | Path | None = None) -> bool:
    """Stop the TensorBoard this home started; True if one was stopped."""
    home = Path(home) if home else optlab_home()
    try:
        pid = int(json.loads(_state_file(home).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    _state_file(home).unlink(missing_ok=True)
    if not pid_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:   # our child: reap it
                return True
        except ChildProcessError:
            if not pid_alive(pid):
                return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def run_name(trace_dir: str | Path, home: str | Path | None = None) -> str:
    """The name the profiler plugin gives a trace folder: its path relative to the log directory."""
    home = Path(home) if home else optlab_home()
    return os.path.relpath(Path(trace_dir).resolve(), (home / "runs").resolve())


def run_link(tb: TensorBoard, trace_dir: str | Path, home: str | Path | None = None) -> dict:
    """Where to look: the plugin's URL and the run to pick in its Runs list."""
    name = run_name(trace_dir, home)
    return {"url": tb.plugin_url, "run": name,
            "how": f"open {tb.plugin_url} and choose run '{name}' (workers: train, inference)",
            "note": OFFLINE_NOTE}
