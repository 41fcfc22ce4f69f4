"""Short training for compression: fine-tuning a pruned model and training a student, with the
engine's own pipeline, optimizer and precision set-up, and the distillation loss as a pure function."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from optlab.compress.context import Context
from optlab.train import setup_optimizer, setup_precision


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, *,
                      temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when
    T changes (Hinton et al., 2015). Without a teacher it is the plain cross-entropy.
    """
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits.detach() / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return alpha * temperature ** 2 * soft + (1 - alpha) * hard


def steps_for(ctx: Context, epochs: int, steps: int | None) -> int:
    """Training steps for `steps` if given, else `epochs` passes over the run's training batches."""
    return steps if steps is not None else epochs * len(ctx.train_batches())


def fit(model: nn.Module, ctx: Context, *, steps: int, lr_at_256: float, optimizer: str, weight_decay: float,
        teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9, seed: int | None = None) -> dict:
    """Train `model` for `steps` steps on the run's training pipeline (same batches for the same
    seed), with the distillation loss when a teacher is given. Returns what was done."""
    if steps <= 0:
        return {"steps": 0, "images": 0, "seconds": 0.0}
    torch.manual_seed(ctx.cfg.seed if seed is None else seed)
    batches = ctx.train_batches()
    opt, scheduler = setup_optimizer(model, optimizer, lr_at_256, weight_decay, ctx.batch_size, steps,
                                     ctx.cfg.warmup_fraction)
    precision = setup_precision(ctx.cfg.precision, ctx.device)
    if teacher is not None:
        teacher.eval()
    model.train()
    done = images = 0
    start = time.perf_counter()
    while done < steps:
        for x, y in batches:
            with precision.autocast():
                logits = model(x)
                with torch.no_grad():
                    target = teacher(x) if teacher is not None else None
            loss = distillation_loss(logits.float(), None if target is None else target.float(), y,
                                     temperature=temperature, alpha=alpha, label_smoothing=ctx.cfg.label_smoothing)
            precision.scaler.scale(loss).backward()
            precision.scaler.step(opt)
            precision.scaler.update()
            opt.zero_grad(set_to_none=True)
            scheduler.step()
            done += 1
            images += len(y)
            if done >= steps:
                break
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    model.eval()
    return {"steps": done, "images": images, "seconds": time.perf_counter() - start}
