"""Fitting a run to the machine before it is queued.

* which values of a choice this device offers, and why the others are unavailable
  (RunConfig's own device checks, asked once per value, so the form and Launch agree);
* every check that can be made before a run reaches the queue (`preflight`): the data set is
  there and allowed, the batch fits in the training images, the run has steps enough to measure;
* each preset in a version for this device (CPU versions of the GPU presets);
* a smaller version of a run that would take too long here (`shrink`, from a measured estimate).

Plain Python: the data set is read (once per server) only to count its images.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

from optlab.config import DEVICES, PIPELINES, PRECISIONS, RunConfig, preset

# Steps a run should have at least: warm-up, the profiled window and enough steady steps to time
# and to learn from (the automatic batch size keeps the same number).
ENOUGH_STEPS = 50
WARMUP_STEPS, PROFILED_STEPS = 5, 6   # what the runner leaves out of the timing (optlab.runner)


# -- choices this device offers -------------------------------------------------------------------------
CHOICES: dict[str, tuple] = {"precision": PRECISIONS, "device": DEVICES, "pipeline": PIPELINES}


def unavailable(knob: str, info, config: RunConfig | None = None) -> dict[str, str]:
    """value -> why it cannot run on `info` (optlab.device.DeviceInfo), for each value of `knob`
    that RunConfig's device check refuses; the other settings are taken from `config`."""
    config = config or RunConfig()
    out = {}
    for value in CHOICES[knob]:
        errors = config.replace(**{knob: value})._device_errors(info)
        if errors:
            out[value] = errors[0]
    return out


def short_reason(reason: str) -> str:
    """The first clause of a refusal ('fp16 needs a GPU'), for a caption under a narrow control."""
    return reason.split(";")[0].split(" (")[0]


def unavailable_note(refused: dict[str, str], info) -> str:
    """One line for the values a control leaves out: 'tf32, fp16: need an NVIDIA GPU, and this server
    has none', or each value's own reason on a GPU server."""
    if not refused:
        return ""
    if not info.is_gpu:
        return f"{', '.join(refused)}: need{'s' if len(refused) == 1 else ''} an NVIDIA GPU, and this server has none"
    return "; ".join(short_reason(why) for why in refused.values())


def offered(knob: str, info, config: RunConfig | None = None) -> list:
    refused = unavailable(knob, info, config)
    return [v for v in CHOICES[knob] if v not in refused]


# -- what the data set holds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DataFacts:
    train_images: int       # after the run's train limit
    test_images: int
    available_train: int    # in the data set
    channels: int
    size: int               # the run's image size (native unless resized)
    num_classes: int


@functools.lru_cache(maxsize=16)
def _counted(dataset: str, data_path: str | None, image_size: int | None, limit_train, limit_test):
    from optlab.data import DATASETS
    if dataset == "imagefolder":
        return _count_folder(data_path, image_size)
    ds = DATASETS.get(dataset)(RunConfig(dataset=dataset, image_size=image_size, limit_train=limit_train,
                                         limit_test=limit_test))
    return len(ds.train_y), len(ds.test_y), ds.channels, ds.native_size, ds.num_classes


def _count_folder(data_path: str | None, image_size: int | None):
    """An image folder counted without decoding its images (its loader splits it the same way)."""
    from torchvision.datasets import ImageFolder

    from optlab.data import check_image_folder
    path = check_image_folder(data_path)
    if (path / "train").is_dir() and ((path / "test").is_dir() or (path / "val").is_dir()):
        train = ImageFolder(str(path / "train"))
        test = ImageFolder(str(path / "test" if (path / "test").is_dir() else path / "val"))
        n_train, n_test, classes = len(train), len(test), len(train.classes)
    else:
        found = ImageFolder(str(path))
        n_train = int(0.8 * len(found))
        n_test, classes = len(found) - n_train, len(found.classes)
    return n_train, n_test, 3, image_size or 64, classes


