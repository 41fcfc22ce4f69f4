"""Repeats: the same config run several times as one group, so each figure comes with its spread.

Each repeat is a real run in the store (it shows on the Runs page with its own figures and files);
the runs of one group share a `repeat_group` id and carry their `repeat_index` (1..n in submission
order). They share the seed too, so the spread they show is the machine's (timing noise, other
people's work, clocks), not the luck of the draw; sweep `seed` to see that.

A group's figures are computed when they are read, from the runs themselves, never stored a second
time: every repeat's value, the central value and the 95 % interval between repeats
(`optlab.stats.summarize_repeats`: Student's t over the repeats; from five repeats on, the central
value is MLPerf's mean without the fastest and the slowest). A single run's throughput still has an
interval, the bootstrap over its own steady steps, labelled *within run*: it says how well the run
pinned its own median down, and leaves out how much the next run may differ.

Repeats of several configs (a sweep, or a list of configs) are queued interleaved, A B A B ...: the
scheduler hands a submitter's runs out in submission order, so a slow minute on a shared machine
lands on every setting instead of on one.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from optlab.config import RunConfig
from optlab.stats import compare, summarize_repeats

BETWEEN = "between repeats"
WITHIN = "within run"
NONE = "no interval"
OLD_RUN = "recorded before OptLab kept per-step times"


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    higher_is_better: bool


# The figures a group summarises (summary key -> how to name it). Accuracy is a fraction.
FIGURES = {
    "train_images_per_s": Figure("training throughput", "images/s", True),
    "step_ms_p50": Figure("median step time", "ms", False),
    "peak_memory_mb": Figure("peak memory", "MB", False),
    "test_accuracy": Figure("test accuracy", "fraction", True),
    "time_to_target_s": Figure("time to target accuracy", "s", False),
    "train_seconds": Figure("training time", "s", False),
}


def new_group_id() -> str:
    return "rep-" + uuid.uuid4().hex[:8]


# -- queueing ---------------------------------------------------------------------------------------
def queue(store, items: list[tuple[RunConfig, str | None]], *, user: str = "", sweep_id: str | None = None,
          parent_id: int | None = None, status: str = "queued") -> list[int]:
    """Queue every (config, label) `config.repeats` times and return the run ids in queue order.

    Rounds are interleaved: the first repeat of every config, then the second of every config, and
    so on. A config with repeats > 1 gets its own repeat group; one with repeats == 1 is a plain run.
    The configs are not validated here.
    """
    groups = [new_group_id() if cfg.repeats > 1 else None for cfg, _ in items]
    ids = []
    for index in range(max((cfg.repeats for cfg, _ in items), default=0)):
        for (cfg, label), group in zip(items, groups):
            if index < cfg.repeats:
                ids.append(store.submit(cfg, user=user, sweep_id=sweep_id, parent_id=parent_id, label=label,
                                        status=status, repeat_group=group,
                                        repeat_index=index + 1 if group else None))
    return ids


def submit(store, config: RunConfig, *, user: str = "", label: str | None = None,
           parent_id: int | None = None) -> list[int]:
    """Queue one config `config.repeats` times (one group) and return the ids."""
    return queue(store, [(config, label)], user=user, parent_id=parent_id)


# -- groups -------------------------------------------------------------------------------------------
def units(runs: list) -> list[list]:
    """The runs as comparison units: the runs of one repeat group together (in repeat order),
    every other run alone; units in the order their first run appears."""
    out: list[list] = []
    by_group: dict[str, list] = {}
    for run in runs:
        group = getattr(run, "repeat_group", None)
        if group is None:
            out.append([run])
        elif group in by_group:
            by_group[group].append(run)
        else:
            by_group[group] = [run]
            out.append(by_group[group])
    for members in by_group.values():
        members.sort(key=lambda r: (r.repeat_index or 0, r.id))
    return out


def members(store, run) -> list:
    """Every run of `run`'s repeat group (just `run` when it has none), in repeat order."""
    if not getattr(run, "repeat_group", None):
        return [run]
    return units(store.list(repeat_group=run.repeat_group, newest_first=False))[0]


def unit_figures(runs: list) -> dict:
    """The figures of one unit (a repeat group, or one run) with their spread.

    Returns {"ids", "group", "planned", "done", "figures": {key: figure}, "thin": [(id, why)],
    "quality"}. Each figure is {"value", "ci95", "basis", "values", "n", "cv", "min", "max",
    "mlperf"}: with two or more finished repeats, value and ci95 are the central value and the
    interval between repeats; for one run, its own value, and for throughput the within-run
    interval when the run recorded one (runs from before per-step times have none: basis says so).
    """
    done = [r for r in runs if r.status == "done" and r.summary]
    group = getattr(runs[0], "repeat_group", None) if runs else None
    planned = (runs[0].config.get("repeats") or len(runs)) if group else 1
    figures = {key: _figure(done, key) for key in FIGURES}
    thin = [(r.id, (r.summary.get("throughput") or {}).get("why")) for r in done
            if (r.summary.get("throughput") or {}).get("quality") == "thin"]
    recorded = [r for r in done if r.summary.get("throughput")]
    quality = "unknown" if not recorded else "thin" if thin else "solid"
    return {"ids": [r.id for r in runs], "group": group, "planned": planned, "done": len(done),
            "figures": figures, "thin": thin, "quality": quality}


def _figure(done: list, key: str) -> dict:
    values = [r.summary.get(key) for r in done]
    if len([v for v in values if v is not None]) >= 2:
        s = summarize_repeats(values)
        return {"value": s["value"], "ci95": s["ci95"], "basis": BETWEEN, "values": values, "n": s["n"],
                "cv": s["cv"], "min": s["min"], "max": s["max"], "mlperf": s["mlperf_mean"] is not None}
    value = next((v for v in values if v is not None), None)
    out = {"value": value, "ci95": None, "basis": NONE, "values": values, "n": int(value is not None),
           "cv": None, "min": value, "max": value, "mlperf": False}
    if key == "train_images_per_s" and value is not None:
        run = next(r for r in done if r.summary.get(key) is not None)
        throughput = run.summary.get("throughput")
        if throughput is None:
            out["why_none"] = OLD_RUN
        elif throughput.get("ci95"):
            out.update(ci95=tuple(throughput["ci95"]), basis=WITHIN)
    return out


def verdict(new: dict, old: dict, key: str = "train_images_per_s", *, against: str | None = None) -> dict:
    """`stats.compare` of one figure of two units (unit_figures output), with the basis of the
    interval: "between repeats" only when both sides are groups; a within-run interval on either
    side leaves run-to-run noise out, and the result says so."""
    a, b = new["figures"][key], old["figures"][key]
    out = compare(a, b, higher_is_better=FIGURES[key].higher_is_better, against=against)
    bases = {a["basis"], b["basis"]}
    out["basis"] = NONE if NONE in bases else WITHIN if WITHIN in bases else BETWEEN
    return out


def group_summary(runs: list) -> dict:
    """What `optlab run --repeats N --json` and `show --json` carry for a group: the ids, how many
    finished, and per figure every repeat's value, the central value and the spread."""
    unit = unit_figures(runs)
    return {"repeat_group": unit["group"], "planned": unit["planned"], "done": unit["done"], "ids": unit["ids"],
            "throughput_quality": unit["quality"], "thin": unit["thin"],
            "figures": {k: {**f, "label": FIGURES[k].label, "unit": FIGURES[k].unit}
                        for k, f in unit["figures"].items()}}
