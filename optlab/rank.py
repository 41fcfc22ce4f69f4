"""One rank of a data-parallel run: `torchrun ... -m optlab.rank RUN_ID` (started by optlab.ddp.launch).

Joins the process group (NCCL on GPUs, Gloo on the CPU), trains its share of the images with the
same recipe as a one-device run (optlab.runner._execute with its Ranks), and leaves what the
worker that follows it needs in the run's folder: rank 0's progress lines and its summary, and
any rank's exception. The worker, not the ranks, gives the run its final status.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

from torch.distributed.elastic.multiprocessing.errors import record

from optlab.ddp import ERROR_FILE, PROGRESS_FILE, RESULT_FILE, Ranks, backend_for


def _progress_writer(path, world: int):
    """Rank 0's progress, one JSON line each, with throughput counted over every rank."""
    out = open(path, "a", buffering=1)

    def write(state: dict) -> None:
        state = dict(state)
        if isinstance(state.get("images_per_s"), (int, float)):
            state["images_per_s"] *= world
        out.write(json.dumps(state, default=str) + "\n")
    return write


@record   # torchrun then reports this rank's exception as the root cause
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_id = int(argv[0])
    ranks = Ranks.from_env()
    import torch
    import torch.distributed as dist

    from optlab import device as devices
    from optlab.config import RunConfig
    from optlab.hostload import apply_plan, plan_for
    from optlab.runner import _execute
    from optlab.storeservice import worker_store

    store = worker_store()
    folder = store.artifacts_dir(run_id, create=False)
    (folder / f"rank{ranks.rank}.pid").write_text(f"{os.getpid()}\n")
    try:
        cfg = RunConfig.from_dict(store.get(run_id).config)
        device = devices.resolve(cfg.device)
        if device.type == "cuda":
            device = torch.device("cuda", ranks.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend_for(device.type), device_id=device if device.type == "cuda" else None)
        plan = apply_plan(plan_for(cfg))   # this rank's share of the cores (OMP_NUM_THREADS from launch)
        if cfg.pipeline == "cpu":
            cfg = cfg.replace(num_workers=plan.loader_workers)
        progress = _progress_writer(folder / PROGRESS_FILE, ranks.world) if ranks.lead else None
        summary = _execute(store, run_id, cfg, device, devices.describe(device), progress, None, plan, ranks)
        if ranks.lead:
            tmp = folder / (RESULT_FILE + ".partial")
            tmp.write_text(json.dumps(summary, default=str))
            os.replace(tmp, folder / RESULT_FILE)
        return 0
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt):
            error = {"rank": ranks.rank, "time": time.time(), "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()}
            (folder / ERROR_FILE.format(rank=ranks.rank)).write_text(json.dumps(error))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
