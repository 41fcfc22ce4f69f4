"""`python -m optlab trace ID`: where a run's profiler traces are and how to open them.

Registered on import by optlab.cli. Says plainly when a run has no trace, and why.
"""
from __future__ import annotations

import shlex
import sys

from optlab.cli import command, get_run


def _add_trace(p):
    p.add_argument("id", type=int, help="run id")
    p.add_argument("--start", action="store_true",
                   help="start TensorBoard (or reuse the running one) and print the URL")


def _trace(args) -> int:
    from optlab import tensorboard
    from optlab.profiling import run_trace_dir, trace_files, why_no_trace   # loads torch: only for this command
    store, run = get_run(args.id, readonly=not args.start)
    folder = run_trace_dir(store, run)
    files = trace_files(folder)
    if not files:
        print(f"run #{run.id} has no profiler trace: {why_no_trace(store, run)}")
        return 1
    device = (run.summary or {}).get("device_label", "device unknown")
    print(f"run #{run.id} traces ({device}):")
    for f in files:
        print(f"  {f.name.split('.', 1)[0]:<10} {f}  ({f.stat().st_size / 1024:,.0f} KiB)")
    name = tensorboard.run_name(folder, store.home)
    print("\nTensorBoard (profiler plugin; run name "
          f"'{name}'):\n  {' '.join(shlex.quote(c) for c in tensorboard.command(store.home))}")
    print("  " + tensorboard.OFFLINE_NOTE)
    print("Perfetto (ui.perfetto.dev) or chrome://tracing open the .json.gz files directly.")
    print(f"Summary without a browser: python -m optlab show {run.id} --json")
    if args.start:
        try:
            tb = tensorboard.start(store.home)
        except tensorboard.TensorBoardError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"\nTensorBoard {'already running' if tb.reused else 'started'} (pid {tb.pid}): "
              + tensorboard.run_link(tb, folder, store.home)["how"])
    return 0


command("trace")((_add_trace, _trace))
