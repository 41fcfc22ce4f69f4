"""RunConfig: the one description of a run. It validates itself and round-trips JSON and the CLI."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DEVICES = ("auto", "cuda", "cpu")
PIPELINES = ("cpu", "gpu")
OPTIMIZERS = ("sgd", "adamw")
MAX_REPEATS = 20   # a room shares one GPU: one click must not hold it for a hundred runs


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

    # -- validation ---------------------------------------------------------------------------
    def validate(self, device_info=None) -> "RunConfig":
        """Raise ConfigError naming the bad value and what is allowed.

        With `device_info` (optlab.device.DeviceInfo) the config is also checked against the
        machine that will run it: fp16 on the CPU, bf16 on a GPU without bf16, and so on.
        """
        from optlab.data import DATASETS
        from optlab.models import MODELS

        errors: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                errors.append(message)

        need(self.model in MODELS, f"unknown model {self.model!r}; choose one of: {', '.join(MODELS.names())}")
        need(self.dataset in DATASETS,
             f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS.names())}")
        need(self.precision in PRECISIONS,
             f"precision {self.precision!r} is not one of: {', '.join(PRECISIONS)}")
        need(self.device in DEVICES, f"device {self.device!r} is not one of: {', '.join(DEVICES)}")
        need(self.pipeline in PIPELINES, f"pipeline {self.pipeline!r} is not one of: {', '.join(PIPELINES)}")
        need(self.optimizer is None or self.optimizer in OPTIMIZERS,
             f"optimizer {self.optimizer!r} is not one of: {', '.join(OPTIMIZERS)}")
        if self.batch_size != "auto":
            need(_is_int(self.batch_size) and self.batch_size >= 1,
                 f"batch size must be a whole number >= 1 or 'auto', not {self.batch_size!r}")
        need(_is_int(self.max_batch_size) and self.max_batch_size >= 1, "max batch size must be >= 1")
        need(_is_int(self.epochs) and 1 <= self.epochs <= 1000, f"epochs must be 1..1000, not {self.epochs!r}")
        need(self.lr is None or (isinstance(self.lr, (int, float)) and 0 < self.lr < 100),
             f"learning rate must be > 0, not {self.lr!r}")
        need(self.weight_decay is None or self.weight_decay >= 0, "weight decay must be >= 0")
        need(0 <= self.warmup_fraction < 1, "warm-up fraction must be in [0, 1)")
        need(0 <= self.label_smoothing < 1, "label smoothing must be in [0, 1)")
        need(_is_int(self.num_workers) and 0 <= self.num_workers <= 64, "workers must be 0..64")
        need(self.image_size is None or (_is_int(self.image_size) and 8 <= self.image_size <= 512),
             f"image size must be 8..512 pixels, not {self.image_size!r}")
        need(self.limit_train is None or (_is_int(self.limit_train) and self.limit_train >= 1),
             "train limit must be >= 1 image")
        need(self.limit_test is None or (_is_int(self.limit_test) and self.limit_test >= 1),
             "test limit must be >= 1 image")
        need(_is_int(self.repeats) and 1 <= self.repeats <= MAX_REPEATS,
             f"repeats must be a whole number 1..{MAX_REPEATS} (how many times the same config runs), "
             f"not {self.repeats!r}")
        need(0 < self.target_accuracy <= 1, "target accuracy is a fraction in (0, 1], e.g. 0.9")
        need(isinstance(self.compress, list) and all(isinstance(s, dict) for s in self.compress),
             "compress must be a list of steps such as {'method': 'prune_unstructured', 'sparsity': 0.5}")
        if self.model == "vit_tiny" and self.model in MODELS:
            size = self.image_size or 28
            need(size % 4 == 0, f"vit_tiny cuts images into 4x4 patches: image size must be a multiple of 4, not {size}")
        if not errors and self.compress:
            from optlab.compress import validate_steps
            errors.extend(validate_steps(self.compress, device_info))
        if device_info is not None and not errors:
            errors.extend(self._device_errors(device_info))
        if errors:
            raise ConfigError("; ".join(errors))
        return self

    def _device_errors(self, info) -> list[str]:
        errors = []
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def changes_from(self, other: "RunConfig") -> dict[str, Any]:
        """Settings whose value differs from `other` (used to label sweeps and advice)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: v for k, v in mine.items() if theirs.get(k) != v}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
