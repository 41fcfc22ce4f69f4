"""How long each dashboard page takes to render with 1,000 runs in the store.

    .venv/bin/python bench/page_speed.py [--runs 1000] [--repeats 5]

Fills a temporary OPTLAB_HOME with synthetic fixture runs (summaries shaped like real ones, every
one labelled "synthetic fixture" and measured on a "synthetic fixture device": these numbers
exist only to load the pages), then renders each page headlessly with Streamlit's AppTest and
reports the first (cold: imports) and the following (warm) render times. Goal: warm <= 1.5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = ("app_pages/lab.py", "app_pages/runs.py", "app_pages/compare.py")
GOAL_S = 1.5


def fill(store, n: int, seed: int = 0) -> None:
    """n finished runs in sweeps of four, each with epoch metrics; the newest few still active."""
    from optlab.config import RunConfig
    rng = random.Random(seed)
    device = "synthetic fixture device"
    with store.connect() as db:
        db.execute("BEGIN")
        for i in range(n):
            precision = rng.choice(["fp32", "bf16", "fp16", "tf32"])
            bs = rng.choice([64, 128, 256, 512])
            cfg = RunConfig(model=rng.choice(["speednet", "resnet18", "resnet50"]), precision=precision,
                            batch_size=bs, epochs=3, channels_last=rng.random() < 0.5)
            ips = rng.uniform(2_000, 40_000)
            epochs = [{"epoch": e, "train_loss": 1.5 / e, "test_accuracy": 0.8 + 0.03 * e,
                       "train_seconds": 60_000 / ips, "cumulative_train_seconds": e * 60_000 / ips,
                       "images_per_s": ips} for e in (1, 2, 3)]
            summary = {"device": "cuda", "device_name": device, "device_label": device, "batch_size": bs,
                       "epochs": 3, "steps": 3 * 60_000 // bs, "steady_steps": 3 * 60_000 // bs - 5,
                       "train_images_per_s": ips, "step_ms_p50": 1000 * bs / ips, "step_ms_p90": 1100 * bs / ips,
                       "input_wait_share": rng.uniform(0, 0.3), "peak_memory_mb": rng.uniform(500, 20_000),
                       "memory_kind": "cuda_allocator", "test_accuracy": epochs[-1]["test_accuracy"],
                       "best_test_accuracy": epochs[-1]["test_accuracy"], "train_seconds": 3 * 60_000 / ips,
                       "time_to_target_s": 2 * 60_000 / ips, "target_accuracy": 0.9, "params": 11_000_000,
                       "nonzero_params": 11_000_000, "weights_mb": 43.0,
                       "variants": [{"name": "int8", "test_accuracy": 0.88, "latency_ms_p50": 1.2,
                                     "latency_ms_p90": 1.5, "throughput_images_per_s": 9000.0, "size_mb": 11.0,
                                     "params": 11_000_000, "nonzero_params": 11_000_000, "device": device}]}
            active = i >= n - 3
            status = ("running" if i == n - 3 else "queued") if active else "done"
            cur = db.execute(
                "INSERT INTO runs (created_at, started_at, finished_at, status, user, sweep_id, label, config, "
                "device, summary, progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time() - (n - i) * 60, time.time() - (n - i) * 60, None if active else time.time(), status,
                 f"user{i % 12}", f"sweep-fixture{i // 4}", f"synthetic fixture {i}", cfg.to_json(),
                 '{"label": "synthetic fixture device", "kind": "cuda"}',
                 None if active else json.dumps(summary),
                 '{"phase": "train", "step": 40, "steps_total": 100, "loss": 1.2}' if status == "running" else None))
            if not active:
                db.executemany("INSERT INTO metrics (run_id, kind, t, step, data) VALUES (?, 'epoch', ?, ?, ?)",
                               [(cur.lastrowid, time.time(), e["epoch"], json.dumps(e))
                                for e in epochs])
        db.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="optlab-page-speed-")
    os.environ["OPTLAB_HOME"] = home
    os.environ["OPTLAB_SCHEDULER"] = "0"      # time the pages, not a worker training the queued fixtures
    from streamlit.testing.v1 import AppTest

    from optlab.store import Store
    store = Store(home)
    t = time.perf_counter()
    fill(store, args.runs)
    print(f"filled {args.runs} synthetic fixture runs in {time.perf_counter() - t:.1f} s ({home})")

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    t = time.perf_counter()
    at.run()
    print(f"first render of the app (imports torch, streamlit, the engine): {time.perf_counter() - t:.2f} s")
    worst = 0.0
    print(f"{'page':<20}{'first s':>10}{'median s':>10}{'max s':>10}")
    for page in PAGES:
        times = []
        for _ in range(args.repeats + 1):
            t = time.perf_counter()
            at.switch_page(page).run()
            times.append(time.perf_counter() - t)
            if at.exception:
                raise SystemExit(f"{page} raised: {at.exception[0].value}")
        warm = times[1:]
        worst = max(worst, max(warm))
        print(f"{page:<20}{times[0]:>10.3f}{statistics.median(warm):>10.3f}{max(warm):>10.3f}")
    print(f"slowest warm render {worst:.3f} s: {'within' if worst <= GOAL_S else 'OVER'} the {GOAL_S} s goal")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
