"""Short words for settings, so that runs are named for what they are: `speednet fp32 bs=128 · 0
workers`, `#3 bf16 pruned 50%`, `fp32 · bs=64` for a sweep combination.

One registry of knob -> words serves run names, comparison labels and sweep labels, so the same
setting reads the same everywhere. No Streamlit here; torch only to read compression titles.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Callable

from optlab.config import RunConfig

_DEFAULTS = asdict(RunConfig())
_ORDER = {k: i for i, k in enumerate(_DEFAULTS)}

# -- compression steps --------------------------------------------------------------------------
# A step as the few words a run's name has room for; a method without an entry reads as its title.
STEP_WORDS: dict[str, Callable[[dict], str]] = {
    "prune_unstructured": lambda s: f"pruned {s.get('sparsity', 0.5):.0%}",
    "prune_structured": lambda s: f"channel-pruned {s.get('ratio', 0.3):.0%}",
    "prune_2to4": lambda s: "2:4 sparse",
    "half_precision": lambda s: f"{s.get('dtype', 'bf16')} weights",
    "int8_static": lambda s: "int8 static",
    "int8_dynamic": lambda s: "int8 dynamic",
    "distill": lambda s: f"distilled to {s.get('student', 'speednet')}",
    "export_onnx": lambda s: "ONNX",
    "export_tensorrt": lambda s: "TensorRT",
    "export_openvino": lambda s: "OpenVINO",
    "openvino_int8": lambda s: "OpenVINO int8",
}


def method_title(name: str) -> str:
    """'unstructured pruning' for 'prune_unstructured': the registry's title, or the name itself."""
    from optlab.compress.base import METHODS
    return METHODS.get(name).title if name in METHODS else name


def step_name(step: dict) -> str:
    """One compression step in a few words: 'pruned 50%'."""
    name = step.get("method", "?")
    words = STEP_WORDS.get(name)
    return words(step) if words else method_title(name)


def steps_name(steps: list[dict] | None) -> str:
    """Every variant-making step of a run, joined: 'pruned 50% + ONNX'."""
    made = [s for s in steps or [] if s.get("method") != "benchmark"]
    return " + ".join(step_name(s) for s in made) if made else "no compression"


# -- knobs ----------------------------------------------------------------------------------------
def pipeline_word(value, device: str | None = None) -> str:
    """The input pipeline named for what it does on the device: on the CPU the 'gpu' pipeline is a
    data set held in memory as one tensor, on a GPU it is the data set held on the GPU."""
    if value == "cpu":
        return "DataLoader"
    return "data in memory" if device == "cpu" else "data on the GPU" if device == "cuda" else "data on the device"


def _count(n, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _optional(fmt: Callable, empty: str) -> Callable:
    return lambda v, device=None: empty if v is None else fmt(v)


KNOB_WORDS: dict[str, Callable] = {
    "model": lambda v, device=None: str(v),
    "dataset": lambda v, device=None: str(v),
    "precision": lambda v, device=None: str(v),
    "batch_size": lambda v, device=None: f"bs={v}",
    "max_batch_size": lambda v, device=None: f"auto ≤ {v}",
    "epochs": lambda v, device=None: _count(v, "epoch", "epochs"),
    "lr": _optional(lambda v: f"lr {v:g}", "default lr"),
    "optimizer": _optional(str, "default optimizer"),
    "weight_decay": _optional(lambda v: f"wd {v:g}", "default wd"),
    "warmup_fraction": lambda v, device=None: f"warm-up {v:.0%}",
    "label_smoothing": lambda v, device=None: f"smoothing {v:g}",
    "channels_last": lambda v, device=None: "channels-last" if v else "NCHW",
    "compile": lambda v, device=None: "compiled" if v else "eager",
    "pipeline": pipeline_word,
    "num_workers": lambda v, device=None: _count(v, "worker", "workers"),
    "augment": lambda v, device=None: "augmented" if v else "no augmentation",
    "image_size": _optional(lambda v: f"{v} px", "native size"),
    "limit_train": _optional(lambda v: _count(v, "image", "images"), "all images"),
    "limit_test": _optional(lambda v: _count(v, "test image", "test images"), "all test images"),
    "target_accuracy": lambda v, device=None: f"target {v:.0%}",
    "seed": lambda v, device=None: f"seed {v}",
    "device": lambda v, device=None: f"device {v}",
    "data_path": _optional(lambda v: str(v).rstrip("/").rsplit("/", 1)[-1] or str(v), "no folder"),
    "profile": lambda v, device=None: "profiled" if v else "not profiled",
    "compress": lambda v, device=None: steps_name(v),
}


def knob_word(knob: str, value, device: str | None = None) -> str:
    """One setting as a short word; a knob without an entry reads 'knob=value'."""
    word = KNOB_WORDS.get(knob)
    return word(value, device) if word else f"{knob}={'default' if value is None else value}"


def config_device(config: dict, summary: dict | None = None) -> str | None:
    """'cpu' or 'cuda': where the run ran (its summary), else where it asked to run; None for 'auto'."""
    ran = (summary or {}).get("device")
    return ran or (config.get("device") if config.get("device") in ("cpu", "cuda") else None)


# -- names of runs --------------------------------------------------------------------------------
BASE = ("model", "precision", "batch_size")   # every run name starts with these
NAME_EXTRAS = 3                                # at most this many other settings after them


def base_name(config: dict) -> str:
    return " ".join(knob_word(k, config.get(k)) for k in BASE)


def differing(a: dict, b: dict, skip=BASE) -> list[str]:
    """Settings (in config order) whose value differs between two configs."""
    return [k for k in a if k not in skip and a.get(k) != b.get(k)]


def field_order(knob: str) -> int:
    """RunConfig's own order (stored configs come back with their keys sorted)."""
    return _ORDER.get(knob, len(_ORDER))


def is_default(knob: str, value) -> bool:
    return knob in _DEFAULTS and _DEFAULTS[knob] == value


def neighbour_names(configs: list[dict], devices: list[str | None] | None = None,
                    limit: int = NAME_EXTRAS) -> list[str]:
    """A name per config that says what differs from the configs next to it in the list:
    'speednet fp32 bs=128 · 0 workers' beside 'speednet fp32 bs=128'.

    A setting appears when it differs from the previous or the next config and is not at its
    default (the neighbour that changed it names the change); the base (model, precision, batch
    size) is always there.
    """
    devices = devices or [None] * len(configs)
    names = []
    for i, config in enumerate(configs):
        keys: list[str] = []
        for j in (i - 1, i + 1):
            if 0 <= j < len(configs):
                keys += [k for k in differing(config, configs[j]) if k not in keys and not is_default(k, config.get(k))]
        keys.sort(key=field_order)
        extras = [knob_word(k, config.get(k), devices[i]) for k in keys[:limit]]
        names.append(" · ".join([base_name(config), *extras]))
    return names


def labels_for(configs: list[dict], devices: list[str | None], limit: int = 2) -> list[list[str]]:
    """For each config, the words of the settings that vary across `configs` (a sweep's knobs, or
    what sets chosen runs apart). When more than `limit` vary, each config shows only its
    non-default values (up to `limit`): the changes, not a list of defaults."""
    vary = sorted((k for k in (configs[0] if configs else {})
                   if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1), key=field_order)
    out = []
    for config, device in zip(configs, devices):
        keys = vary if len(vary) <= limit else [k for k in vary if not is_default(k, config.get(k))][:limit]
        out.append([knob_word(k, config.get(k), device) for k in keys])
    return out
