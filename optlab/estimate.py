"""How long a run will take on this device, before it is queued, from measurements only:

* past finished runs in the store with the same model, data, image size, precision and device
  (their training seconds per image, and their start-up, evaluation and compression time), or
* a short calibration here and now: a few real training steps of the model at the run's shapes,
  timed on the device, plus one evaluation batch. It is skipped while a run is training on this
  server (it would slow that run and be slowed by it).

Every estimate says which of the two it came from and what it leaves out.
"""
from __future__ import annotations

import atexit
import json
import threading
import time
from dataclasses import dataclass

from optlab.config import RunConfig
from optlab.fit import DataFacts, steps_per_epoch

# Largest batch timed. Images/s depends on the batch on CPUs too (speednet fp32 on 2 cores: 10, 17
# and 23 images/s at batch 16, 64 and 128), so the run's own batch is timed up to these sizes.
CALIBRATION_BATCH = {"cpu": 256, "cuda": 1024}
CALIBRATION_STEPS = 3                           # timed steps, after one untimed
CALIBRATION_BUDGET_S = 6.0                      # stop timing after this long (at least one timed step)
# A past run must share these (and the image size and device): each changes the speed of a step.
SAME = ("model", "dataset", "precision", "batch_size", "channels_last", "compile")
CLOSER = ("pipeline", "num_workers", "augment", "compress")   # the closer the better; named when they differ


@dataclass(frozen=True)
class Estimate:
    seconds: float | None              # the whole run, start to finish; None when not (yet) estimated
    train_seconds: float | None        # the training epochs alone
    seconds_per_image: float | None    # one training image, one epoch (for fit.shrink)
    overhead_seconds: float            # start-up, evaluation, compression: the rest
    steps: int | None                  # optimizer steps in all (None for batch size 'auto')
    source: str                        # "past runs", "calibration", "timing" (under way) or "none"
    basis: str                         # one sentence: where the figures come from, what they leave out


def estimate(store, cfg: RunConfig, info, facts: DataFacts, *, wait: float = 0) -> Estimate:
    """The run's duration on `info` (optlab.device.DeviceInfo): from the closest past run, else from
    a calibration, which runs in the background: until it is done the estimate's source is
    "timing" (this call waits up to `wait` seconds for it). No calibration while a run is training
    here."""
    steps = cfg.epochs * steps_per_epoch(facts.train_images, cfg.batch_size) if isinstance(cfg.batch_size, int) else None
    past = closest_past_run(store, cfg, info, facts)
    if past is not None:
        return _from_past(cfg, facts, past, steps)
    running = store.list(status="running")
    if running:
        return Estimate(None, None, None, 0.0, steps, "none",
                        f"no past run of {cfg.model} at {facts.size} px in {cfg.precision} on this device to go by, and "
                        f"timing a few steps now would disturb run #{running[0].id}, which is training here")
    try:
        timed = calibration(cfg, facts, info, wait=wait)
    except Exception as e:   # a model that does not build or fit: the run itself will say why
        return Estimate(None, None, None, 0.0, steps, "none", f"timing a few steps here failed ({type(e).__name__}: {e})")
    if timed is None:
        return Estimate(None, None, None, 0.0, steps, "timing",
                        f"timing a few training steps of {cfg.model} here (no past run of these settings on this device)…")
    return _from_calibration(cfg, facts, timed, steps)


# -- from the store -----------------------------------------------------------------------------------
def closest_past_run(store, cfg: RunConfig, info, facts: DataFacts):
    """The finished run most like `cfg` on this device: the same SAME settings, image size and
    device; then as many of CLOSER alike as possible, the newest first."""
    wanted = cfg.to_dict()
    best, best_score = None, -1
    for run in store.list(status="done", limit=500):
        s = run.summary or {}
        if (s.get("device_label") != info.label or s.get("image_size") != facts.size
                or not all(_alike(k, run, wanted) for k in SAME)
                or not s.get("train_seconds") or not s.get("train_images") or not run.started_at):
            continue
        score = sum(_alike(k, run, wanted) for k in CLOSER)
        if score > best_score:
            best, best_score = run, score
    return best


def _alike(knob: str, run, wanted: dict) -> bool:
    if knob == "batch_size":   # 'auto' is alike a past run that chose the same size
        return wanted[knob] in (run.config.get(knob), (run.summary or {}).get("batch_size"))
    return json.dumps(run.config.get(knob), sort_keys=True) == json.dumps(wanted[knob], sort_keys=True)


def _from_past(cfg: RunConfig, facts: DataFacts, run, steps) -> Estimate:
    """The past run's warm-up as it took, then its steady speed for the rest of the images, plus its
    start-up and evaluation time (a short past run's average would count its warm-up many times)."""
    s = run.summary
    images = facts.train_images * cfg.epochs
    steady = s.get("train_images_per_s")
    warm_images = (s.get("warmup_steps") or 0) * (s.get("batch_size") or 0)
    if steady and s.get("warmup_seconds") is not None and images > warm_images:
        per_image = 1 / steady
        train = s["warmup_seconds"] + (images - warm_images) * per_image
        how = (f"its warm-up ({s['warmup_seconds']:,.0f} s), then {steady:,.0f} images/s steady "
               f"({per_image * 1000:,.0f} ms per training image)")
    else:
        per_image = s["train_seconds"] / (s["train_images"] * s.get("epochs", 1))
        train = per_image * images
        how = f"{per_image * 1000:,.0f} ms per training image on average"
    wall = (run.finished_at or run.started_at) - run.started_at
    overhead = max(0.0, wall - s["train_seconds"])
    rest = "start-up and evaluation" + (" and compression" if s.get("variants") else "")
    differ = [k for k in CLOSER if not _alike(k, run, cfg.to_dict())]
    unlike = f"; it differed in {', '.join(differ)}" if differ else ""
    basis = f"from run #{run.id} on this device: {how}, plus {overhead:,.0f} s of {rest} as it took{unlike}"
    return Estimate(train + overhead, train, per_image, overhead, steps, "past runs", basis)


