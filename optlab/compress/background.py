"""Compress a finished run from the pages: `python -m optlab compress ID --steps JSON` started in
the background, in a process of its own, as the scheduler starts a worker. Its log and pid sit in
the run's folder, so any page (and any visitor) can see that it is under way and how it ended;
the variants land in the run's summary exactly as the command's do.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from optlab.store import Store

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
LOG = "compress.log"
PID = "compress.pid"


class CompressBusy(RuntimeError):
    """A compression of this run is already under way, or a training run shares the machine."""


@dataclass(frozen=True)
class JobState:
    running: bool
    pid: int | None
    log_tail: str | None


def state(store: Store, run_id: int) -> JobState | None:
    """The run's latest background compression, or None when there has been none."""
    from optlab.scheduler import pid_alive
    from optlab.worker import log_tail
    folder = store.artifacts_dir(run_id, create=False)
    if not (folder / PID).exists():
        return None
    try:
        pid = int((folder / PID).read_text().strip())
    except (OSError, ValueError):
        pid = None
    return JobState(pid_alive(pid), pid, log_tail(folder / LOG, 20))


def busy_reason(store: Store, run_id: int) -> str | None:
    """Why a compression of `run_id` should not start now, or None."""
    current = state(store, run_id)
    if current and current.running:
        return f"a compression of run #{run_id} is already under way (pid {current.pid})"
    running = store.list(status="running")
    if running:
        ids = ", ".join(f"#{r.id}" for r in running)
        return (f"run {ids} is training on this server: a compression now would share the machine with it, "
                "and neither's figures would be its own. Compress when it has finished")
    return None


def with_recorded_benchmark(steps: list[dict], recorded: list[dict]) -> list[dict]:
    """`steps` timed with the benchmark settings the run was first compressed with, when it had
    some and `steps` names none: new variants are then measured like the ones already on its chart."""
    if any(s.get("method") == "benchmark" for s in steps):
        return steps
    return [s for s in recorded if s.get("method") == "benchmark"][:1] + steps


def start(store: Store, run_id: int, steps: list[dict], device: str = "auto") -> int:
    """Start compressing finished run `run_id` with `steps`; returns the process id.

    Raises CompressBusy (see `busy_reason`). The steps are validated by the command itself, which
    writes its refusal to the log like any other outcome."""
    reason = busy_reason(store, run_id)
    if reason:
        raise CompressBusy(reason)
    run = store.get(run_id)
    steps = with_recorded_benchmark(steps, (run.config if run else {}).get("compress") or [])
    folder = store.artifacts_dir(run_id)
    env = dict(os.environ, OPTLAB_HOME=str(store.home), PYTHONUNBUFFERED="1")
    if Path(PACKAGE_ROOT).name not in ("site-packages", "dist-packages"):   # a checkout, not an install
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    with open(folder / LOG, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "optlab", "compress", str(run_id), "--steps", json.dumps(steps),
                                 "--device", device], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=PACKAGE_ROOT, start_new_session=True)
    (folder / PID).write_text(str(proc.pid))
    from optlab.naming import steps_name
    store.add_event(run_id, f"compression started from the pages (pid {proc.pid}): {steps_name(steps)}")
    return proc.pid
