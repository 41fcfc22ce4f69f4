"""Data-parallel runs: a run with `gpus` > 1 trains as a DistributedDataParallel job under torchrun.

The worker stays the one process that owns the run (heartbeat, cancel, the store's final word);
for a multi-rank run it launches `torchrun --standalone --nproc-per-node N -m optlab.rank RUN_ID`
as its child and follows it (`launch`). Each rank trains on its own equal share of the training
images (optlab.rank); rank 0 writes the progress, the figures and the summary. NCCL on GPUs,
Gloo on the CPU.

This module does not import torch at load: the config check asks it how many ranks fit.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

PROGRESS_FILE = "ddp_progress.jsonl"   # rank 0's progress, one JSON object a line, for the worker
RESULT_FILE = "ddp_result.json"        # rank 0's summary, once the run is over
ERROR_FILE = "rank{rank}.error.json"   # a rank's exception, written where it happened
POLL_S = 0.25
TERM_GRACE_S = 10.0


def backend_for(device_kind: str) -> str:
    """The collective library: NCCL between GPUs, Gloo between CPU processes."""
    return "nccl" if device_kind == "cuda" else "gloo"


def rank_capacity(info) -> tuple[int, str]:
    """How many ranks this machine can give a run, and of what: its visible GPUs, or, on a
    CPU-only machine, its cores (one rank per core at most: more would only time-share)."""
    if info.is_gpu:
        from optlab.device import visible_gpus
        return len(visible_gpus()), "GPUs"
    from optlab.hostload import affinity_cpus
    return len(affinity_cpus()), "CPU cores (one rank per core at most)"


class DistributedFailure(RuntimeError):
    """A data-parallel run ended without its summary; the message says which rank and why."""


class Ranks:
    """Where this process stands in a data-parallel run: its rank, the world size, its local
    rank (the GPU it drives). A single-device run is rank 0 of 1."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def lead(self) -> bool:
        """Rank 0: the one that writes to the store (progress, events, metrics, weights, summary)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, environ=None) -> "Ranks":
        """From the variables torchrun sets for each process it starts."""
        env = os.environ if environ is None else environ
        return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))

    def __repr__(self) -> str:
        return f"Ranks(rank={self.rank}, world={self.world}, local_rank={self.local_rank})"


SINGLE = Ranks()


# -- in the ranks (optlab.rank calls these through optlab.runner) ---------------------------------------
def gather_rank_figures(ranks: Ranks, result, memory: dict) -> list[dict] | None:
    """Every rank's own figures, gathered on every rank (a collective: all ranks call it)."""
    import torch.distributed as dist

    from optlab.measure import percentile
    s = result.steady
    steady_ms = sum(s.step_ms)
    mine = {"rank": ranks.rank, "pid": os.getpid(), "steady_steps": len(s.step_ms), "images": s.images,
            "step_ms_p50": percentile(s.step_ms, 50), "step_ms_p90": percentile(s.step_ms, 90),
            "forward_backward_ms_p50": percentile(s.forward_backward_ms, 50),
            "optimizer_ms_p50": percentile(s.optimizer_ms, 50),
            "input_wait_share": sum(s.input_wait_ms) / steady_ms if steady_ms else None,
            "images_per_s": s.images / (steady_ms / 1000) if steady_ms else None,
            "peak_memory_mb": memory["process_peak_mb"] if memory["device_peak_allocated_mb"] is None
            else memory["device_peak_allocated_mb"],
            "train_seconds": result.train_seconds}
    everyone: list = [None] * ranks.world
    dist.all_gather_object(everyone, mine)
    return everyone


def distributed_figures(label: str, cfg, per_rank: list[dict], ranks: Ranks) -> dict:
    """What a data-parallel summary adds: its device label, how it was split and every rank's
    figures. (The scaling efficiency is computed when the run is read: `scaling_for`.)"""
    import torch.distributed as dist
    steps = [r["step_ms_p50"] for r in per_rank if r["step_ms_p50"]]
    backend = dist.get_backend() if dist.is_initialized() else backend_for("cpu")
    return {"device_label": f"{label} × {ranks.world} ranks ({backend})",   # rank 0's device, e.g. its share of the cores
            "peak_memory_scope": "rank 0's process or GPU; every rank's under distributed.ranks",
            "distributed": {
        "world_size": ranks.world, "backend": backend,
        "launcher": "torchrun (torch.distributed.run), DistributedDataParallel",
        "sharding": (f"each rank trains on 1 training image in {ranks.world}, from its rank on (the set cut "
                     f"to a multiple of {ranks.world}); batch size {cfg.batch_size} per rank, "
                     f"{cfg.batch_size * ranks.world} per optimizer step"),
        "timing": "rank 0's steps; every step ends with the ranks agreeing (the gradient all-reduce)",
        "ranks": per_rank,
        "step_ms_p50_max_over_min": max(steps) / min(steps) if steps else None}}