# -- from a calibration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    batch: int
    train_images_per_s: float
    eval_images_per_s: float
    steps: int
    seconds: float


_DONE: dict[tuple, Calibration | Exception] = {}
_UNDER_WAY: dict[tuple, threading.Thread] = {}
_LOCK = threading.Lock()
_TIMING = threading.Lock()    # one calibration at a time: two would time each other
_STOP = threading.Event()     # set at exit: a thread still inside torch then would abort the process


class _Stopped(Exception):
    pass


@atexit.register
def _stop_calibrations() -> None:
    """Let a calibration under way end at its next step before the interpreter goes."""
    _STOP.set()
    for thread in list(_UNDER_WAY.values()):
        thread.join(timeout=60)


def calibration(cfg: RunConfig, facts: DataFacts, info, *, wait: float | None = 0) -> Calibration | None:
    """A few training steps of `cfg`'s model at its shapes and precision on the device, timed with
    the device synchronised, in a background thread; kept for the server's life per model, shape,
    precision and batch. None while it is under way after waiting `wait` seconds (None: until it is
    done); raises what the timing raised."""
    batch = min(cfg.batch_size if isinstance(cfg.batch_size, int) else 128, CALIBRATION_BATCH[info.kind],
                facts.train_images)
    key = (cfg.model, facts.channels, facts.num_classes, facts.size, cfg.precision, cfg.channels_last, batch,
           info.label)
    with _LOCK:
        if key not in _DONE and key not in _UNDER_WAY:
            thread = threading.Thread(target=_calibrate, args=(key, cfg, facts, info, batch), daemon=True,
                                      name=f"calibrate {cfg.model}")
            _UNDER_WAY[key] = thread
            thread.start()
        thread = _UNDER_WAY.get(key)
    if thread is not None and (wait is None or wait > 0):
        thread.join(wait)
    result = _DONE.get(key)
    if isinstance(result, Exception):
        raise result
    return result


def _calibrate(key, cfg, facts, info, batch) -> None:
    try:
        with _TIMING:
            result = _time_steps(cfg, facts, info, batch)
    except Exception as e:
        result = e
    with _LOCK:
        _DONE[key] = result
        _UNDER_WAY.pop(key, None)


def _time_steps(cfg: RunConfig, facts: DataFacts, info, batch: int) -> Calibration:
    import torch

    from optlab.models import MODELS, build_model
    from optlab.pipeline import memory_format
    from optlab.train import optimizer_step, setup_optimizer, setup_precision

    device = torch.device("cuda", info.index or 0) if info.is_gpu else torch.device("cpu")
    spec = MODELS.get(cfg.model)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(_worker_threads())
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, facts.channels, facts.num_classes, facts.size)
        model = model.to(device, memory_format=memory_format(cfg.channels_last))
        precision = setup_precision(cfg.precision, device)
        optimizer, _ = setup_optimizer(model, cfg.optimizer or spec.optimizer, cfg.lr or spec.lr,
                                       spec.weight_decay if cfg.weight_decay is None else cfg.weight_decay,
                                       batch, 100, 0.1)
        x = torch.randn(batch, facts.channels, facts.size, facts.size, device=device)
        x = x.contiguous(memory_format=memory_format(cfg.channels_last))
        y = torch.randint(0, facts.num_classes, (batch,), device=device)
        loss_fn = torch.nn.CrossEntropyLoss()

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def step():
            if _STOP.is_set():
                raise _Stopped()
            optimizer_step(model, loss_fn, optimizer, precision, x, y)

        model.train()
        step()                      # untimed: allocation, autotuning
        sync()
        start, done = time.perf_counter(), 0
        while done < CALIBRATION_STEPS and (done == 0 or time.perf_counter() - start < CALIBRATION_BUDGET_S):
            step()
            sync()
            done += 1
        train_s = time.perf_counter() - start
        model.eval()
        with torch.no_grad(), precision.autocast():
            model(x)
            sync()
            t = time.perf_counter()
            model(x)
            sync()
            eval_s = time.perf_counter() - t
        return Calibration(batch, batch * done / train_s, batch / eval_s, done, train_s + eval_s)
    finally:
        torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _worker_threads() -> int:
    """The intra-op threads a worker gets (optlab.scheduler.worker_env), so the steps are timed
    with the cores the run will have."""
    import os

    from optlab.scheduler import default_slots
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // default_slots())


def _from_calibration(cfg: RunConfig, facts: DataFacts, timed: Calibration, steps) -> Estimate:
    per_image = 1 / timed.train_images_per_s
    train = per_image * facts.train_images * cfg.epochs
    evaluation = cfg.epochs * facts.test_images / timed.eval_images_per_s
    batch_note = "" if timed.batch == cfg.batch_size else f" (timed at batch {timed.batch})"
    left_out = ["start-up", "the input pipeline"] + (["torch.compile"] if cfg.compile else []) + (
        ["compression"] if cfg.compress else [])
    steps_timed = f"{timed.steps} training step{'s' if timed.steps != 1 else ''}"
    basis = (f"from timing {steps_timed} of {cfg.model} here just now{batch_note}: "
             f"{timed.train_images_per_s:,.0f} images/s, and evaluation at {timed.eval_images_per_s:,.0f} images/s "
             f"({', '.join(left_out[:-1])} and {left_out[-1]} not included)")
    return Estimate(train + evaluation, train, per_image, evaluation, steps, "calibration", basis)
