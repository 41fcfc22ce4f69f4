"""How repeatable is the headline throughput? The same small config, run several times in a row.

Prints each run's headline (the median step throughput, optlab/stats.py) and, for contrast, the
plain mean rate (all images over all steady time, the figure OptLab reported before), and the
coefficient of variation of each over the repeats. Run it on an otherwise idle machine: other
work on the cores is exactly the noise it measures. Targets: CV <= 5 % on the CPU of a 2-core
machine, <= 2 % on a GPU.

    python bench/repeatability.py                          # CPU-sized default
    python bench/repeatability.py --device cuda --model resnet18 --precision bf16 --channels-last \\
        --batch-size 256 --limit-train 30720
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optlab.config import RunConfig  # noqa: E402
from optlab.runner import execute  # noqa: E402
from optlab.stats import coefficient_of_variation  # noqa: E402
from optlab.store import Store  # noqa: E402

TARGETS = {"cpu": 0.05, "cuda": 0.02}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="speednet")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit-train", type=int, default=4096)
    p.add_argument("--pipeline", default="gpu", help="gpu: the data set held in memory as a tensor (no loader)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    cfg = RunConfig(model=a.model, precision=a.precision, channels_last=a.channels_last, batch_size=a.batch_size,
                    limit_train=a.limit_train, limit_test=1000, epochs=1, device=a.device, pipeline=a.pipeline,
                    num_workers=0, profile=False)
    rows = []
    with tempfile.TemporaryDirectory() as home:
        store = Store(home)
        for r in range(a.repeats):
            rid = store.submit(cfg.replace(seed=r), status="running")
            execute(store, rid)
            run = store.get(rid)
            if run.status != "done":
                raise SystemExit(f"run failed: {run.error}")
            t = run.summary["throughput"]
            rows.append({"repeat": r, "median": t["value"], "ci95": t["ci95"], "mean_rate": t["mean_rate"],
                         "steps": t["steps"], "quality": t["quality"], "device": run.summary["device_label"]})
            if not a.json:
                print(f"repeat {r}: median {t['value']:,.1f} img/s (95 % interval {t['ci95'][0]:,.1f}–"
                      f"{t['ci95'][1]:,.1f}), mean rate {t['mean_rate']:,.1f} img/s, {t['steps']} steady steps",
                      flush=True)
    kind = "cuda" if a.device.startswith("cuda") else "cpu"
    result = {"device": rows[0]["device"], "config": cfg.to_dict(), "runs": rows, "load_average_1min": os.getloadavg()[0],
              "cv_median": coefficient_of_variation([x["median"] for x in rows]),
              "cv_mean_rate": coefficient_of_variation([x["mean_rate"] for x in rows]), "target": TARGETS[kind]}
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"{result['device']}: CV of the headline (median) {100 * result['cv_median']:.1f} %, of the mean rate "
          f"{100 * result['cv_mean_rate']:.1f} %; target <= {100 * result['target']:.0f} %: "
          f"{'met' if result['cv_median'] <= result['target'] else 'NOT met'} (1-min load average "
          f"{result['load_average_1min']:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
