"""The two input pipelines. Comparing them is a lesson in itself:

* `cpu` — the classic DataLoader: worker processes decode and augment each sample with
  torchvision transforms, batches are pinned and copied to the device.
* `gpu` — the whole data set held on the device as uint8 (Fashion-MNIST is 47 MB), batches
  gathered, augmented per sample and normalised there, with no host work per step.

Both yield (images, labels) on the device, normalised, in the chosen memory format.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from optlab.augment import AUGMENTATIONS
from optlab.data import DataSet
from optlab.registry import Registry

PIPELINES: Registry = Registry("pipeline")


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def normalisation(mean, std, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, C, 1, 1) tensors on `device`: made once, so no step copies them there."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1),
            torch.tensor(std, device=device).view(1, -1, 1, 1))


def to_model_input(x: torch.Tensor, mean, std, size: int, channels_last: bool) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32 at `size` px, in the chosen memory format.
    `mean` and `std` are tuples, or tensors from `normalisation` (which never copy per batch)."""
    x = x.float().div_(255)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
    if not isinstance(mean, torch.Tensor):
        mean, std = normalisation(mean, std, x.device)
    return ((x - mean) / std).contiguous(memory_format=memory_format(channels_last))


class _TransformedImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


class CpuPipeline:
    """DataLoader with workers; per-sample CPU transforms; pinned, non-blocking copies."""

    def __init__(self, ds: DataSet, *, batch_size, device, size, augment, train, channels_last,
                 workers=2, seed=0):
        steps = [AUGMENTATIONS.get(a).cpu(ds.native_size) for a in ds.augmentations] if augment else []
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if size != ds.native_size:   # on floats, as the GPU pipeline resizes: the same images at any size
            steps.append(v2.Resize(size, antialias=True))
        steps.append(v2.Normalize(ds.mean, ds.std))
        images, labels = (ds.train_x, ds.train_y) if train else (ds.test_x, ds.test_y)
        self.device, self.format = device, memory_format(channels_last)
        self.loader = DataLoader(
            _TransformedImages(images, labels, v2.Compose(steps)), batch_size=batch_size, shuffle=train,
            drop_last=train, num_workers=workers, persistent_workers=workers > 0,
            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield (x.to(self.device, non_blocking=True, memory_format=self.format),
                   y.to(self.device, non_blocking=True))


class DevicePipeline:
    """The data set as uint8 on the device; batches gathered, augmented and normalised there."""

    def __init__(self, ds: DataSet, *, batch_size, device, size, augment, train, channels_last,
                 workers=0, seed=0):
        images, labels = (ds.train_x, ds.train_y) if train else (ds.test_x, ds.test_y)
        self.x, self.y = images.to(device), labels.to(device)
        self.batch_size, self.train, self.size, self.channels_last = batch_size, train, size, channels_last
        self.mean, self.std = normalisation(ds.mean, ds.std, self.x.device)
        self.augment = [AUGMENTATIONS.get(a).batched for a in ds.augmentations] if augment else []
        self.generator = torch.Generator(device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        # A shuffle drawn on the device (sorting random keys) never waits for the host.
        order = (torch.rand(n, device=self.x.device, generator=self.generator).argsort() if self.train
                 else torch.arange(n, device=self.x.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.x[idx]
            for aug in self.augment:
                x = aug(x, self.generator)
            yield to_model_input(x, self.mean, self.std, self.size, self.channels_last), self.y[idx]


PIPELINES.add("cpu", CpuPipeline)
PIPELINES.add("gpu", DevicePipeline)


def make_pipeline(ds: DataSet, cfg, device: torch.device, batch_size: int, *, train: bool):
    size = cfg.image_size or ds.native_size
    return PIPELINES.get(cfg.pipeline)(
        ds, batch_size=batch_size, device=device, size=size, augment=cfg.augment and train, train=train,
        channels_last=cfg.channels_last, workers=cfg.num_workers, seed=cfg.seed)
