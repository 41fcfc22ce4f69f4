"""Sweeps: one base RunConfig, one or two knobs with several values each, one run per combination.

`expand` is pure (configs in, configs out) so the form, the CLI and the tests plan sweeps the same
way; `submit_sweep` validates every combination (and checks the room's limits, optlab.fairuse) before
queueing any, so a sweep is all or nothing.
"""
from __future__ import annotations

import itertools
import typing
import uuid
from dataclasses import dataclass, fields

from optlab import repeats
from optlab.config import ConfigError, RunConfig, parse_batch_size
from optlab.naming import knob_word

MAX_KNOBS = 2      # a grid of more than two knobs cannot be read off one chart
MAX_RUNS = 48      # a workshop GPU shared by a room should not be handed a thousand runs by one click

# Knobs that make sense to sweep: everything with a scalar value. `compress` is a list of steps and
# `data_path` names one folder, so neither is a dimension of a grid; `repeats` says how often each
# combination runs, which is a property of the whole sweep, not a setting to compare.
SWEEPABLE = tuple(f.name for f in fields(RunConfig) if f.name not in ("compress", "data_path", "repeats"))

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "default", "-"}


@dataclass(frozen=True)
class SweepRun:
    """One combination: the values it sets, a short label naming them ('bf16 · bs=64'), and the
    full config."""
    values: dict
    label: str
    config: RunConfig


def _field_types() -> dict[str, object]:
    return typing.get_type_hints(RunConfig)


def parse_value(knob: str, text: str):
    """One value typed for `knob` the way RunConfig declares it; ConfigError when it cannot be."""
    if knob not in SWEEPABLE:
        raise ConfigError(f"{knob!r} cannot be swept; choose one of: {', '.join(SWEEPABLE)}")
    text = str(text).strip()
    hint = _field_types()[knob]
    args = set(typing.get_args(hint)) or {hint}
    if knob == "batch_size":
        return parse_batch_size(text)
    if type(None) in args and text.lower() in _NONE:
        return None
    if bool in args:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{knob} takes true or false, not {text!r}")
    for kind in (int, float):
        if kind in args:
            try:
                return kind(text)
            except ValueError:
                if float in args and kind is int:
                    continue
                raise ConfigError(f"{knob} takes a {'whole ' if kind is int else ''}number, not {text!r}") from None
    return text


def parse_values(knob: str, text: str) -> list:
    """Comma-separated text -> typed values, in order, duplicates dropped.

    >>> parse_values("batch_size", "64, 128, auto")
    [64, 128, 'auto']
    """
    values = []
    for part in str(text).split(","):
        if part.strip():
            value = parse_value(knob, part)
            if value not in values:
                values.append(value)
    if not values:
        raise ConfigError(f"give at least one value for {knob}, separated by commas")
    return values


def expand(base: RunConfig, axes: dict[str, list]) -> list[SweepRun]:
    """Every combination of the values in `axes` applied to `base`, first knob varying slowest.

    Raises ConfigError for more than MAX_KNOBS knobs, an unknown knob, a knob without values, or
    more than MAX_RUNS combinations. The configs are not validated here (see `submit_sweep`).
    """
    if not axes:
        raise ConfigError("choose at least one knob to sweep")
    if len(axes) > MAX_KNOBS:
        raise ConfigError(f"sweep at most {MAX_KNOBS} knobs at a time, not {len(axes)} ({', '.join(axes)})")
    for knob, values in axes.items():
        if knob not in SWEEPABLE:
            raise ConfigError(f"{knob!r} cannot be swept; choose one of: {', '.join(SWEEPABLE)}")
        if not values:
            raise ConfigError(f"give at least one value for {knob}")
    total = 1
    for values in axes.values():
        total *= len(values)
    if total * base.repeats > MAX_RUNS:
        times = f" ({total} combinations x {base.repeats} repeats)" if base.repeats > 1 else ""
        raise ConfigError(f"this sweep would queue {total * base.repeats} runs{times}; "
                          f"at most {MAX_RUNS} are allowed at once")
    runs = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        label = " · ".join(knob_word(k, v, base.device if base.device != "auto" else None) for k, v in values.items())
        runs.append(SweepRun(values, label, base.replace(**values)))
    return runs


def new_sweep_id() -> str:
    return "sweep-" + uuid.uuid4().hex[:8]


def submit_sweep(store, runs: list[SweepRun], *, user: str = "", device_for=None,
                 sweep_id: str | None = None) -> tuple[str, list[int]]:
    """Validate every combination, then queue them all under one sweep id.

    `device_for(config) -> DeviceInfo` names the machine each combination will run on, so a sweep
    over precision on a CPU-only server is refused for fp16 before anything is queued. Raises
    ConfigError naming the first bad combination; nothing is queued then. With repeats, each
    combination is one repeat group and the rounds are interleaved (A B A B ..., see
    optlab.repeats.queue); the ids come back in queue order.
    """
    for run in runs:
        try:
            run.config.validate(device_for(run.config) if device_for else None)
        except ConfigError as e:
            raise ConfigError(f"{run.label} (one of the sweep's runs): {e}") from None
    from optlab.fairuse import admit_many
    admit_many(store, [run.config for run in runs], user)   # the room's limits: all or nothing
    sweep_id = sweep_id or new_sweep_id()
    ids = repeats.queue(store, [(run.config, run.label) for run in runs], user=user, sweep_id=sweep_id)
    return sweep_id, ids
