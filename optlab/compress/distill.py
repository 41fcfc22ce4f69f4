"""Distillation: a smaller student learns from the finished teacher's soft targets, and the same
student is trained without the teacher for the same steps and seed, so the teacher's benefit is
measured rather than assumed."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from optlab.compress.base import Param, Variant, method, number, one_of, optional, weighted_layers
from optlab.compress.context import Context
from optlab.compress.training import fit, steps_for
from optlab.models import MODELS, SpeedNet, _replace_first_conv
from optlab.pipeline import memory_format
from optlab.registry import Registry

# name -> build(in_channels, num_classes, image_size, width)
STUDENTS: Registry = Registry("student")


@STUDENTS.register("speednet")
def _speednet_student(in_channels, num_classes, image_size, width):
    return SpeedNet(in_channels, num_classes, widths=tuple(max(8, round(w * width)) for w in (64, 128, 256)))


@STUDENTS.register("mobilenet_v3_small")
def _mobilenet_student(in_channels, num_classes, image_size, width):
    net = tvm.mobilenet_v3_small(weights=None, num_classes=num_classes, width_mult=width)
    return _replace_first_conv(net, in_channels, image_size)


@method("distill", title="distillation",
        summary="train a smaller student on the teacher's soft targets (alpha*T^2*KL + (1-alpha)*CE), and the same "
                "student without the teacher for the same steps and seed",
        params={"student": Param("speednet", f"one of: {', '.join(STUDENTS.names())}", one_of(*STUDENTS.names())),
                "width": Param(0.5, "a width multiplier in (0, 1] (channels per layer)", number(0, 1, low_open=True)),
                "temperature": Param(2.0, "a temperature in [1, 20]", number(1, 20)),
                "alpha": Param(0.5, "a weight in (0, 1] for the soft-target term", number(0, 1, low_open=True)),
                "epochs": Param(None, "None (the run's epochs) or a whole number 1..1000",
                                optional(number(1, 1000, integer=True))),
                "steps": Param(None, "None or a whole number of steps >= 1 (overrides epochs)",
                               optional(number(1, 10**7, integer=True)))})
def distill(teacher: nn.Module, spec: dict, ctx: Context) -> list[Variant]:
    size = ctx.cfg.image_size or ctx.ds.native_size
    steps = steps_for(ctx, spec["epochs"] or ctx.cfg.epochs, spec["steps"])
    defaults = MODELS.get(spec["student"])   # both students use the registry's optimizer settings
    label = f"{spec['student']} x{spec['width']:g}"
    teacher.eval()
    with torch.no_grad():   # how sharp the soft targets are: near 1/classes they carry little
        x, _ = next(iter(ctx.test_batches(ctx.device)))
        sharpness = float((teacher(x).float() / spec["temperature"]).softmax(1).max(1).values.mean())
    variants = []
    for with_teacher in (True, False):
        torch.manual_seed(ctx.cfg.seed)      # both students start from the same weights
        student = STUDENTS.get(spec["student"])(ctx.ds.channels, ctx.ds.num_classes, size, spec["width"])
        student = student.to(ctx.device, memory_format=memory_format(ctx.cfg.channels_last))
        done = fit(student, ctx, steps=steps, lr_at_256=defaults.lr, optimizer=defaults.optimizer,
                   weight_decay=defaults.weight_decay, teacher=teacher if with_teacher else None,
                   temperature=spec["temperature"], alpha=spec["alpha"], seed=ctx.cfg.seed)
        name = (f"distilled {label} (T={spec['temperature']:g}, alpha={spec['alpha']:g})" if with_teacher
                else f"{label} without teacher")
        layers = f"new network: {len(weighted_layers(student))} Conv/Linear (teacher: {len(weighted_layers(teacher))})"
        notes = [f"{done['steps']} steps ({done['images']} images), seed {ctx.cfg.seed}, "
                 f"{defaults.optimizer} at lr {defaults.lr:g} per 256 images"]
        notes.append(f"soft targets from the finished teacher (mean top probability at T={spec['temperature']:g}: "
                     f"{sharpness:.2f}; 1/{ctx.ds.num_classes} would be uniform); compare with the control"
                     if with_teacher else "same student, steps and seed without the teacher: the control")
        variants.append(Variant(name=name, model=student.eval(), device=ctx.device, layers_converted=layers,
                                notes=notes, extra={"student": spec["student"], "width": spec["width"],
                                                    "with_teacher": with_teacher, "train": done,
                                                    "soft_target_top_probability": sharpness}))
    variants[0].extra["compare_to"] = variants[1].name
    return variants
