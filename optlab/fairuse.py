"""Fair use of one device by a room: per-person limits, duration estimates, queue places, pause.

Limits come from the environment of the server (`make workshop` sets them):
OPTLAB_MAX_QUEUED runs waiting per person, OPTLAB_RUN_BUDGET_S seconds per run (wall time from
start to finish on this device). `admit()` is called by Store.submit for every queued run: a run
over a limit is refused with the reason (and, for the time budget, a smaller version that fits).
The scheduler stops a running run that overruns its budget, with the reason.

Durations are estimated only from the store's history: finished runs of the same model, data
set, image size and device (the same precision when there are such runs). A run is its
non-training time (start-up, data, evaluation) plus a training cost per image and epoch, each
the median over those runs. Without such runs there is no estimate, and it says so.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from optlab.config import ConfigError, RunConfig

_SCHEMA = "CREATE TABLE IF NOT EXISTS room_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
HISTORY = 500              # finished runs looked at for an estimate (newest first)
SMALLER_SHARE = 0.8        # a smaller version aims at this share of the budget
TRAIN_SIZES = {"fashion-mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000}   # train splits


class Refused(ConfigError):
    """A run this room's limits do not let in; `smaller` is a version that fits, when there is one."""

    def __init__(self, reason: str, smaller: RunConfig | None = None):
        super().__init__(reason)
        self.reason, self.smaller = reason, smaller


@dataclass(frozen=True)
class Limits:
    max_queued: int | None = None     # runs waiting per person
    budget_s: float | None = None     # seconds per run, start to finish

    @classmethod
    def from_env(cls) -> "Limits":
        def number(name, kind):
            raw = os.environ.get(name, "").strip()
            if not raw:
                return None
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, not {raw!r}") from None
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, not {raw!r}")
            return value
        return cls(number("OPTLAB_MAX_QUEUED", int), number("OPTLAB_RUN_BUDGET_S", float))

    def describe(self) -> str:
        parts = [f"{self.max_queued} runs waiting per person" if self.max_queued else "no limit on runs waiting",
                 f"{self.budget_s:.0f} s per run" if self.budget_s else "no time budget per run"]
        return ", ".join(parts)


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    basis: str                 # where the figure comes from, or why there is none
    runs: int = 0
    overhead_s: float | None = None
    per_image_s: float | None = None


# -- estimates ------------------------------------------------------------------------------------------
def device_kind(cfg: RunConfig) -> str:
    """'cuda' or 'cpu': where the scheduler will run this config (without loading torch)."""
    if cfg.device != "auto":
        return cfg.device
    from optlab.scheduler import visible_gpus
    return "cuda" if visible_gpus() else "cpu"


def _images(cfg: RunConfig, fallback: int | None = None) -> int | None:
    full = TRAIN_SIZES.get(cfg.dataset, fallback)
    if cfg.limit_train is None:
        return full
    return min(cfg.limit_train, full) if full else cfg.limit_train


def _size(cfg: dict) -> int | None:
    return cfg.get("image_size")


def estimate(store, cfg: RunConfig) -> Estimate:
    kind = device_kind(cfg)
    what = f"{cfg.model} on {cfg.dataset}" + (f" at {cfg.image_size} px" if cfg.image_size else "") + \
           f" on the {'GPU' if kind == 'cuda' else 'CPU'}"
    similar = [r for r in store.list(status="done", limit=HISTORY)
               if r.summary and r.started_at and r.finished_at and r.summary.get("train_seconds")
               and r.config.get("model") == cfg.model and r.config.get("dataset") == cfg.dataset
               and _size(r.config) == cfg.image_size and r.summary.get("device") == kind
               and r.summary.get("train_images") and not r.config.get("compress")]
    same = [r for r in similar if r.config.get("precision") == cfg.precision]
    basis_runs, note = (same, f"in {cfg.precision}") if same else (similar, "in other precisions")
    if not basis_runs:
        return Estimate(None, f"no finished run of {what} in this store yet: no estimate")
    overheads = [max(0.0, (r.finished_at - r.started_at) - r.summary["train_seconds"]) for r in basis_runs]
    per_image = [r.summary["train_seconds"] / (r.summary["train_images"] * r.summary.get("epochs", 1))
                 for r in basis_runs]
    images = _images(cfg, max(r.summary["train_images"] for r in basis_runs))
    overhead, cost = statistics.median(overheads), statistics.median(per_image)
    seconds = overhead + cost * images * cfg.epochs
    basis = f"from {len(basis_runs)} finished run(s) of {what} {note}"
    if cfg.compress:
        basis += "; compression steps not included"
    return Estimate(seconds, basis, len(basis_runs), overhead, cost)


