"""Augmentations, each in two forms: a torchvision transform applied per sample in DataLoader
workers (the CPU pipeline), and a batched tensor function that draws per-sample randomness on
the device (the GPU pipeline). Both do the same thing to each image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from optlab.registry import Registry


@dataclass(frozen=True)
class Augmentation:
    cpu: Callable[[int], v2.Transform]                              # image size -> per-sample transform
    batched: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
    description: str


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


def crop_padding(size: int) -> int:
    """Translation range in px: 2 for 28-32 px images, an eighth of the side for larger ones."""
    return max(2, size // 16)


def batched_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def batched_crop(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of each image from a zero-padded copy: a per-sample translation."""
    n, c, h, w = x.shape
    pad = crop_padding(h)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


AUGMENTATIONS.add("flip", Augmentation(
    cpu=lambda size: v2.RandomHorizontalFlip(),
    batched=batched_flip,
    description="mirror left-right with probability 1/2"))

AUGMENTATIONS.add("crop", Augmentation(
    cpu=lambda size: v2.RandomCrop(size, padding=crop_padding(size)),
    batched=batched_crop,
    description="random translation by up to 2 px (an eighth of larger images), zero-padded"))
