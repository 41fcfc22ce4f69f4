"""The accuracy-budget autotuner from the command line: `python -m optlab tune`.

    tune ID --budget POINTS [--objective training|inference] [--knobs a,b] [--trials N] [--minutes M]
            [--parallel N] [--confirm N]      start a tuning against finished run ID
    tune --show TUNE [--json]                 its trials, winner, Pareto front and verdict
    tune --stop TUNE                          ask for no more trials
    tune --list                               every tuning

The scheduler (the app, or `python -m optlab queue`) runs the trials and asks for the next ones.
"""
from __future__ import annotations

import json
import sys

from optlab.cli import command, get_store, safe

FIELDS = ("number", "state", "run_id", "speed", "accuracy", "within_budget")


def _add(p):
    p.add_argument("id", type=int, nargs="?", metavar="ID", help="the finished run to tune (its accuracy sets the budget)")
    p.add_argument("--budget", type=float, help="accuracy points (of 100) a trial may lose against run ID, e.g. 1.0")
    p.add_argument("--objective", default="training", help="training (throughput) or inference (batch-1 latency)")
    p.add_argument("--knobs", help="knobs to search, comma-separated (default: the objective's): precision, "
                                   "channels_last, pipeline, batch_size, compile, compression")
    p.add_argument("--trials", type=int, default=12, help="trials to run (1..40)")
    p.add_argument("--minutes", type=float, help="stop asking for trials after this many minutes")
    p.add_argument("--parallel", type=int, default=1, help="trials queued at a time")
    p.add_argument("--confirm", type=int, default=3,
                   help="runs each for the winner and the runner-up at the end, for a verdict between repeats (0: none)")
    p.add_argument("--user", default=None, help="who runs it (default: your login name)")
    p.add_argument("--show", metavar="TUNE", help="print a tuning's trials and result")
    p.add_argument("--stop", metavar="TUNE", help="ask a tuning for no more trials")
    p.add_argument("--list", action="store_true", help="list every tuning")
    p.add_argument("--json", action="store_true", help="with --show: one JSON object")


def _tune(args) -> int:
    from optlab import autotune
    if args.list:
        for t in autotune.tunings(get_store(readonly=True)):
            print(f"{t.id}  {t.state:<10}  run #{t.spec.reference}  {t.spec.objective}  budget {t.spec.budget_points:g} "
                  f"points  {t.spec.trials} trials  {safe(t.user)}")
        return 0
    if args.show:
        return _show(args.show, args.json)
    if args.stop:
        print(autotune.stop(get_store(), args.stop))
        return 0
    if args.id is None or args.budget is None:
        print("error: name the run ID to tune and --budget POINTS (or --show/--stop TUNE, --list)", file=sys.stderr)
        return 2
    from optlab import device as devices
    from optlab.jobs_cli import _submitter
    knobs = [k.strip() for k in (args.knobs or "").split(",") if k.strip()]
    spec = autotune.Spec(reference=args.id, budget_points=args.budget, objective=args.objective, knobs=knobs,
                         trials=args.trials, minutes=args.minutes, parallel=args.parallel, confirm=args.confirm)
    tuning = autotune.start(get_store(), spec, user=_submitter() if args.user is None else args.user,
                            device_for=lambda cfg: devices.probe(cfg.device))
    print(tuning.id)
    print(f"tuning {tuning.id}: {spec.trials} trials over {', '.join(tuning.spec.searched)}, at most "
          f"{spec.budget_points:g} accuracy points below run #{spec.reference}; the scheduler runs them "
          f"(`python -m optlab queue` without the app). `python -m optlab tune --show {tuning.id}` follows it.",
          file=sys.stderr)
    return 0


def _show(tuning_id: str, as_json: bool) -> int:
    from optlab import autotune
    out = autotune.result(get_store(readonly=True), tuning_id)
    if as_json:
        print(json.dumps(out, default=str))
        return 0
    t, objective, ref = out["tuning"], out["objective"], out["reference"]
    word = lambda v: autotune.speed_word(autotune.OBJECTIVES.get(objective["key"]), v)   # noqa: E731
    print(f"tuning {t['id']} · {t['state']} · {objective['title']} · budget {t['spec']['budget_points']:g} points "
          f"below run #{ref['run_id']} ({100 * ref['accuracy']:.1f} %: floor {100 * ref['floor']:.1f} %)")
    if t["note"]:
        print(f"  {safe(t['note'])}")
    print(f"  reference: {word(ref['speed'])}")
    for trial in out["trials"]:
        budget = {True: "within budget", False: "OVER BUDGET", None: ""}[trial["within_budget"]]
        acc = "n/a" if trial["accuracy"] is None else f"{100 * trial['accuracy']:.1f} %"
        front = " · Pareto" if trial["number"] in out["pareto"] else ""
        print(f"  trial {trial['index']:>2} run #{trial['run_id'] or '-':<5} {trial['state']:<8} "
              f"{word(trial['speed']):>16} {acc:>8}  {budget}{front}  {safe(autotune.describe(trial['params'], out['device']))}"
              + (f"  ({safe(trial['error'])})" if trial["error"] else ""))
    if out["winner"]:
        w = out["winner"]
        print(f"winner: trial {w['index']} (run #{w['run_id']}): {safe(autotune.describe(w['params'], out['device']))}, "
              f"{word(w['speed'])}, {100 * w['accuracy']:.1f} %")
        print(f"against the runner-up: {out['confidence']['text']} ({out['confidence']['basis'] or 'no basis'})")
    else:
        print("no winner yet: no trial has finished within the budget")
    return 0


command("tune")((_add, _tune))