def smaller_version(cfg: RunConfig, est: Estimate, budget_s: float) -> RunConfig | None:
    """Fewer training images (and one epoch if needed) so the estimate fits SMALLER_SHARE of the budget."""
    if est.per_image_s is None or not est.per_image_s:
        return None
    work = (SMALLER_SHARE * budget_s - est.overhead_s) / est.per_image_s   # images x epochs that fit
    batch = cfg.batch_size if isinstance(cfg.batch_size, int) else 256
    epochs = cfg.epochs
    while epochs > 1 and work / epochs < 4 * batch:
        epochs -= 1
    images = int(work / epochs) // batch * batch
    if images < 2 * batch:
        return None
    return cfg.replace(limit_train=images, epochs=epochs,
                       limit_test=min(cfg.limit_test or images, max(images // 4, batch)))


# -- admission ------------------------------------------------------------------------------------------
def admit_many(store, configs: list[RunConfig], user: str, limits: Limits | None = None) -> list[Estimate]:
    """Check runs about to be queued together against the room's rules; raise Refused for the first
    that breaks one. Returns each run's estimate (with no limits set nothing is estimated)."""
    from optlab.people import workshop_mode
    limits = limits or Limits.from_env()
    if workshop_mode() and not user:
        raise Refused("join the workshop first (Workshop page): runs in a room carry their owner's name")
    if limits.max_queued and user:
        waiting = len(store.list(status="queued", user=user))
        if waiting + len(configs) > limits.max_queued:
            raise Refused(f"{user} has {waiting} run(s) waiting and the room allows {limits.max_queued} per "
                          f"person: {'this adds' if len(configs) == 1 else f'these add'} {len(configs)}. "
                          "Wait for one to start, or cancel one.")
    estimates = []
    for cfg in configs:
        est = estimate(store, cfg) if limits.budget_s else Estimate(None, "no time budget in this room")
        if limits.budget_s and est.seconds is not None and est.seconds > limits.budget_s:
            smaller = smaller_version(cfg, est, limits.budget_s)
            offer = (f" A smaller version fits: {smaller.limit_train} training images, {smaller.epochs} epoch(s)."
                     if smaller else " No smaller version of it fits: choose a smaller model or image size.")
            raise Refused(f"this run would take about {est.seconds:.0f} s ({est.basis}), over the room's "
                          f"budget of {limits.budget_s:.0f} s per run.{offer}", smaller)
        estimates.append(est)
    return estimates


def admit(store, cfg: RunConfig, user: str, limits: Limits | None = None) -> Estimate:
    return admit_many(store, [cfg], user, limits)[0]


# -- the instructor's settings for the room: the pause, the Lab's focus ----------------------------------
def _settings(store) -> dict[str, str]:
    with store.connect() as db:
        db.execute(_SCHEMA)
        return {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM room_settings")}


def setting(store, key: str) -> str | None:
    return _settings(store).get(key)


def set_setting(store, key: str, value: str | None) -> None:
    """Set (or with None, clear) one room setting."""
    with store.connect() as db:
        db.execute(_SCHEMA)
        if value is None:
            db.execute("DELETE FROM room_settings WHERE key = ?", (key,))
        else:
            db.execute("INSERT OR REPLACE INTO room_settings (key, value) VALUES (?, ?)", (key, value))


def set_paused(store, paused: bool, by: str = "") -> None:
    set_setting(store, "paused", f"{time.time():.0f} {by}" if paused else None)


def paused(store) -> str | None:
    """Who paused the queue and when ('1700000000 Lin'), or None when it runs."""
    return setting(store, "paused")


# -- places in the queue -------------------------------------------------------------------------------
def queue_places(store, slots: int | None = None, now: float | None = None, on_gpus: bool | None = None) -> list[dict]:
    """Each queued run in the order it will start: place, run, owner, its estimate, and the
    expected start (None when a run ahead has no estimate, the queue is paused, or runs go to a
    Ray cluster, which places them by its own resources). As the
    scheduler does, a run starts once all the slots it needs are free (a data-parallel run one per
    rank on GPUs, every slot on a CPU-only machine), and the runs behind it wait with it."""
    from optlab.device import visible_gpus
    from optlab.scheduler import default_slots, slots_for
    now = now or time.time()
    slots = slots or int(os.environ.get("OPTLAB_SLOTS") or default_slots())
    on_gpus = bool(visible_gpus()) if on_gpus is None else on_gpus
    estimates: dict[str, Estimate] = {}

    def est(run) -> Estimate:
        key = run.run_config.to_json()
        if key not in estimates:
            estimates[key] = estimate(store, run.run_config)
        return estimates[key]

    # when each slot frees up; None = a run whose end cannot be estimated
    free: list[float | None] = []
    for run in store.list(status="running"):
        e = est(run)
        end = None if e.seconds is None else max(now, (run.started_at or now) + e.seconds)
        free += [end] * slots_for(run.config, slots, on_gpus)
    free = free[:slots] + [now] * max(0, slots - len(free))
    # once one start is unknown, every later one is too; on a Ray cluster, Ray places the runs
    lost = paused(store) is not None or bool(os.environ.get("OPTLAB_RAY_ADDRESS", "").strip())
    places, after = [], now               # no run starts before the one ahead of it
    for n, run in enumerate(store.fair_queue(), start=1):
        e = est(run)
        need = slots_for(run.config, slots, on_gpus)
        start = None
        if need > slots:
            pass   # the scheduler fails it at once: it never takes a place in the line
        elif not lost:
            known = sorted(t for t in free if t is not None)
            if len(known) >= need and (known[need - 1] <= now or len(known) == len(free)):
                start = max(after, known[need - 1])
                for t in known[:need]:          # the slots that free up first are the ones it takes
                    free[free.index(t)] = None if e.seconds is None else start + e.seconds
                after = start
            else:
                lost = True
        places.append({"place": n, "run": run, "user": run.user, "estimate": e, "expected_start": start})
    return places
