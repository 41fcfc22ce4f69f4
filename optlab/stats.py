"""Spread and noise: what turns a measured time into a figure someone can bet on.

Every compared figure in OptLab carries a 95 % interval, and every comparison a verdict:

* within one run, the interval of the median step throughput comes from a bootstrap over the
  steady steps (it says how well this run pinned its own median down, not how much the next run
  may differ);
* over repeats of the same config, the interval of the mean comes from Student's t over the
  repeats' figures (run-to-run noise included), and with five or more the MLPerf rule gives the
  central time-to-accuracy: the mean without the fastest and the slowest;
* a ratio of two figures gets its interval from both sides' intervals (on the log scale), and is
  called a difference only when that interval lies wholly beyond MIN_EFFECT on one side of 1.

Pure standard library, deterministic (seeded resampling), cheap enough for every page view.
"""
from __future__ import annotations

import math
import random
import statistics

CONFIDENCE = 0.95
Z95 = 1.959964
MIN_EFFECT = 0.03          # ratios within 1 ± 3 % are never called a difference
MIN_STEADY_STEPS = 10      # fewer steady steps than this: the figure is marked "thin"
MIN_STEADY_SECONDS = 0.5   # less steady time than this: the figure is marked "thin"
RESAMPLES = 1000

# Student's t, two-sided 95 %, by degrees of freedom (larger df use the normal value)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df < 1:
        return float("inf")
    for bound in sorted(_T95):
        if df <= bound:
            return _T95[bound]
    return Z95


