"""RunConfig: the one description of a run. It validates itself and round-trips JSON and the CLI.

Nothing here imports torch: the commands that only queue or read runs check a config in a
fraction of a second.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DEVICES = ("auto", "cuda", "cpu")
PIPELINES = ("cpu", "gpu")
OPTIMIZERS = ("sgd", "adamw")
MAX_REPEATS = 20   # a room shares one GPU: one click must not hold it for a hundred runs
MAX_GPUS = 8       # data-parallel ranks of one run: the devices of one server
# The names in optlab.models.MODELS and optlab.data.DATASETS, so that a config is checked
# without importing torch (seconds); tests/test_config.py keeps them equal to the registries.
MODEL_NAMES = ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "vit_tiny", "speednet")
DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
# Training images of the data sets whose size is fixed (imagefolder's depends on the folder,
# synthetic's on the train limit), to check a batch size before the run is queued.
TRAIN_IMAGES = {"fashion-mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000}
SEED_MAX = 2**32 - 1            # numpy and the DataLoader workers take 32-bit seeds
INT_MAX = 2**63 - 1             # what SQLite and torch can hold
TEXT_MAX = 4096                 # characters in any text setting (a data path)


class ConfigError(ValueError):
    """A value a user chose that is not allowed; the message says what is."""


@dataclass
class RunConfig:
    model: str = "speednet"
    dataset: str = "fashion-mnist"
    precision: str = "fp32"            # fp32 | tf32 | fp16 | bf16 (autocast; fp16 adds a GradScaler)
    batch_size: int | str = 128        # images per step, or "auto": largest that fits, with headroom
    max_batch_size: int = 4096         # cap for "auto"
    epochs: int = 2
    lr: float | None = None            # learning rate at batch 256; None = the model's default
    optimizer: str | None = None       # sgd | adamw; None = the model's default
    weight_decay: float | None = None  # None = the model's default
    warmup_fraction: float = 0.1       # share of steps with linear warm-up, then linear decay to 0
    label_smoothing: float = 0.1
    channels_last: bool = False        # NHWC memory format for model and inputs
    compile: bool = False              # torch.compile the model (compile time is excluded from throughput)
    pipeline: str = "cpu"              # cpu: DataLoader + workers; gpu: uint8 data set on the device
    num_workers: int = 2               # DataLoader workers for the cpu pipeline
    augment: bool = True               # random crop + horizontal flip, per sample
    image_size: int | None = None      # resize inputs (e.g. 28 -> 224 to show ImageNet-sized cost)
    limit_train: int | None = None     # use only the first N training images (quick runs)
    limit_test: int | None = None      # use only the first N test images
    target_accuracy: float = 0.90      # for "time to accuracy"
    seed: int = 0
    device: str = "auto"               # auto | cuda | cpu
    data_path: str | None = None       # folder for the imagefolder data set
    profile: bool = True               # record a short torch.profiler window
    compress: list[dict] = field(default_factory=list)  # compression steps run after training
    repeats: int = 1                   # run the same config this many times, as one group with a spread
    gpus: int = 1                      # data-parallel ranks (torchrun + DDP): one per GPU; on the CPU, processes

    # -- validation ---------------------------------------------------------------------------
    def validate(self, device_info=None) -> "RunConfig":
        """Raise ConfigError naming the bad value and what is allowed.

        Every field is first checked against its annotation (`check_types`), then against its
        range and choices. With `device_info` (optlab.device.DeviceInfo) the config is also
        checked against the machine that will run it: fp16 on the CPU, bf16 on a GPU without
        bf16, and so on.
        """
        self.check_types()
        errors: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                errors.append(message)

        models = _registered("optlab.models", "MODELS", MODEL_NAMES)
        datasets = _registered("optlab.data", "DATASETS", DATASET_NAMES)
        need(self.model in models, f"unknown model {self.model!r}; choose one of: {', '.join(models)}")
        need(self.dataset in datasets, f"unknown dataset {self.dataset!r}; choose one of: {', '.join(datasets)}")
        need(self.precision in PRECISIONS,
             f"precision {self.precision!r} is not one of: {', '.join(PRECISIONS)}")
        need(self.device in DEVICES, f"device {self.device!r} is not one of: {', '.join(DEVICES)}")
        need(self.pipeline in PIPELINES, f"pipeline {self.pipeline!r} is not one of: {', '.join(PIPELINES)}")
        need(self.optimizer is None or self.optimizer in OPTIMIZERS,
             f"optimizer {self.optimizer!r} is not one of: {', '.join(OPTIMIZERS)}")
        need(self.batch_size == "auto" or (_is_int(self.batch_size) and self.batch_size >= 1),
             f"batch size must be a whole number >= 1 or 'auto', not {self.batch_size!r}")
        need(self.max_batch_size >= 1, "max batch size must be >= 1")
        need(1 <= self.epochs <= 1000, f"epochs must be 1..1000, not {self.epochs!r}")
        need(self.lr is None or 0 < self.lr < 100, f"learning rate must be > 0, not {self.lr!r}")
        need(self.weight_decay is None or self.weight_decay >= 0, "weight decay must be >= 0")
        need(0 <= self.warmup_fraction < 1, "warm-up fraction must be in [0, 1)")
        need(0 <= self.label_smoothing < 1, "label smoothing must be in [0, 1)")
        need(0 <= self.num_workers <= 64, "workers must be 0..64")
        need(self.image_size is None or 8 <= self.image_size <= 512,
             f"image size must be 8..512 pixels, not {self.image_size!r}")
        need(self.limit_train is None or self.limit_train >= 1, "train limit must be >= 1 image")
        need(self.limit_test is None or self.limit_test >= 1, "test limit must be >= 1 image")
        need(_is_int(self.repeats) and 1 <= self.repeats <= MAX_REPEATS,
             f"repeats must be a whole number 1..{MAX_REPEATS} (how many times the same config runs), "
             f"not {self.repeats!r}")
        need(_is_int(self.gpus) and 1 <= self.gpus <= MAX_GPUS,
             f"gpus must be a whole number 1..{MAX_GPUS} (data-parallel ranks, one per device), not {self.gpus!r}")
        if _is_int(self.gpus) and self.gpus > 1:
            need(self.batch_size != "auto", "batch size 'auto' searches on one device: with gpus > 1 give the "
                                            "batch size per device (each rank trains on that many images a step)")
        need(0 < self.target_accuracy <= 1, "target accuracy is a fraction in (0, 1], e.g. 0.9")
        need(0 <= self.seed <= SEED_MAX, f"seed must be 0..{SEED_MAX}, not {self.seed!r}")
        if self.model == "vit_tiny":
            size = self.image_size or 28
            need(size % 4 == 0, f"vit_tiny cuts images into 4x4 patches: image size must be a multiple of 4, not {size}")
        if not errors:
            errors.extend(self._data_errors())
        if not errors and self.compress:
            from optlab.compress import validate_steps   # loads torch: only for configs with steps
            errors.extend(validate_steps(self.compress, device_info))
        if device_info is not None and not errors:
            errors.extend(self._device_errors(device_info))
        if errors:
            raise ConfigError("; ".join(errors))
        return self

    def check_types(self) -> "RunConfig":
        """Raise ConfigError unless every field holds what its annotation allows: a bool for a
        bool (not "yes"), a whole number for an int (not a bool, not 2.0), a finite number for a
        float, text without control characters for a str, None only where the annotation says
        `| None`. Derived from the annotations, so a new field is covered by adding it."""
        errors = []
        hints = _hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                errors.append(f"{f.name} must be {_describe(hints[f.name])}, not {_show(value)}")
            elif isinstance(value, str) and (reason := text_problem(value, TEXT_MAX)):
                errors.append(f"{f.name} {reason}")
        if errors:
            raise ConfigError("; ".join(errors))
        return self

    def _data_errors(self) -> list[str]:
        """What can be checked about the data before the run is queued: the train limit and
        batch size against the data set's images, and an image folder's place."""
        errors = []
        total = TRAIN_IMAGES.get(self.dataset)
        if total is not None and self.limit_train is not None and self.limit_train > total:
            errors.append(f"train limit {self.limit_train} is larger than {self.dataset}'s {total} training images")
        if self.dataset == "synthetic":
            total = self.limit_train or 8192
        images = min(total, self.limit_train or total) if total is not None else None
        if images is not None and _is_int(self.batch_size) and self.batch_size > images:
            errors.append(f"batch size {self.batch_size} is larger than the {images} training images; "
                          "lower it or raise the train limit")
        if self.dataset == "imagefolder":
            from optlab.imageroots import folder_problem
            problem = folder_problem(self.data_path)
            if problem:
                errors.append(problem)
        return errors

    def _device_errors(self, info) -> list[str]:
        errors = []
        if self.gpus > 1:
            from optlab.ddp import rank_capacity   # the devices (or cores) this machine has for ranks
            room, what = rank_capacity(info)
            if self.gpus > room:
                errors.append(f"gpus {self.gpus} needs {self.gpus} {what}; this machine has {room}")
        if self.device == "cuda" and not info.is_gpu:
            errors.append("device 'cuda' was asked for but no GPU is visible here; use 'auto' or 'cpu'")
        if not info.is_gpu:
            if self.precision == "fp16":
                errors.append("fp16 needs a GPU (on the CPU use bf16 or fp32)")
            if self.precision == "tf32":
                errors.append("tf32 is a mode of NVIDIA GPU matrix units (Ampere or newer); on the CPU use fp32 or bf16")
        else:
            if self.precision == "bf16" and not info.supports_bf16:
                errors.append(f"{info.name} has no bf16 support (compute capability {info.capability}); use fp16")
            if self.precision == "tf32" and info.capability and info.capability < (8, 0):
                errors.append(f"tf32 needs compute capability 8.0+, {info.name} is {info.capability}")
        return errors

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A config from plain data (a JSON file, a stored run, a bundle), its types checked."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run config is a JSON object of settings, not {_show(data)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(known))}")
        return cls(**data).check_types()

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"not valid JSON ({getattr(e, 'msg', type(e).__name__)}"
                              + (f" at line {e.lineno}" if hasattr(e, "lineno") else "") + ")") from None
        return cls.from_dict(data)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def changes_from(self, other: "RunConfig") -> dict[str, Any]:
        """Settings whose value differs from `other` (used to label sweeps and advice)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: v for k, v in mine.items() if theirs.get(k) != v}


