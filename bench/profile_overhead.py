"""Does profiling change what is measured? The same run with the profiler window on and off.

Each repeat runs the config twice through OptLab's runner (profile off and on; the order
alternates between repeats so drift favours neither side) and compares two figures:

* steady-state throughput as the run reports it (warm-up, the profiled window and the step that
  writes the trace already left out), and
* the last epoch's steady-state throughput: with two or more epochs those are the same steps in
  both runs, all after the window, so it isolates what profiling leaves behind.

Target: the medians differ by <= 3 %. On a shared machine other processes only ever slow a run
down, so the best run of each side is reported too, with the spread and the load average.

    python bench/profile_overhead.py --threads 1          # CPU-sized default
    python bench/profile_overhead.py --device cuda --model resnet50 --image-size 224 \\
        --precision bf16 --channels-last --batch-size 256 --limit-train 12800 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optlab.config import RunConfig  # noqa: E402
from optlab.runner import execute  # noqa: E402
from optlab.store import Store  # noqa: E402

TARGET = 0.03
FIGURES = {"images_per_s": "steady state (run figure)", "last_epoch_images_per_s": "last epoch (same steps)"}


def one_run(store: Store, cfg: RunConfig) -> dict:
    run_id = store.submit(cfg, status="running")
    execute(store, run_id)
    run = store.get(run_id)
    if run.status != "done":
        raise SystemExit(f"run failed: {run.error}")
    s = run.summary
    return {"profile": cfg.profile, "images_per_s": s["train_images_per_s"], "step_ms_p50": s["step_ms_p50"],
            "last_epoch_images_per_s": store.metrics(run_id, "epoch")[-1]["images_per_s"],
            "steady_steps": s["steady_steps"], "excluded": s["profiled_steps_excluded"],
            "profiled": bool(s.get("profile")), "device_label": s["device_label"]}


def compare(rows: list[dict], key: str) -> dict:
    off = [r[key] for r in rows if not r["profile"] and r[key]]
    on = [r[key] for r in rows if r["profile"] and r[key]]
    m_off, m_on = statistics.median(off), statistics.median(on)
    return {"median_off": m_off, "median_on": m_on, "difference": (m_on - m_off) / m_off,
            "best_off": max(off), "best_on": max(on), "best_difference": (max(on) - max(off)) / max(off),
            "spread_off": (max(off) - min(off)) / m_off, "spread_on": (max(on) - min(on)) / m_on,
            "within_target": abs(m_on - m_off) / m_off <= TARGET}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="speednet")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--pipeline", default="gpu", help="gpu keeps input work out of the comparison")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int)
    p.add_argument("--limit-train", type=int, default=768, help="with batch 32: 24 steps an epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch CPU threads; 1 keeps a shared machine's other work "
                                                "from stalling OpenMP barriers, which swamps the difference")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = RunConfig(model=args.model, precision=args.precision, channels_last=args.channels_last,
                     pipeline=args.pipeline, batch_size=args.batch_size, image_size=args.image_size,
                     limit_train=args.limit_train, limit_test=256, epochs=args.epochs, device=args.device,
                     num_workers=0, augment=False)
    rows, load_start = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as home:
        store = Store(home)
        for repeat in range(args.repeats):
            for profiled in ((False, True) if repeat % 2 == 0 else (True, False)):
                row = one_run(store, base.replace(profile=profiled))
                row["repeat"] = repeat
                rows.append(row)
                print(f"repeat {repeat} profile={'on ' if profiled else 'off'}: {row['images_per_s']:,.1f} img/s, "
                      f"last epoch {row['last_epoch_images_per_s']:,.1f} img/s (p50 step {row['step_ms_p50']:.2f} ms,"
                      f" {row['steady_steps']} steady steps, {row['excluded']} excluded)", file=sys.stderr)
    result = {"device_label": rows[0]["device_label"], "config": base.to_dict(), "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "target": TARGET,
              "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
              **{key: compare(rows, key) for key in FIGURES}, "runs": rows}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['device_label']}, {result['torch_threads']} torch threads; profile off vs on, img/s:")
    for key, name in FIGURES.items():
        c = result[key]
        print(f"  {name:<27} median {c['median_off']:,.1f} vs {c['median_on']:,.1f} ({100 * c['difference']:+.2f} %,"
              f" spread {100 * c['spread_off']:.0f} % / {100 * c['spread_on']:.0f} %); best {c['best_off']:,.1f} vs "
              f"{c['best_on']:,.1f} ({100 * c['best_difference']:+.2f} %)")
    print(f"  target ±{100 * TARGET:.0f} % on the medians: "
          f"{'met' if result['last_epoch_images_per_s']['within_target'] else 'NOT met'} (same steps); 1-min load "
          f"average {load_start:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. A spread larger than the "
          "difference means the machine was too busy to tell.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
