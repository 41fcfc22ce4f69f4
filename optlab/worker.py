"""The worker: `python -m optlab.worker RUN_ID` trains one stored run in a process of its own.

The scheduler starts it in a new session (its own process group, so the whole group can be
stopped) with stdout and stderr going to OPTLAB_HOME/runs/<id>/worker.log. A side thread writes
the heartbeat, the latest progress (about once a second) and the log's last lines to the store,
and watches for a cancel; a telemetry thread samples the GPU or the process. The worker exits
when the run ends, so its GPU memory goes back to the driver.

SIGTERM ends the run as cancelled when a cancel was asked for, otherwise as interrupted. When
the scheduler that started it dies, the worker stops too (interrupted): a restarted scheduler
must never find the GPU busy with a run that nobody watches. When its store disappears, it
stops too: nothing it measured could be kept.

A foreground `python -m optlab run` is a Worker in the command's own process (`foreground=True`):
it heartbeats, obeys a cancel and is watched by the scheduler like any worker.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from optlab.store import Store, StoreError, StoreMissing
from optlab.storeservice import worker_store

TICK_S = 0.5            # heartbeat, cancel check and progress hand-off
PROGRESS_EVERY_S = 0.9  # progress written about once a second (phase changes at once)
LOG_TAIL_LINES = 40
ORPHAN_HARD_EXIT_S = 20.0


class Stopped(KeyboardInterrupt):
    """SIGTERM without a cancel request: the scheduler shut down, or someone stopped the worker.
    Unwinds like Ctrl-C (the runner records no failure and re-raises); the worker then marks the
    run interrupted with the reason."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str | None:
    """The last `lines` lines of a log file (read from its end), or None if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _set_threads(cfg):
    """Before torch loads: split the cores this process may use (affinity, cgroup quota, the
    scheduler's share in OMP_NUM_THREADS) between loader workers and intra-op threads, so the
    OpenMP pool is created at its final size. Returns the plan (optlab.hostload.ThreadPlan)."""
    from optlab.hostload import plan_for
    plan = plan_for(cfg)
    os.environ["OMP_NUM_THREADS"] = str(plan.intra_op_threads)
    os.environ["MKL_NUM_THREADS"] = str(plan.intra_op_threads)
    return plan


class Worker:
    def __init__(self, store: Store, run_id: int, *, foreground: bool = False,
                 on_progress: Callable[[dict], None] | None = None):
        """`foreground`: the run belongs to a command in a terminal; its progress goes to
        `on_progress` (a progress bar) and its messages to stderr, not to a worker log."""
        self.store, self.run_id = store, run_id
        self.foreground, self.show_progress = foreground, on_progress
        self.say = (lambda message: print(message, file=sys.stderr, flush=True)) if foreground else _say
        # The folder is made when the run starts (runner.prepare_run_folder), where a full or
        # read-only disk fails the run with the reason; the scheduler made it already for the log.
        self.log_path = store.artifacts_dir(run_id, create=False) / "worker.log"
        self.cancel = threading.Event()
        self.stop_reason: str | None = None
        self.signalled = False
        self.unwinding = False        # set while a SIGTERM may still unwind the run
        self.sampler = None
        self.parent = int(os.environ.get("OPTLAB_SCHEDULER_PID", "0")) or None
        self.parent_name = os.environ.get("OPTLAB_PARENT_NAME", "scheduler")   # or the Ray task that runs it
        self._progress: dict | None = None
        self._last_phase: str | None = None
        self._last_line = 0.0
        self._done = threading.Event()
        self._beat_trouble: str | None = None

    # -- taking the run ---------------------------------------------------------------------------
    def take(self) -> bool:
        """Hold the run: the one the scheduler claimed for us, or a queued one when started by hand.
        False when it is not ours to run (finished, or another worker has it)."""
        run = self.store.get(self.run_id)
        if run.status == "queued" and self.store.claim(self.run_id, os.getpid()):
            return True
        if self.store.attach_worker(self.run_id, os.getpid()):
            return True
        run = self.store.get(self.run_id)
        self.say(f"run #{self.run_id} is {run.status}" + (f" with worker pid {run.worker_pid}" if run.worker_pid else "")
                 + "; nothing to do")
        return False

    # -- signals ---------------------------------------------------------------------------------------
    def on_sigterm(self, signum, frame) -> None:
        self.signalled = True
        if not self.cancel.is_set():
            try:
                if self.store.get(self.run_id).cancel_requested:
                    self.cancel.set()
            except Exception as e:
                self.say(f"could not read the cancel flag: {type(e).__name__}: {e}")
        if not self.cancel.is_set() and self.stop_reason is None:
            self.stop_reason = "stopped by SIGTERM: the scheduler shut down, or someone terminated the worker"
        self.say("SIGTERM: " + ("cancelling" if self.cancel.is_set() else "stopping"))
        if self.unwinding and "optlab.profiling" in sys.modules and sys.modules["optlab.profiling"].recording():
            return   # the training loop checks should_stop within half a second; never raise into the profiler
        if self.unwinding:
            self.unwinding = False   # raise once; let the unwinding itself finish
            if self.cancel.is_set() and "optlab.train" in sys.modules:
                from optlab.train import RunCancelled
                raise RunCancelled()
            raise Stopped(self.stop_reason or "cancelled on request")

    def _should_stop(self) -> bool:
        return self.cancel.is_set() or self.stop_reason is not None

    # -- the side thread ---------------------------------------------------------------------------
    def _beat(self) -> None:
        sent, sent_at, tail_size = None, 0.0, -1
        while True:
            progress = self._progress
            now = time.time()
            fresh = progress is not sent and (now - sent_at >= PROGRESS_EVERY_S
                                              or (sent or {}).get("phase") != progress.get("phase")
                                              or progress.get("epoch_done"))
            size = self.log_path.stat().st_size if self.log_path.exists() else -1
            try:
                cancel = self.store.heartbeat(self.run_id, _finite(progress) if fresh else None,
                                              log_tail(self.log_path) if size != tail_size else None)
                if fresh:
                    sent, sent_at = progress, now
                    if progress.get("phase") == "train" and progress.get("step") is not None:
                        # the history behind the live loss / throughput curve
                        self.store.add_metric(self.run_id, "progress", _finite(
                            {k: progress.get(k) for k in ("step", "epoch", "loss", "images_per_s")}),
                            step=progress["step"])
                tail_size = size
                self._beat_trouble = None
                if cancel and not self.cancel.is_set():
                    self.cancel.set()
                    self.say("cancel requested")
            except StoreMissing as e:   # nothing this run measures could be kept: stop it
                if self.stop_reason is None:
                    self._stop_self(f"its store is gone ({e})")
            except Exception as e:  # a busy store must not stop the heartbeat; say so once
                message = f"heartbeat failed: {type(e).__name__}: {e}"
                if message != self._beat_trouble:
                    self._beat_trouble = message
                    self.say(message)
            if self.parent and os.getppid() != self.parent and self.stop_reason is None:
                self._orphaned()
            if self._done.wait(TICK_S):
                return

    def _orphaned(self) -> None:
        self._stop_self(f"the {self.parent_name} that started it (pid {self.parent}) is gone")

    def _stop_self(self, reason: str) -> None:
        self.stop_reason = reason
        self.say(reason)
        os.kill(os.getpid(), signal.SIGTERM)
        # If the run cannot unwind in time, end the whole group (a foreground run: only itself,
        # its group is a person's shell job); a restarted scheduler then finds the pid gone.
        end = ((lambda: os.kill(os.getpid(), signal.SIGKILL)) if self.foreground else
               (lambda: os.killpg(os.getpgrp(), signal.SIGKILL)))
        timer = threading.Timer(ORPHAN_HARD_EXIT_S, end)
        timer.daemon = True
        timer.start()

    # -- progress (called from the training loop: keep it cheap) -------------------------------------
    def on_progress(self, state: dict) -> None:
        state = dict(state, t=time.time())
        self._progress = state
        phase = state.get("phase")
        if self.sampler is not None:
            last = state.get("epoch_done") and state.get("epoch") == state.get("epochs")
            self.sampler.phase = "after training" if last else phase
        if self.show_progress is not None:
            self.show_progress(state)
            return
        now = time.monotonic()
        if phase != self._last_phase or state.get("epoch_done") or now - self._last_line >= 10:
            self._last_phase, self._last_line = phase, now
            _say(_progress_line(state))

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> int:
        if not self.foreground:
            _say(f"worker pid {os.getpid()} (group {os.getpgrp()}) runs #{self.run_id}; {self.store.where}")
        beat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self.unwinding = True
        error: BaseException | None = None
        try:
            self.on_progress({"phase": "starting"})
            beat.start()
            from optlab.config import RunConfig
            cfg = RunConfig.from_dict(self.store.get(self.run_id).config)  # a broken config fails before torch loads
            threads = _set_threads(cfg)
            from optlab.runner import execute
            from optlab.telemetry import TelemetrySampler
            self.sampler = TelemetrySampler(self.store, self.run_id, _device_for(cfg.device)).start()
            summary = execute(self.store, self.run_id, on_progress=self.on_progress, should_stop=self._should_stop,
                              threads=threads)
            self.unwinding = False
            if summary is not None:
                self._add_energy(summary)
        except BaseException as e:  # Stopped, or a crash outside the runner (which records its own)
            self.unwinding = False
            error = e
            if not isinstance(e, (Stopped, KeyboardInterrupt, StoreError)):
                traceback.print_exc()
        self.unwinding = False
        if self.sampler is not None:
            self.sampler.stop()
        try:
            self._settle(error)
            run = self.store.get(self.run_id)
        except StoreError as e:   # gone or unwritable: nothing more can be recorded
            self._done.set()
            self.say(f"run #{self.run_id} could not be recorded: {e}")
            return 2
        if not self.foreground:
            _say(f"run #{self.run_id} {run.status}" + (f": {run.error}" if run.error else ""))
        self._done.set()
        beat.join(timeout=5)
        try:
            self.store.heartbeat(self.run_id, _finite(self._progress), log_tail(self.log_path))
        except Exception:
            pass
        return 0 if run.status == "done" else 1

    def _settle(self, error: BaseException | None) -> None:
        """Leave the run in the state that says why it ended: the runner's outcome, unless a
        SIGTERM ended it (cancelled or interrupted) or something failed outside the runner."""
        run = self.store.get(self.run_id)
        if run.status == "done":
            return
        if self.signalled and (self.cancel.is_set() or run.cancel_requested):
            status, why = "cancelled", "cancelled on request"
        elif self.stop_reason and run.status != "failed":   # a failure said elsewhere says more (Ray lost its task)
            status, why = "interrupted", self.stop_reason
        elif run.status == "running" and isinstance(error, KeyboardInterrupt):
            status, why = "cancelled", "interrupted from the keyboard"
        elif run.status == "running":
            status = "failed"
            why = f"{type(error).__name__}: {error}" if error else "the worker ended without finishing the run"
        else:
            return
        if run.status != status or run.error != why:
            self.store.finish(self.run_id, status, error=why)
            self.store.add_event(self.run_id, f"{status}: {why}", level="error" if status == "failed" else "warning")

    def _add_energy(self, summary: dict) -> None:
        from optlab.telemetry import telemetry_figures
        figures = telemetry_figures(list(self.sampler.rows), summary, self.sampler.source)
        self.store.update(self.run_id, summary={**summary, **figures})


def _device_for(requested: str):
    """The torch device the run will use, or None when the config names none that exists."""
    from optlab import device as devices
    try:
        return devices.resolve(requested)
    except Exception:
        return None


def _finite(state: dict | None) -> dict | None:
    """Progress with NaN / infinity replaced by None, so the stored JSON is valid everywhere."""
    if state is None:
        return None
    return {k: (None if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")) else v)
            for k, v in state.items()}


def _progress_line(state: dict) -> str:
    phase = state.get("phase")
    if "steps_total" not in state:
        return f"{phase}"
    loss = state.get("loss")
    line = (f"{phase}: epoch {state.get('epoch')}/{state.get('epochs')} step {state.get('step')}/{state['steps_total']}"
            + (f" loss {loss:.3f}" if isinstance(loss, (int, float)) else ""))
    if "test_accuracy" in state:
        return line + f" test accuracy {100 * state['test_accuracy']:.2f} %"
    if "images_per_s" in state:
        return line + f" {state['images_per_s']:,.0f} img/s ETA {state.get('eta_s', 0):.0f} s"
    return line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m optlab.worker RUN_ID", file=sys.stderr)
        return 2
    run_id = int(argv[0])
    try:
        store = worker_store()   # through the store service on another host than the store's
        if store.get(run_id) is None:
            print(f"no run #{run_id} in {store.home}", file=sys.stderr)
            return 2
        worker = Worker(store, run_id)
        signal.signal(signal.SIGTERM, worker.on_sigterm)
        if not worker.take():
            return 3
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
