"""Background runs from the command line: `python -m optlab submit|status|cancel|queue`.

    submit [run flags] [--user NAME]   validate against this machine, queue, print the id
    status ID [--json]                 state, live progress, result, last log lines
    cancel ID                          queued: cancelled at once; running: stopped within seconds
    queue [--slots N] [--exit-when-idle]  the scheduler in the foreground
"""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import signal
import sys
import time

from optlab.cli import (add_run_arguments, command, config_from_args, get_run, get_store, json_view, print_table, safe,
                        summary_rows)


def _submitter() -> str:
    try:
        return getpass.getuser()
    except Exception:   # no login name in some containers
        return ""


# -- submit -----------------------------------------------------------------------------------------
def _add_submit(p):
    add_run_arguments(p)
    p.add_argument("--user", default=None, help="who submits it (default: your login name); "
                                                "runs are handed out round-robin across users")
    p.add_argument("--label", help="a name for the run")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="with --gpus N > 1: first queue the same settings on one device, unless one is done "
                        "or queued, so the run gets its scaling efficiency (default: on)")


def _submit(args) -> int:
    from optlab import device as devices
    cfg = config_from_args(args)
    cfg.validate()   # the names first: no need to look at the GPU for a typo
    # Against the device the run would get here, found without loading torch; 'cuda' without
    # a GPU is described as the CPU, which validate() then refuses with the reason.
    cfg.validate(devices.probe(cfg.device))
    from optlab import ddp, repeats
    store, user = get_store(), _submitter() if args.user is None else args.user
    reference = ddp.reference_to_queue(store, cfg) if args.reference else None
    if reference is not None:   # a data-parallel run is measured against the same run on one device
        ref_ids = repeats.submit(store, reference, user=user,
                                 label=f"one-device reference for gpus={cfg.gpus}")
        print(f"queued run #{ref_ids[0]}: the same settings on one device, for the scaling efficiency "
              "(--no-reference to skip)", file=sys.stderr)
    ids = repeats.submit(store, cfg, user=user, label=args.label)
    print("\n".join(map(str, ids)))   # one id a line, for scripts
    if len(ids) > 1:
        print(f"queued {len(ids)} repeats of the same config: runs #{ids[0]}-#{ids[-1]}; "
              f"`python -m optlab show {ids[-1]}` gives the spread once they are done", file=sys.stderr)
    else:
        print(f"queued run #{ids[0]}; `python -m optlab status {ids[0]}` to follow it", file=sys.stderr)
    return 0


command("submit")((_add_submit, _submit))


# -- status -----------------------------------------------------------------------------------------
def _add_status(p):
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def status_view(store, run) -> dict:
    """What `status --json` prints: json_view plus the live fields of a background run."""
    out = json_view(run)
    position = next((i + 1 for i, r in enumerate(store.fair_queue()) if r.id == run.id), None)
    telemetry = store.metrics(run.id, "telemetry")
    out.update(progress=run.progress, log_tail=run.log_tail, worker_pid=run.worker_pid,
               heartbeat_at=run.heartbeat_at, cancel_requested=bool(run.cancel_requested),
               created_at=run.created_at, started_at=run.started_at, finished_at=run.finished_at,
               queue_position=position, telemetry_samples=len(telemetry),
               telemetry_source=telemetry[-1].get("source") if telemetry else None)
    return out


def _status(args) -> int:
    store, run = get_run(args.id, readonly=True)
    view = status_view(store, run)
    if args.json:
        print(json.dumps(view))
        return 0
    rows = summary_rows(run, store=store)
    rows.insert(1, ("submitted by", safe(run.user or "-")))
    if run.status == "queued":
        rows.append(("queue", f"position {view['queue_position']}"))
    if run.status == "running" and run.progress:
        rows.append(("progress", _progress_text(run.progress)))
    if run.heartbeat_at and run.status == "running":
        where = f" on the Ray cluster at {safe(run.cluster)}" if run.cluster else ""
        rows.append(("heartbeat", f"{time.time() - run.heartbeat_at:.1f} s ago (worker pid {run.worker_pid}{where})"))
    if run.cancel_requested and run.status == "running":
        rows.append(("cancel", "requested; stopping"))
    if view["telemetry_samples"]:
        rows.append(("telemetry", f"{view['telemetry_samples']} samples ({view['telemetry_source']})"))
    print_table(rows)
    if run.log_tail:
        print("\nlast log lines:")
        print("\n".join(safe(line) for line in run.log_tail.splitlines()[-10:]))
    return 0


def _progress_text(p: dict) -> str:
    text = p.get("phase", "?")
    if p.get("steps_total"):
        text += f", epoch {p.get('epoch')}/{p.get('epochs')}, step {p.get('step')}/{p['steps_total']}"
    if isinstance(p.get("loss"), (int, float)):
        text += f", loss {p['loss']:.3f}"
    if p.get("images_per_s"):
        text += f", {p['images_per_s']:,.0f} img/s"
    if p.get("eta_s") is not None and p.get("phase") == "train":
        text += f", ETA {p['eta_s']:.0f} s"
    return text


command("status")((_add_status, _status))


# -- cancel -----------------------------------------------------------------------------------------
def _add_cancel(p):
    p.add_argument("id", type=int)


def _cancel(args) -> int:
    from optlab.scheduler import cancel
    store, before = get_run(args.id)
    status = cancel(store, args.id)
    after = store.get(args.id)
    if before.status == "queued":
        print(f"run #{args.id} cancelled")
    elif before.status == "running" and after.status == "cancelled":
        print(f"run #{args.id} cancelled: {safe(after.error)}")
    elif before.status == "running":
        where = f" on the Ray cluster at {safe(after.cluster)}" if after.cluster else ""
        print(f"run #{args.id}: cancel requested; its process (pid {after.worker_pid}{where}) stops within seconds")
    else:
        print(f"run #{args.id} is already {status}; nothing to cancel")
        return 1
    return 0


command("cancel")((_add_cancel, _cancel))


# -- queue ------------------------------------------------------------------------------------------
def _add_queue(p):
    p.add_argument("--slots", type=int, help="runs at a time (default: one per visible GPU, 1 without a GPU)")
    p.add_argument("--exit-when-idle", action="store_true", help="return once nothing is queued or running")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between scheduling rounds")


def _queue(args) -> int:
    from optlab.scheduler import Scheduler, SchedulerBusy
    from optlab.store import StoreError
    if args.slots is not None and args.slots < 1:
        print(f"error: --slots must be >= 1, not {args.slots}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    scheduler = Scheduler(get_store(), slots=args.slots, poll_s=args.poll)
    stopped = []

    def on_signal(signum, frame):
        stopped.append(signal.Signals(signum).name)
        scheduler.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.exit_when_idle:
            scheduler.run_until_idle()
        else:
            scheduler.run_forever()
        if stopped:
            print(f"{stopped[0]}: stopping the workers; their runs end interrupted", flush=True)
            scheduler.stop(kill=True)
            return 128 + signal.Signals[stopped[0]].value
        scheduler.stop()
        return 0
    except SchedulerBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except StoreError as e:   # the store vanished or cannot be written: stop our workers, say why
        print(f"error: {e}", file=sys.stderr)
        scheduler.stop(kill=True)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


command("queue")((_add_queue, _queue))