def allreduce_share(profile: dict | None) -> float | None:
    """The share of the profiled steps' device time (GPU kernels) or operator time (CPU) spent in
    collective communication, from the profile summary's categories; None without a profile."""
    if not profile:
        return None
    for row in profile.get("categories") or []:
        if row.get("category") == "communication":
            return row.get("share")
    return 0.0 if profile.get("categories") else None


# -- scaling efficiency ---------------------------------------------------------------------------------
# Settings that do not change what one training step does on one device
_NOT_THE_RUN = ("gpus", "repeats", "compress", "profile")


def reference_config(cfg):
    """The same run on one device: the run a data-parallel run is measured against."""
    return cfg.replace(gpus=1, repeats=1, compress=[])


def same_run(a: dict, b: dict) -> bool:
    keys = (set(a) | set(b)) - set(_NOT_THE_RUN)
    return all(a.get(k) == b.get(k) for k in keys)


def _machine(run) -> tuple[str | None, str]:
    """The kind and model of the device a run used, without the CPU thread count its name carries
    (a CPU rank has a share of the cores the one-device run had)."""
    s = run.summary or {}
    return s.get("device"), re.sub(r" \(\d+ threads?\)$", "", s.get("device_name") or "")


def find_reference(store, run) -> object | None:
    """The newest finished one-device run of the same config on the same kind of device as `run`."""
    for other in store.list(status="done"):
        if other.id != run.id and (other.config.get("gpus") or 1) == 1 and same_run(other.config, run.config) \
                and _machine(other) == _machine(run):
            return other
    return None


def scaling(run, reference) -> dict | None:
    """Scaling efficiency of a data-parallel run: its throughput over N times the one-device run's
    (1.0 = perfect), with throughput per device; None when either figure is missing."""
    summary, ref = run.summary or {}, (reference.summary if reference is not None else None) or {}
    world = (summary.get("distributed") or {}).get("world_size")
    mine, one = summary.get("train_images_per_s"), ref.get("train_images_per_s")
    if not world or not mine or not one:
        return None
    return {"reference_run": reference.id, "world_size": world, "images_per_s": mine,
            "images_per_s_per_device": mine / world, "one_device_images_per_s": one,
            "speedup": mine / one, "efficiency": mine / (world * one),
            "thin": bool((summary.get("throughput") or {}).get("thin") or (ref.get("throughput") or {}).get("thin"))}


def scaling_for(store, run) -> tuple[dict | None, str | None]:
    """(the scaling figures, None) or (None, why there are none) for a data-parallel run."""
    if (run.config.get("gpus") or 1) <= 1:
        return None, None
    if run.status != "done":
        return None, "the run has not finished"
    reference = find_reference(store, run)
    if reference is None:
        return None, ("no finished one-device run of the same settings on this device yet (`optlab submit` "
                      "queues one before a run with gpus > 1; or re-run this one with gpus 1)")
    figures = scaling(run, reference)
    return figures, None if figures else f"run #{reference.id} has no throughput figure"


