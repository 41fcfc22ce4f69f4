"""Workshop lessons as data: one JSON file each in lessons/, loaded and validated here.

A lesson file holds:

* `id`, `title`, `question` — what the lesson asks;
* `base` — RunConfig settings every run of the lesson shares; `cpu` — settings laid over `base`
  on a machine without a GPU, so the lesson fits a CPU's minutes;
* `runs` — the baseline first, then one to three changes: `{"label", "changes", "gpu_only"?}`,
  `changes` being RunConfig settings laid over the base;
* `metric` — the figure the lesson compares (a key of METRICS);
* `look_at` — what to look at, in order; `knobs` — the Lab settings that matter in this lesson;
* `expected` — per device class (`gpu`, `cpu`): `verdict` (better / worse / within noise, for the
  change against the baseline), `text`, and `source` (where the expectation comes from);
* `surprise` — what explains a result that goes against the expectation.

Every run of every lesson must validate as a RunConfig, for the GPU and for the CPU
(tests/test_lessons.py checks every file).
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from optlab import stats
from optlab.config import ConfigError, RunConfig

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"   # OPTLAB_LESSONS: another folder
DEVICE_CLASSES = ("gpu", "cpu")
VERDICTS = ("better", "worse", "within noise")   # the change against the baseline


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool


METRICS = {
    "train_images_per_s": Metric("training throughput", "images/s", True),
    "time_to_target_s": Metric("time to the target accuracy", "s", False),
    "latency_ms_p50": Metric("inference latency at batch 1 (compressed variant vs the trained model)", "ms", False),
}
REQUIRED = ("id", "title", "question", "base", "runs", "metric", "look_at", "knobs", "expected", "surprise")


@dataclass(frozen=True)
class LessonRun:
    label: str
    changes: dict
    gpu_only: bool = False


@dataclass(frozen=True)
class Lesson:
    id: str
    title: str
    question: str
    base: dict
    cpu: dict
    runs: tuple[LessonRun, ...]
    metric: str
    look_at: tuple[str, ...]
    knobs: tuple[str, ...]
    expected: dict
    surprise: str
    path: Path | None = None

    def configs(self, device_class: str) -> list[tuple[str, RunConfig]]:
        """(label, config) of each run this lesson launches on a device of this class."""
        base = {**self.base, **(self.cpu if device_class == "cpu" else {})}
        return [(r.label, RunConfig.from_dict({**base, **r.changes}))
                for r in self.runs if not (r.gpu_only and device_class == "cpu")]


class LessonError(ValueError):
    """A lesson file that does not hold a valid lesson; the message names the file and the problem."""


def parse(data: dict, path: Path | None = None) -> Lesson:
    where = path.name if path else data.get("id", "lesson")

    def bad(message: str):
        return LessonError(f"{where}: {message}")

    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    extra = sorted(set(data) - set(REQUIRED) - {"cpu"})
    if extra:
        raise bad(f"unknown field(s) {', '.join(extra)}")
    if path is not None and data["id"] != path.stem:
        raise bad(f"id {data['id']!r} must match the file name {path.stem!r}")
    if data["metric"] not in METRICS:
        raise bad(f"metric {data['metric']!r} is not one of {', '.join(METRICS)}")
    runs = data["runs"]
    if not isinstance(runs, list) or not 1 <= len(runs) <= 4:
        raise bad("runs: a baseline and at most three changes")
    lesson_runs = []
    for r in runs:
        if set(r) - {"label", "changes", "gpu_only"} or "label" not in r:
            raise bad(f"a run holds label, changes and optionally gpu_only, not {sorted(r)}")
        lesson_runs.append(LessonRun(r["label"], dict(r.get("changes", {})), bool(r.get("gpu_only", False))))
    fields = set(RunConfig.__dataclass_fields__)
    unknown_knobs = [k for k in data["knobs"] if k not in fields]
    if unknown_knobs:
        raise bad(f"knobs {unknown_knobs} are not RunConfig settings")
    for cls in DEVICE_CLASSES:
        e = data["expected"].get(cls)
        if not isinstance(e, dict) or set(e) != {"verdict", "text", "source"} or not all(e.values()):
            raise bad(f"expected.{cls} needs a verdict, a text and a source")
        if e["verdict"] not in VERDICTS:
            raise bad(f"expected.{cls}.verdict must be one of {VERDICTS}")
    lesson = Lesson(data["id"], data["title"], data["question"], dict(data["base"]), dict(data.get("cpu", {})),
                    tuple(lesson_runs), data["metric"], tuple(data["look_at"]), tuple(data["knobs"]),
                    dict(data["expected"]), data["surprise"], path)
    for cls in DEVICE_CLASSES:
        info = _device(cls)
        try:
            configs = lesson.configs(cls)
        except ConfigError as e:
            raise bad(f"{cls}: {e}") from None
        if not configs:
            raise bad(f"{cls}: no run to launch")
        for label, cfg in configs:
            try:
                cfg.validate(info)
            except ConfigError as e:
                raise bad(f"{cls} run {label!r}: {e}") from None
    return lesson


def _device(device_class: str):
    """A representative device of the class to validate against (an H100-like GPU, or a CPU)."""
    from optlab.device import DeviceInfo
    if device_class == "gpu":
        return DeviceInfo("cuda", "a Tensor Core GPU", 0, (9, 0), 80 * 1024, True, True, True)
    return DeviceInfo("cpu", "a CPU")


def load(folder: Path | str | None = None) -> list[Lesson]:
    """Every lesson in `folder` (default: OPTLAB_LESSONS, else lessons/), sorted by file name; a bad
    file raises LessonError naming it."""
    folder = folder or os.environ.get("OPTLAB_LESSONS") or LESSONS_DIR
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise LessonError(f"{path.name}: not JSON: {e}") from None
        out.append(parse(data, path))
    return out


# -- launching and reading back --------------------------------------------------------------------------
SWEEP_PREFIX = "lesson-"


def sweep_prefix(lesson: Lesson) -> str:
    return f"{SWEEP_PREFIX}{lesson.id}-"


def launch(store, lesson: Lesson, user: str, device_class: str) -> tuple[str, list[int]]:
    """Queue the lesson's runs as one sweep (Compare shows it too). All or nothing: the room's
    limits are checked for all of them first (optlab.fairuse raises Refused)."""
    from optlab.sweeps import SweepRun, submit_sweep
    configs = lesson.configs(device_class)
    runs = [SweepRun({}, label, cfg) for label, cfg in configs]
    return submit_sweep(store, runs, user=user, sweep_id=sweep_prefix(lesson) + uuid.uuid4().hex[:8])


def attempts(store, lesson: Lesson, user: str | None = None) -> dict[str, list]:
    """sweep id -> its runs (baseline first), for every launch of this lesson (by `user` if given)."""
    groups: dict[str, list] = {}
    for run in store.list(user=user, newest_first=False):
        if run.sweep_id and run.sweep_id.startswith(sweep_prefix(lesson)):
            groups.setdefault(run.sweep_id, []).append(run)
    return groups


def _figure(run, metric: str) -> dict:
    """{"value", "ci95"} of the metric for one run (None value when not measured)."""
    s = run.summary or {}
    if metric == "train_images_per_s":
        t = s.get("throughput") or {}
        return {"value": s.get("train_images_per_s"), "ci95": t.get("ci95")}
    if metric == "latency_ms_p50":
        variants = [v for v in s.get("variants") or [] if v.get("latency_ms_p50")]
        return {"value": variants[-1]["latency_ms_p50"] if variants else None, "ci95": None}
    return {"value": s.get(metric), "ci95": None}


def results(lesson: Lesson, runs: list) -> list[dict]:
    """One attempt's outcome: each change against the baseline on the lesson's metric, with the
    ratio (>1 means better), its interval when both sides have one, and the verdict."""
    metric = METRICS[lesson.metric]
    if lesson.metric == "latency_ms_p50":   # one run: its compressed variants against the trained model
        out = []
        for run in runs:
            variants = (run.summary or {}).get("variants") or []
            base = next((v for v in variants if v.get("baseline") is None and v.get("latency_ms_p50")), None)
            for v in variants:
                if v is base or not v.get("speedup_vs_baseline"):
                    continue
                out.append({"run": run, "label": v["name"], "ratio": v["speedup_vs_baseline"], "ci95": None,
                            "verdict": "no interval", "accuracy_change": v.get("accuracy_change_vs_baseline"),
                            "device": (run.summary or {}).get("device")})
        return out
    if not runs or runs[0].status != "done":
        return []
    base = _figure(runs[0], lesson.metric)
    out = []
    for run in runs[1:]:
        if run.status != "done":
            continue
        new = _figure(run, lesson.metric)
        if not new["value"] or not base["value"]:
            continue
        # ratio as "how many times better": new/old for higher-is-better, old/new otherwise
        a, b = (new, base) if metric.higher_is_better else (base, new)
        c = stats.compare(a, b, higher_is_better=True)
        out.append({"run": run, "label": run.label, "ratio": c["ratio"], "ci95": c["ci95"], "verdict": c["verdict"],
                    "text": c["text"], "device": (run.summary or {}).get("device")})
    return out


def surprising(lesson: Lesson, result: dict, device_class: str) -> bool:
    """A result whose verdict is the opposite of the expectation (noise is never a surprise)."""
    expected = lesson.expected[device_class]["verdict"]
    return {expected, result["verdict"]} == {"better", "worse"}


# -- the room's view --------------------------------------------------------------------------------------
def board(store, lesson: Lesson) -> list[dict]:
    """Each person's latest attempt at the lesson: one row per change (or variant) with a result."""
    latest: dict[str, list] = {}
    for runs in attempts(store, lesson).values():
        latest[runs[0].user] = runs            # attempts come oldest first
    rows = []
    for user, runs in latest.items():
        for r in results(lesson, runs):
            lo, hi = r["ci95"] or (None, None)
            rows.append({"user": user, "label": r["label"], "ratio": r["ratio"], "lo": lo, "hi": hi,
                         "verdict": r["verdict"], "run_id": r["run"].id,
                         "device_label": (r["run"].summary or {}).get("device_label")})
    return rows


