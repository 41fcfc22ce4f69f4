"""Model registry: torchvision's zoo adapted to any channel count, class count and image size,
plus `speednet`, a small fast CNN in the spirit of the fastest CIFAR-10 trainers.

Every model takes (in_channels, num_classes, image_size). Inputs of 64 px or less get a
small-image stem (3x3 stride-1 first convolution, no early down-sampling), as is usual for
28-32 px data sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.vision_transformer import VisionTransformer

from optlab.registry import Registry

SMALL_IMAGE = 64  # px; at or below this the stem keeps full resolution


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[int, int, int], nn.Module]
    optimizer: str        # the default optimizer for this family
    lr: float             # default learning rate at batch 256
    weight_decay: float
    description: str


MODELS: Registry[ModelSpec] = Registry("model")


def model(name: str, *, optimizer="sgd", lr=0.1, weight_decay=5e-4, description=""):
    def add(build):
        MODELS.add(name, ModelSpec(build, optimizer, lr, weight_decay, description))
        return build
    return add


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return MODELS.get(name).build(in_channels, num_classes, image_size)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    total = nonzero = 0
    for p in module.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


# -- torchvision zoo ------------------------------------------------------------------------------
def _resnet(factory):
    def build(in_channels, num_classes, image_size):
        net = factory(weights=None, num_classes=num_classes)
        if image_size <= SMALL_IMAGE:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        return net
    return build


def _replace_first_conv(net, in_channels, image_size):
    first = net.features[0][0]
    stride = 1 if image_size <= SMALL_IMAGE else first.stride
    net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, stride=stride,
                                   padding=first.padding, bias=first.bias is not None)
    return net


model("resnet18", description="ResNet-18 (11 M parameters), the classic conv net")(_resnet(tvm.resnet18))
model("resnet50", description="ResNet-50 (24 M parameters), bottleneck blocks; Tensor Core showcase")(
    _resnet(tvm.resnet50))


@model("mobilenet_v3_small", optimizer="adamw", lr=2e-3, weight_decay=0.05,
       description="MobileNetV3-Small (1.5 M): depthwise convolutions, small and latency-bound")
def _mobilenet(in_channels, num_classes, image_size):
    return _replace_first_conv(tvm.mobilenet_v3_small(weights=None, num_classes=num_classes),
                               in_channels, image_size)


@model("efficientnet_b0", optimizer="adamw", lr=2e-3, weight_decay=0.05,
       description="EfficientNet-B0 (4 M): depthwise + squeeze-excitation, memory-bound layers")
def _efficientnet(in_channels, num_classes, image_size):
    return _replace_first_conv(tvm.efficientnet_b0(weights=None, num_classes=num_classes),
                               in_channels, image_size)


@model("vit_tiny", optimizer="adamw", lr=1e-3, weight_decay=0.05,
       description="A compact Vision Transformer (torchvision's, 6 layers x 192 wide, 4 px patches on small images)")
def _vit_tiny(in_channels, num_classes, image_size):
    patch = 4 if image_size <= SMALL_IMAGE else 16
    net = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=6, num_heads=3,
                            hidden_dim=192, mlp_dim=768, num_classes=num_classes)
    net.conv_proj = nn.Conv2d(in_channels, 192, kernel_size=patch, stride=patch)
    return net


# -- speednet ---------------------------------------------------------------------------------
class ConvGroup(nn.Sequential):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU: one resolution stage."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2),
            nn.BatchNorm2d(c_out), nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.GELU(),
        )


class SpeedNet(nn.Module):
    """Three conv groups halve the resolution each; global max-pool; a scaled linear head."""

    def __init__(self, in_channels: int, num_classes: int, widths=(64, 128, 256)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(32), nn.GELU())
        stages, c = [], 32
        for w in widths:
            stages.append(ConvGroup(c, w))
            c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c, num_classes, bias=False)
        # A small logit scale keeps early training stable with a high learning rate.
        self.logit_scale = 1 / 9

    def forward(self, x):
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.head(x) * self.logit_scale


@model("speednet", optimizer="sgd", lr=0.4, weight_decay=5e-4,
       description="speednet (1 M): three conv groups, built for seconds-long training runs")
def _speednet(in_channels, num_classes, image_size):
    return SpeedNet(in_channels, num_classes)