# -- in the worker: torchrun as a child, followed -------------------------------------------------------
def launch(store, run_id: int, cfg, device_kind: str, on_progress: Callable[[dict], None] | None,
           should_stop: Callable[[], bool] | None, threads) -> dict:
    """Run `run_id` on `cfg.gpus` ranks under torchrun and return rank 0's summary. Rank 0's progress
    is handed to `on_progress` as it comes; a stop request ends torchrun (SIGTERM to it and its ranks,
    SIGKILL after a grace period) and raises RunCancelled; a rank that fails ends the whole job
    (torchrun stops the others) and raises DistributedFailure naming the rank and the reason."""
    from optlab.train import RunCancelled
    folder = store.artifacts_dir(run_id)
    for name in (PROGRESS_FILE, RESULT_FILE, *(ERROR_FILE.format(rank=r) for r in range(cfg.gpus))):
        (folder / name).unlink(missing_ok=True)
    log_path = folder / "ranks.log"
    cores = threads.cores   # the worker's CPU plan (optlab.hostload)
    env = dict(os.environ, OPTLAB_HOME=str(store.home), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(max(1, cores // cfg.gpus)))   # the cores shared between the ranks
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={cfg.gpus}", "--monitor-interval=0.2", "-m", "optlab.rank", str(run_id)]
    store.add_event(run_id, f"torchrun: {cfg.gpus} ranks ({backend_for(device_kind)}), "
                            f"{env['OMP_NUM_THREADS']} CPU thread(s) each; their output in {log_path.name}")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    follower = _ProgressFollower(folder / PROGRESS_FILE, on_progress)
    try:
        while proc.poll() is None:
            follower.read()
            if should_stop is not None and should_stop():
                _end(proc)
                raise RunCancelled()
            time.sleep(POLL_S)
    except BaseException:
        _end(proc)   # a SIGTERM to the worker (a cancel, a shutdown) must not leave ranks behind
        raise
    follower.read()
    result = folder / RESULT_FILE
    if proc.returncode == 0 and result.exists():
        return json.loads(result.read_text())
    raise DistributedFailure(failure_reason(folder, cfg.gpus, proc.returncode, log_path))


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun (it passes the signal to its ranks and waits for them), SIGKILL after the grace."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class _ProgressFollower:
    """Reads the lines rank 0 appended to its progress file since the last read."""

    def __init__(self, path: Path, on_progress):
        self.path, self.on_progress, self.offset = path, on_progress, 0

    def read(self) -> None:
        if self.on_progress is None or not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]   # a line still being written waits for the next read
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                self.on_progress(json.loads(line))
            except ValueError:
                continue


# torchrun's report of each failed rank ("Failures:" and "Root Cause"): "rank : 1 (local_rank: 1)",
# then "exitcode : -9 (pid: 4405)"
_FAILED_RANK = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank[^\n]*\n\s*exitcode\s*:\s*(-?\d+)")
# what torchrun sends the other ranks when one fails: a rank ended by these did not cause the failure
_STOPPED_BY_TORCHRUN = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def failure_reason(folder: Path, world: int, returncode: int, log_path: Path) -> str:
    """Why a data-parallel run ended without a summary, in one line: a rank that died of a signal
    torchrun does not send (killed by a person or the kernel: it could write no reason), else the
    first rank that raised (from the error file it wrote), else a rank torchrun reports and its exit,
    else torchrun's own exit code and last lines. (torchrun's "root cause" is the failure it saw
    first, which can be a rank it stopped itself.)"""
    from optlab.scheduler import describe_exit
    errors = []
    for rank in range(world):
        path = folder / ERROR_FILE.format(rank=rank)
        try:
            errors.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    text = log_path.read_text(errors="replace")[-50000:] if log_path.exists() else ""
    failed = [(int(rank), int(code)) for rank, code in _FAILED_RANK.findall(text)]
    killed = [(rank, code) for rank, code in failed if code < 0 and -code not in _STOPPED_BY_TORCHRUN]
    if killed:
        rank, code = killed[0]
        return f"rank {rank} of {world} {describe_exit(code)}; torchrun ended the other ranks"
    if errors:
        first = min(errors, key=lambda e: e.get("time", 0))
        return f"rank {first['rank']} of {world} failed: {first['error']}; torchrun ended the other ranks"
    if failed:
        rank, code = failed[-1]   # the root cause comes last
        return f"rank {rank} of {world} {describe_exit(code)}; torchrun ended the other ranks"
    lines = [line for line in text.splitlines() if line.strip()][-3:]
    return f"torchrun exited with code {returncode} without a summary" + (": " + " | ".join(lines) if lines else "")


def reference_to_queue(store, cfg):
    """The one-device run to queue before a data-parallel run of `cfg`, or None when one of the same
    settings is already done, queued or running here (its device is checked when it is read)."""
    if cfg.gpus <= 1:
        return None
    wanted = reference_config(cfg).to_dict()
    if any((other.config.get("gpus") or 1) == 1 and same_run(other.config, wanted)
           for other in store.list(status=("done", "queued", "running"))):
        return None
    return reference_config(cfg)


def distributed_rows(run, store=None) -> list[tuple[str, str]]:
    """The lines `show` and the Runs page add for a data-parallel run: the ranks, each rank's step
    time, and the scaling efficiency (or why there is none yet)."""
    d = (run.summary or {}).get("distributed")
    if not d:
        return []
    rows = [("ranks", f"{d['world_size']} ({d['backend']}): {d['sharding']}")]
    for r in d["ranks"]:
        wait = r.get("input_wait_share")
        rows.append((f"  rank {r['rank']}", f"{r['steady_steps']} steady steps, step p50 {r['step_ms_p50'] or 0:,.1f} ms, "
                                            f"{r['images_per_s'] or 0:,.0f} img/s on its share"
                     + (f", input wait {100 * wait:.1f} %" if wait is not None else "")
                     + (f", peak {r['peak_memory_mb']:,.0f} MB" if r.get("peak_memory_mb") else "")))
    share = d.get("allreduce_share")
    if share is not None:
        rows.append(("all-reduce", f"{100 * share:.1f} % of the profiled steps' {d.get('allreduce_basis', 'time')}"))
    figures, why = scaling_for(store, run) if store is not None else (None, None)
    if figures:
        rows.append(("scaling", f"{100 * figures['efficiency']:.0f} % efficiency: {figures['speedup']:.2f}x the "
                                f"one-device run #{figures['reference_run']} ({figures['one_device_images_per_s']:,.0f} "
                                f"img/s) on {figures['world_size']} ranks; {figures['images_per_s_per_device']:,.0f} "
                                "img/s per rank" + (" (thin measurement)" if figures["thin"] else "")))
    elif why:
        rows.append(("scaling", why))
    return rows