def progress(store, lesson: Lesson) -> dict:
    """How far the room is: people who launched the lesson, and those whose latest attempt finished."""
    latest: dict[str, list] = {}
    for runs in attempts(store, lesson).values():
        latest[runs[0].user] = runs
    return {"launched": len(latest), "finished": sum(all(r.finished for r in runs) for runs in latest.values()),
            "people": sorted(latest)}


def leaderboard(store, lesson: Lesson, device_class: str) -> list[dict]:
    """Finished runs on the lesson's data set and target (from the lesson or changed in the Lab), by
    training seconds to the target; runs that never reached it come last with their best accuracy."""
    _, reference = lesson.configs(device_class)[0]
    rows = []
    for run in store.list(status="done"):
        c, s = run.config, run.summary or {}
        if c.get("dataset") != reference.dataset or c.get("target_accuracy") != reference.target_accuracy:
            continue
        if s.get("best_test_accuracy") is None:
            continue
        changes = RunConfig.from_dict(c).changes_from(reference)
        changes.pop("device", None)
        rows.append({"user": run.user, "run_id": run.id, "time_to_target_s": s.get("time_to_target_s"),
                     "best_accuracy": s["best_test_accuracy"], "epochs": c.get("epochs"),
                     "changes": ", ".join(f"{k}={v}" for k, v in sorted(changes.items())) or "the lesson's settings",
                     "device_label": s.get("device_label")})
    rows.sort(key=lambda r: (r["time_to_target_s"] is None, r["time_to_target_s"] or 0, -r["best_accuracy"]))
    return rows