def _registered(module: str, registry: str, names: tuple[str, ...]) -> list[str]:
    """A registry's names: the registry itself once its module is loaded (it may hold entries
    added at run time), else the names above, without loading torch."""
    loaded = sys.modules.get(module)
    found = getattr(loaded, registry, None) if loaded is not None else None
    return found.names() if found is not None else list(names)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The evaluated field annotations of a config class (`int | None` as a union, not text)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _options(hint) -> tuple:
    """The alternatives of a union annotation (`int | str` -> (int, str)), else (hint,)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _matches(value, hint) -> bool:
    for option in _options(hint):
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and _is_int(value) and abs(value) <= INT_MAX:
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and (isinstance(value, float) or abs(value) <= INT_MAX):
            return True
        if option is str and isinstance(value, str):
            return True
        if origin in (list, dict) and option not in (bool, int, float, str) and isinstance(value, origin):
            args = typing.get_args(option)
            items = value.values() if origin is dict else value
            if not args or all(_matches(item, args[-1]) for item in items):
                return True
    return False


_NAMES = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text",
          type(None): "null", dict: "an object", list: "a list"}


def _describe(hint) -> str:
    words = []
    for option in _options(hint):
        origin = typing.get_origin(option)
        if origin is list:
            args = typing.get_args(option)
            words.append(f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list")
        else:
            words.append(_NAMES.get(origin or option, getattr(option, "__name__", str(option))))
    return " or ".join(words)


def _show(value) -> str:
    """A bad value as JSON writes it, shortened, with its kind: `"yes" (text)`, `5 (a whole number)`."""
    kind = {bool: "true/false", str: "text", int: "a whole number", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    text = text[:60] + "..." if len(text) > 60 else text
    return text if value is None else f"{text} ({kind})"


# Characters that would let text typed by a person change what a terminal or a log shows:
# control characters (escape sequences, new lines), bidirectional overrides, line separators.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def unsafe_char(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs") or ch in _BIDI


def text_problem(text: str, limit: int) -> str | None:
    """Why `text` typed by a person cannot be stored (too long, or holds control characters), or None."""
    if len(text) > limit:
        return f"is too long: {len(text)} characters, at most {limit}"
    bad = next((ch for ch in text if unsafe_char(ch)), None)
    if bad is not None:
        return f"holds the control character U+{ord(bad):04X}; use printable characters only"
    return None


def parse_batch_size(text: str) -> int | str:
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"batch size must be a whole number or 'auto', not {text!r}") from None


# -- presets: named RunConfigs ----------------------------------------------------------------
PRESETS: dict[str, RunConfig] = {
    "baseline": RunConfig(model="resnet18", precision="fp32", pipeline="cpu", epochs=2),
    "amp": RunConfig(model="resnet18", precision="bf16", channels_last=True, pipeline="cpu", epochs=2),
    "amp-gpu-data": RunConfig(model="resnet18", precision="bf16", channels_last=True, pipeline="gpu", epochs=2),
    "imagenet-size": RunConfig(model="resnet50", precision="bf16", channels_last=True, pipeline="gpu",
                               image_size=224, epochs=1, limit_train=8192),
    # Tuned for >= 94 % on Fashion-MNIST as fast as possible: speednet, data on the GPU,
    # bf16 + channels_last, large batch, label smoothing.
    "speedrun": RunConfig(model="speednet", precision="bf16", channels_last=True, pipeline="gpu",
                          batch_size=512, epochs=12, lr=0.2, optimizer="sgd", weight_decay=5e-4,
                          warmup_fraction=0.15, label_smoothing=0.2, target_accuracy=0.94),
    "cpu-quick": RunConfig(model="speednet", precision="fp32", device="cpu", epochs=1,
                           limit_train=4096, limit_test=2000, batch_size=64),   # 64 steps: enough to time and learn
}


def preset(name: str) -> RunConfig:
    try:
        return dataclasses.replace(PRESETS[name])
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
