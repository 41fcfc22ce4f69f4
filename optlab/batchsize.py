"""Automatic batch size: every trial a real training step whose own memory and speed are measured.

* The cap is the smallest of the config's `max_batch_size`, what the data allows (a run keeps at
  least MIN_STEPS optimizer steps, enough to measure steady steps and to learn) and, on the CPU,
  CPU_CAP.
* On a GPU: grow until memory runs out, search down, keep headroom (the largest batch that fits
  is what fills the device).
* On the CPU a larger batch rarely runs faster per image and leaves fewer steps to learn from:
  try powers of two up to the cap and keep the smallest batch within THROUGHPUT_TOLERANCE of the
  best measured images/s, among those that fit in CPU_MEMORY_SHARE of the memory the process may
  use (host memory or the cgroup limit).

Batch-size finders are known for picking a size that then fails in real training; the runner
confirms the choice with a full training step and an evaluation pass before using it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

MIN_STEPS = 50                 # optimizer steps a run keeps at least (warm-up + steady steps + learning)
CPU_CAP = 1024                 # largest CPU trial: bigger batches only cost time on a CPU
CPU_MEMORY_SHARE = 0.6         # a CPU trial "fits" below this share of the memory the process may use
THROUGHPUT_TOLERANCE = 0.05    # sizes this close to the best images/s are as fast, within trial noise
FALLING = 0.10                 # stop growing once a trial is this much slower than the best so far


class BatchSizeError(RuntimeError):
    pass


@dataclass
class BatchSearch:
    chosen: int
    largest_fit: int
    first_failure: int | None      # smallest size seen not to fit (None: the cap was reached)
    cap: int
    headroom: float
    trials: list[dict] = field(default_factory=list)   # [{"batch_size", "fits", "peak_memory_mb", "images_per_s"}]
    confirmed: bool = False
    rule: str = "largest that fits"                    # or "throughput"
    reason: str = ""                                   # why this size, in a sentence
    cap_reasons: list[str] = field(default_factory=list)   # what set the cap

    def to_dict(self) -> dict:
        return asdict(self)


def data_cap(train_images: int, epochs: int, min_steps: int = MIN_STEPS) -> int:
    """The largest batch that still leaves `min_steps` optimizer steps in the run (the training
    pipeline drops the last, incomplete batch of an epoch); 1 when no batch does."""
    per_epoch = math.ceil(min_steps / max(1, epochs))
    return max(1, train_images // per_epoch)


def batch_cap(train_images: int, epochs: int, max_batch_size: int, on_gpu: bool) -> tuple[int, list[str]]:
    """(the search's cap, a sentence for each limit that set it)."""
    data = data_cap(train_images, epochs)
    limits = [(max_batch_size, f"max_batch_size {max_batch_size}"),
              (data, f"{train_images:,} images x {epochs} epoch(s) keep {MIN_STEPS} steps only up to batch {data}")]
    if not on_gpu:
        limits.append((CPU_CAP, f"CPU trials stop at {CPU_CAP}"))
    cap = min(n for n, _ in limits)
    return cap, [why for n, why in limits if n == cap]


def _trial(n: int, result) -> dict:
    """A trial row from what `fits(n)` returned: None (does not fit), a peak in MB, or a dict."""
    row = {"batch_size": n, "fits": result is not None, "peak_memory_mb": None, "images_per_s": None}
    if isinstance(result, dict):
        row.update(result)
    elif result is not None:
        row["peak_memory_mb"] = result
    return row


def search_batch_size(fits: Callable[[int], "float | dict | None"], *, start: int = 16, cap: int = 4096,
                      headroom: float = 0.9, multiple: int = 8) -> BatchSearch:
    """The largest batch that fits, with headroom (the GPU rule).

    `fits(n)` runs one training step at batch n and returns its peak memory (MB) or a dict of
    its figures ({"peak_memory_mb", "images_per_s"}), or None when it ran out of memory. Doubles
    from `start`, then bisects between the last size that fit and the first that did not; the
    chosen size keeps `headroom` of the largest that fit."""
    trials: list[dict] = []

    def attempt(n: int) -> bool:
        trials.append(_trial(n, fits(n)))
        return trials[-1]["fits"]

    n, ok, bad = min(start, cap), None, None
    while ok is None and n >= 1:          # the start itself may not fit: halve
        if attempt(n):
            ok = n
        else:
            bad, n = n, n // 2
    if ok is None:
        raise BatchSizeError("not even a batch of 1 fits in memory")
    while bad is None and ok < cap:       # grow
        n = min(ok * 2, cap)
        if attempt(n):
            ok = n
        else:
            bad = n
    while bad is not None and bad - ok > max(1, multiple if ok >= multiple else 1):   # bisect
        mid = (ok + bad) // 2
        if ok >= multiple:
            mid = max(ok + multiple, mid // multiple * multiple)
            if mid >= bad:
                break
        if attempt(mid):
            ok = mid
        else:
            bad = mid
    if bad is None:
        chosen = ok                        # reached the cap without running out
        reason = f"the cap {cap} fits"
    else:
        chosen = int(ok * headroom)
        chosen = chosen // multiple * multiple if chosen >= multiple else max(1, chosen)
        reason = f"{headroom:.0%} of the largest batch that fit ({ok}; {bad} did not)"
    return BatchSearch(chosen, ok, bad, cap, headroom, trials, rule="largest that fits", reason=reason)


def choose_by_throughput(trials: list[dict], tolerance: float = THROUGHPUT_TOLERANCE) -> tuple[int, str]:
    """(batch size, why) from measured trials: the smallest batch whose images/s is within
    `tolerance` of the best that fit. Smaller batches give more optimizer steps per epoch, so
    among sizes that run equally fast the smallest learns the most from the same images."""
    measured = [t for t in trials if t["fits"] and t.get("images_per_s")]
    if not measured:
        raise BatchSizeError("no trial batch fitted in memory with a measured speed")
    best = max(measured, key=lambda t: t["images_per_s"])
    floor = (1 - tolerance) * best["images_per_s"]
    chosen = min((t for t in measured if t["images_per_s"] >= floor), key=lambda t: t["batch_size"])
    if chosen is best:
        why = f"fastest of the trials ({best['images_per_s']:,.0f} images/s)"
    else:
        why = (f"{chosen['images_per_s']:,.0f} images/s, within {tolerance:.0%} of the fastest trial "
               f"(batch {best['batch_size']}, {best['images_per_s']:,.0f} images/s), with more steps to learn from")
    return chosen["batch_size"], why


def search_by_throughput(trial: Callable[[int], dict | None], *, start: int = 16, cap: int = 1024,
                         tolerance: float = THROUGHPUT_TOLERANCE) -> BatchSearch:
    """The CPU rule. `trial(n)` runs timed training steps at batch n and returns {"peak_memory_mb",
    "images_per_s"}, or None when it does not fit. Powers of two from `start` up to `cap` (the cap
    alone when it is below `start`); growing stops at the first size that does not fit or that is
    FALLING slower than the best so far."""
    sizes, n = [], min(start, cap)
    while n <= cap:
        sizes.append(n)
        n *= 2
    trials: list[dict] = []
    best = 0.0
    for n in sizes:
        trials.append(_trial(n, trial(n)))
        rate = trials[-1]["images_per_s"] or 0.0
        if not trials[-1]["fits"] or rate < (1 - FALLING) * best:
            break
        best = max(best, rate)
    fitting = [t["batch_size"] for t in trials if t["fits"]]
    if not fitting:
        raise BatchSizeError(f"not even a batch of {sizes[0]} fits in the memory allowed for trials")
    chosen, why = choose_by_throughput(trials, tolerance)
    first_failure = next((t["batch_size"] for t in trials if not t["fits"]), None)
    return BatchSearch(chosen, max(fitting), first_failure, cap, 1.0, trials, rule="throughput", reason=why)