def data_facts(cfg: RunConfig) -> DataFacts:
    """The run's image counts and shapes. Raises optlab.data.DataError when the data set is missing,
    not allowed or unreadable: the same message the run would fail with."""
    synthetic = cfg.dataset == "synthetic"
    limits = (cfg.limit_train, cfg.limit_test) if synthetic else (None, None)
    n_train, n_test, channels, native, classes = _counted(
        cfg.dataset, cfg.data_path if cfg.dataset == "imagefolder" else None,
        cfg.image_size if cfg.dataset in ("synthetic", "imagefolder") else None, *limits)
    return DataFacts(min(n_train, cfg.limit_train or n_train), min(n_test, cfg.limit_test or n_test), n_train,
                     channels, cfg.image_size or native, classes)


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the training pipeline drops the last, incomplete batch)."""
    return train_images // batch_size


# -- checks before queueing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    level: str        # "error": the run would fail, it is not queued; "warning": it would run, poorly
    message: str


CHECKS: list[Callable] = []


def check(fn: Callable) -> Callable:
    """Register `fn(cfg, facts) -> Finding | None` as a check `preflight` makes."""
    CHECKS.append(fn)
    return fn


def preflight(cfg: RunConfig) -> list[Finding]:
    """Everything about `cfg` that can be checked before it is queued and RunConfig.validate does not
    check: the data set (found, allowed, large enough for the limits) and the steps the run will
    have. Errors first."""
    from optlab.data import DataError
    try:
        facts = data_facts(cfg)
    except DataError as e:
        return [Finding("error", str(e))]
    found = [f for f in (c(cfg, facts) for c in CHECKS) if f]
    return sorted(found, key=lambda f: f.level != "error")


@check
def _train_limit(cfg: RunConfig, facts: DataFacts):
    if cfg.limit_train and cfg.limit_train > facts.available_train:
        return Finding("error", f"Training images {cfg.limit_train:,} is more than {cfg.dataset}'s "
                                f"{facts.available_train:,}; use at most {facts.available_train:,}, or empty for all")


@check
def _batch_fits(cfg: RunConfig, facts: DataFacts):
    if isinstance(cfg.batch_size, int) and cfg.batch_size > facts.train_images:
        return Finding("error", f"batch size {cfg.batch_size:,} is larger than the {facts.train_images:,} training "
                                "images: not one step could be made; lower the batch size or use more images")


@check
def _enough_steps(cfg: RunConfig, facts: DataFacts):
    if not isinstance(cfg.batch_size, int) or cfg.batch_size > facts.train_images:
        return None
    steps = cfg.epochs * steps_per_epoch(facts.train_images, cfg.batch_size)
    if steps >= ENOUGH_STEPS:
        return None
    left = max(0, steps - WARMUP_STEPS - (PROFILED_STEPS if cfg.profile else 0))
    better = max(1, facts.train_images * cfg.epochs // ENOUGH_STEPS)
    return Finding("warning", f"only {steps} steps in all ({cfg.epochs} × {facts.train_images:,} images ÷ "
                              f"batch {cfg.batch_size}): about {left} of them are timed after warm-up"
                              f"{' and profiling' if cfg.profile else ''}, too few to measure throughput well or "
                              f"to learn much. A batch of {better} or less gives {ENOUGH_STEPS}+ steps")


# A run expected to take longer than this on a shared machine gets a warning and a smaller version
# before it is queued. A policy for a workshop or a lunch break, not a measurement.
BUDGET_S = {"cpu": 10 * 60, "cuda": 30 * 60}


def plan(cfg: RunConfig, axes: dict | None, device_for: Callable) -> list:
    """What Launch queues, checked before anything is: `[cfg]` for one run, or the sweep's
    combinations (optlab.sweeps.SweepRun) for `axes`; each validated against the device it would
    run on (`device_for(config)`) and pre-flighted. ConfigError naming the first problem (and the
    sweep combination it is in)."""
    from optlab.config import ConfigError
    from optlab.sweeps import expand
    combos = expand(cfg, axes) if axes is not None else [None]
    for combo in combos:
        config = combo.config if combo else cfg
        where = f"{combo.label} (one of the sweep's runs): " if combo else ""
        try:
            config.validate(device_for(config))
        except ConfigError as e:
            raise ConfigError(where + str(e)) from None
        errors = [f.message for f in preflight(config) if f.level == "error"]
        if errors:
            raise ConfigError(where + "; ".join(errors))
    return combos if axes is not None else [cfg]


# -- presets for this device -------------------------------------------------------------------------------
# The GPU presets in a size a CPU finishes in minutes: same knobs (the lesson), fewer images and
# epochs, batches that leave steps enough to measure.
CPU_VERSIONS: dict[str, dict] = {
    "baseline": dict(limit_train=4096, limit_test=2000, epochs=1, batch_size=64),
    "amp": dict(limit_train=4096, limit_test=2000, epochs=1, batch_size=64),
    "amp-gpu-data": dict(limit_train=4096, limit_test=2000, epochs=1, batch_size=64),
    "imagenet-size": dict(limit_train=512, limit_test=256, epochs=1, batch_size=8),
    "speedrun": dict(limit_train=8192, limit_test=2000, epochs=2, batch_size=128),
}


def preset_for(name: str, info) -> tuple[RunConfig, str | None]:
    """(the preset as this device runs it, a sentence on what changed; None when nothing did)."""
    cfg = preset(name)
    if info.is_gpu or name not in CPU_VERSIONS:
        return cfg, None
    small = cfg.replace(**CPU_VERSIONS[name])
    changed = ", ".join(f"{_words(k, getattr(cfg, k))} → {_words(k, getattr(small, k))}"
                        for k in CPU_VERSIONS[name] if getattr(cfg, k) != getattr(small, k))
    return small, f"CPU version of {name}: same knobs, a smaller run ({changed})"


def _words(knob: str, value) -> str:
    from optlab.naming import knob_word
    return knob_word(knob, value)


# -- a smaller run --------------------------------------------------------------------------------------------
def shrink(cfg: RunConfig, seconds_per_image: float, overhead_s: float, budget_s: float,
           facts: DataFacts) -> RunConfig | None:
    """A version of `cfg` whose training should fit in `budget_s` at the measured `seconds_per_image`
    (one training image, one epoch) plus `overhead_s`: one epoch, then fewer images (a power of
    two, at least ENOUGH_STEPS batches of 16), the batch lowered when the steps would run short.
    None when even that would not fit."""
    room = budget_s - overhead_s
    if room <= 0 or seconds_per_image <= 0:
        return None
    epochs = 1 if cfg.epochs * facts.train_images * seconds_per_image > room else cfg.epochs
    images = min(facts.train_images, int(room / (seconds_per_image * epochs)))
    images = 2 ** int(math.log2(images)) if images >= 1 else 0
    if images < ENOUGH_STEPS * 16:
        return None
    batch = cfg.batch_size if isinstance(cfg.batch_size, int) else 128
    while images * epochs // batch < ENOUGH_STEPS and batch > 16:
        batch //= 2
    test = min(facts.test_images, 2000)
    return cfg.replace(epochs=epochs, limit_train=images, limit_test=test,
                       batch_size=batch if isinstance(cfg.batch_size, int) else cfg.batch_size)

