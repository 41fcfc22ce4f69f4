"""Automatic batch size: grow until memory runs out, search down, keep headroom, confirm.

Batch-size finders are known for picking a size that then fails in real training; this one
keeps headroom, honours a cap, and the runner confirms the choice with a full training step
and an evaluation pass before using it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable


class BatchSizeError(RuntimeError):
    pass


@dataclass
class BatchSearch:
    chosen: int
    largest_fit: int
    first_failure: int | None      # smallest size seen not to fit (None: the cap was reached)
    cap: int
    headroom: float
    trials: list[dict] = field(default_factory=list)   # [{"batch_size", "fits", "peak_memory_mb"}]
    confirmed: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def search_batch_size(fits: Callable[[int], float | None], *, start: int = 16, cap: int = 4096,
                      headroom: float = 0.9, multiple: int = 8) -> BatchSearch:
    """`fits(n)` runs one training step at batch n and returns its peak memory (MB), or None
    when it ran out of memory. Doubles from `start`, then bisects between the last size that fit
    and the first that did not; the chosen size keeps `headroom` of the largest that fit."""
    trials: list[dict] = []

    def attempt(n: int) -> bool:
        peak = fits(n)
        trials.append({"batch_size": n, "fits": peak is not None, "peak_memory_mb": peak})
        return peak is not None

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
    else:
        chosen = int(ok * headroom)
        chosen = chosen // multiple * multiple if chosen >= multiple else max(1, chosen)
    return BatchSearch(chosen, ok, bad, cap, headroom, trials)
