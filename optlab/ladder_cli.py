"""The ablation ladder from the command line: `python -m optlab ladder`.

    ladder ID [--rungs a,b,...] [--repeats N]        queue a ladder climbing from run ID's settings
    ladder --preset NAME [--rungs ...] [--repeats N]  ... or from a preset's
    ladder --show LADDER [--json]                     the ladder's rungs, speed-ups and verdicts

Registered on import by optlab.cli. Queueing does not import torch (the device is probed).
"""
from __future__ import annotations

import json
import sys

from optlab.cli import command, get_run, get_store, safe
from optlab.config import PRESETS, ConfigError, preset

DEFAULT_REPEATS = 3   # each rung measured three times: enough for an interval between repeats


def _add(p):
    p.add_argument("id", type=int, nargs="?", metavar="ID", help="climb from this run's settings")
    p.add_argument("--preset", choices=list(PRESETS), help="climb from a preset's settings instead")
    p.add_argument("--rungs", help="rungs in order, comma-separated (default: the order for this device); "
                                   "names: tf32, bf16, fp16, channels_last, data_on_device, compile, auto_batch, "
                                   "or any setting as knob=value")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"runs per rung (default {DEFAULT_REPEATS}, or the starting config's when above 1)")
    p.add_argument("--user", default=None, help="who queues it (default: your login name)")
    p.add_argument("--show", metavar="LADDER", help="print a queued ladder's rungs and figures instead")
    p.add_argument("--json", action="store_true", help="with --show: one JSON object")


def _ladder(args) -> int:
    from optlab import ladder
    if args.show:
        return _show(args.show, args.json)
    if (args.id is None) == (args.preset is None):
        print("error: name a run ID or --preset NAME (one of the two), or --show LADDER", file=sys.stderr)
        return 2
    from optlab import device as devices
    from optlab.jobs_cli import _submitter
    start = preset(args.preset) if args.preset else _config_of(args.id)
    repeats = args.repeats or (start.repeats if start.repeats > 1 else DEFAULT_REPEATS)
    start = start.replace(repeats=repeats)
    start.validate()
    info = devices.probe(start.device)
    rungs = [r for r in (args.rungs or "").split(",") if r.strip()] or ladder.default_rungs(info)
    steps = ladder.plan(start, rungs, info.kind)
    ladder_id, ids = ladder.submit(get_store(), steps, user=_submitter() if args.user is None else args.user,
                                   device_for=lambda cfg: devices.probe(cfg.device))
    print(ladder_id)
    print(f"queued ladder {ladder_id} on {info.label}: {len(steps)} rungs x {repeats} repeats = {len(ids)} runs "
          f"(#{ids[0]}-#{ids[-1]})", file=sys.stderr)
    for s in steps:
        print(f"  {s.label}", file=sys.stderr)
    print(f"`python -m optlab ladder --show {ladder_id}` gives the speed-ups once they are done", file=sys.stderr)
    return 0


def _config_of(run_id: int):
    from optlab.config import RunConfig
    _, run = get_run(run_id, readonly=True)
    return RunConfig.from_dict(run.config)


def _show(ladder_id: str, as_json: bool) -> int:
    from optlab import ladder, views
    store = get_store(readonly=True)
    runs = store.list(sweep_id=ladder_id, newest_first=False)
    if not runs or not ladder.is_ladder(ladder_id):
        raise ConfigError(f"there is no ladder {ladder_id!r} in {store.home}")
    rows = ladder.rows(runs)
    table = ladder.table(rows)
    done = sum(r.status == "done" for r in runs)
    devices = views.devices(runs)
    if as_json:
        print(json.dumps({"ladder": ladder_id, "runs": len(runs), "done": done, "devices": devices,
                          "rungs": table, "lesson": ladder.lesson(rows)}, default=str))
        return 0
    print(f"ladder {ladder_id}: {done} of {len(runs)} runs done · " + ("; ".join(devices) or "device not recorded"))
    header = ("rung", "images/s", "x baseline", "x baseline 95 %", "x rung below", "this rung", "time to target s",
              "peak MB", "accuracy %")
    width = max(len(t["rung"]) for t in table)
    print(f"{header[0]:<{width}}  " + "  ".join(f"{h:>15}" for h in header[1:]))
    for t in table:
        cells = [_cell(t[h]) for h in header[1:]]
        print(f"{safe(t['rung']):<{width}}  "
              + "  ".join(f"{c:>15}" for c in cells))
    for line in ladder.lesson(rows):
        print("· " + safe(line))
    return 0


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


command("ladder")((_add, _ladder))
