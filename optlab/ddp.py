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


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rank_capacity(info) -> tuple[int, str]:
    """How many ranks this machine can give a run, and of what: its visible GPUs, or, on a
    CPU-only machine, its cores (one rank per core at most: more would only time-share)."""
    if info.is_gpu:
        from optlab.device import visible_gpus
        return len(visible_gpus()), "GPUs"
    return cpu_cores(), "CPU cores (one rank per core at most)"