def quantile(values: list[float], q: float) -> float | None:
    """Linear-interpolated quantile, q in [0, 1]."""
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bootstrap_median_interval(values: list[float], *, resamples: int = RESAMPLES,
                              seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile-bootstrap interval of the median of `values` (None for fewer than 2)."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    alpha = (1 - CONFIDENCE) / 2
    return quantile(medians, alpha), quantile(medians, 1 - alpha)


def throughput_figures(step_ms: list[float], images: list[int]) -> dict:
    """The headline training throughput of a run from its steady steps.

    `value` is the median per-step throughput (images of the step / its time), robust to a few
    slow steps; `p10`/`p90` are the step-to-step spread; `ci95` the bootstrap interval of the
    median; `mean_rate` all images over all steady time (what a few slow steps do swing).
    `quality` is "solid" or "thin" (too few steps or too little time; `why` says which)."""
    rates = [n / (ms / 1000) for ms, n in zip(step_ms, images) if ms > 0]
    seconds = sum(step_ms) / 1000
    out = {"value": None, "p10": None, "p90": None, "ci95": None, "mean_rate": None,
           "steps": len(rates), "seconds": seconds, "cv_steps": None, "quality": "thin",
           "why": None, "unit": "images/s"}
    if not rates:
        out["why"] = "no steady steps were measured"
        return out
    out.update(value=statistics.median(rates), p10=quantile(rates, 0.10), p90=quantile(rates, 0.90),
               ci95=bootstrap_median_interval(rates), mean_rate=sum(images) / seconds if seconds else None,
               cv_steps=coefficient_of_variation(rates))
    problems = []
    if len(rates) < MIN_STEADY_STEPS:
        problems.append(f"{len(rates)} steady steps (fewer than {MIN_STEADY_STEPS})")
    if seconds < MIN_STEADY_SECONDS:
        problems.append(f"{seconds:.2f} s of steady steps (less than {MIN_STEADY_SECONDS} s)")
    out["quality"] = "thin" if problems else "solid"
    out["why"] = "; ".join(problems) or None
    return out


def coefficient_of_variation(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else None


def mlperf_mean(values: list[float]) -> float | None:
    """MLPerf's central time: the mean without the fastest and the slowest (5 or more values)."""
    if len(values) < 5:
        return None
    xs = sorted(values)[1:-1]
    return statistics.fmean(xs)


def summarize_repeats(values: list[float | None]) -> dict:
    """Central value and spread of one figure over repeats of the same config.

    `value` is the mean (MLPerf's trimmed mean from five repeats on, as `mlperf_mean` too),
    `ci95` Student's t interval of the mean, `cv` the coefficient of variation. Figures that cannot
    be negative (all values >= 0: times, rates, memory) keep the interval's low end at 0; with two
    noisy repeats t's wide interval would otherwise promise negative images per second."""
    xs = [v for v in values if v is not None]
    out = {"n": len(xs), "values": list(values), "value": None, "mean": None, "median": None, "min": None,
           "max": None, "ci95": None, "cv": None, "mlperf_mean": None}
    if not xs:
        return out
    mean = statistics.fmean(xs)
    out.update(mean=mean, median=statistics.median(xs), min=min(xs), max=max(xs),
               cv=coefficient_of_variation(xs), mlperf_mean=mlperf_mean(xs))
    if len(xs) >= 2:
        half = t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
        low = max(0.0, mean - half) if min(xs) >= 0 else mean - half
        out["ci95"] = (low, mean + half)
    out["value"] = out["mlperf_mean"] if out["mlperf_mean"] is not None else mean
    return out


def _log_se(value: float, ci: tuple[float, float] | list[float] | None) -> float | None:
    if not ci or value is None or value <= 0 or ci[0] is None or ci[1] is None:
        return None
    lo, hi = max(ci[0], value * 1e-6), max(ci[1], value * 1e-6)
    return (math.log(hi) - math.log(lo)) / (2 * Z95)


def ratio_interval(a: float, a_ci, b: float, b_ci) -> tuple[float, float | None, float | None]:
    """a / b with a 95 % interval from both sides' intervals (log-normal approximation).
    The interval is None when either side has none, and (0, inf) when either side's interval
    reaches zero: a figure that may be nothing bounds no ratio."""
    ratio = a / b
    if any(ci and ci[0] is not None and ci[0] <= 0 for ci in (a_ci, b_ci)) and a_ci and b_ci:
        return ratio, 0.0, math.inf
    se_a, se_b = _log_se(a, a_ci), _log_se(b, b_ci)
    if se_a is None or se_b is None:
        return ratio, None, None
    se = math.hypot(se_a, se_b)
    return ratio, ratio * math.exp(-Z95 * se), ratio * math.exp(Z95 * se)


def verdict(ratio: float, lo: float | None, hi: float | None, *, higher_is_better: bool = True,
            min_effect: float = MIN_EFFECT) -> str:
    """"better", "worse" or "within noise" for a ratio new/old with its interval.

    A difference is called only when the whole interval lies beyond 1 ± min_effect; without an
    interval nothing can be called."""
    if lo is None or hi is None:
        return "no interval"
    if lo > 1 + min_effect:
        return "better" if higher_is_better else "worse"
    if hi < 1 - min_effect:
        return "worse" if higher_is_better else "better"
    return "within noise"


def compare(new: dict, old: dict, *, higher_is_better: bool = True, against: str | None = None) -> dict:
    """Compare two figures given as {"value", "ci95"} (throughput_figures or summarize_repeats
    output). Returns the ratio new/old, its interval, the verdict and a sentence saying it;
    `against` names the old side in that sentence ("not distinguishable from run #4 ...")."""
    if not new.get("value") or not old.get("value"):
        return {"ratio": None, "ci95": None, "verdict": "no figure", "text": "one of the two has no figure"}
    ratio, lo, hi = ratio_interval(new["value"], new.get("ci95"), old["value"], old.get("ci95"))
    call = verdict(ratio, lo, hi, higher_is_better=higher_is_better)
    interval = (" (no interval: one side has no spread recorded)" if lo is None else
                " (95 % interval unbounded: a side's interval reaches zero)" if math.isinf(hi) else
                f" (95 % interval {lo:.2f}x to {hi:.2f}x)")
    if call == "within noise":
        text = f"{ratio:.2f}x{interval}: not distinguishable{f' from {against}' if against else ''} at this spread"
    elif call == "no interval":
        text = f"{ratio:.2f}x{interval}: cannot tell whether this is a difference"
    else:
        text = f"{ratio:.2f}x{interval}: {call}, beyond noise"
    return {"ratio": ratio, "ci95": (lo, hi) if lo is not None else None, "verdict": call, "text": text}
