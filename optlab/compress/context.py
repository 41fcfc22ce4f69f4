"""What a compression method may use: the run's data, settings and device, and the engine's own
input pipeline, so a fine-tune or a student sees the same batches a training run would."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from optlab.config import RunConfig
from optlab.data import DataSet
from optlab.pipeline import make_pipeline


@dataclass
class Context:
    ds: DataSet
    cfg: RunConfig
    device: torch.device          # where the run trained (and where fine-tunes run)
    device_info: object           # optlab.device.DeviceInfo of `device`
    batch_size: int               # the run's training batch size
    optimizer: str                # the run's optimizer, learning rate at batch 256 and weight decay
    lr: float
    weight_decay: float
    artifacts: Path               # this run's variants folder
    bench: dict = field(default_factory=dict)   # benchmark() settings
    log: Callable[[str], None] = lambda message: None

    def train_batches(self):
        """The run's own training pipeline (augmentation included) on the run's device."""
        return make_pipeline(self.ds, self.cfg, self.device, self.batch_size, train=True)

    def test_batches(self, device: torch.device):
        # Evaluation needs no augmentation or worker processes: the device-resident pipeline
        # normalises the test split on whichever device the variant runs on, CPU included.
        return make_pipeline(self.ds, self.cfg.replace(pipeline="gpu"), device,
                             min(512, 2 * self.batch_size), train=False)

    def example(self, device: torch.device) -> torch.Tensor:
        """The first test image as model input (normalised, resized, in the run's memory format)."""
        x, _ = next(iter(make_pipeline(self.ds, self.cfg.replace(pipeline="gpu"), device, 1, train=False)))
        return x

    def calibration_batches(self, device: torch.device, count: int) -> list[torch.Tensor]:
        """The first `count` training batches, not augmented (int8 calibration)."""
        cfg = self.cfg.replace(pipeline="gpu", augment=False)
        batches = []
        for x, _ in make_pipeline(self.ds, cfg, device, self.batch_size, train=True):
            batches.append(x)
            if len(batches) >= count:
                break
        return batches
