"""The training loop: set-up, the loop, evaluation, in that order.

Precision, memory format and timing are in plain sight. Timed steps never wait for the device:
marks are recorded on the device timeline and read after the epoch; losses are read back in one
batch per epoch.
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from optlab.measure import DeviceClock, LatestLoss


class RunCancelled(Exception):
    """Raised inside the loop when a cancel was asked for."""


# -- set-up ------------------------------------------------------------------------------------
@dataclass
class Precision:
    name: str
    autocast: Callable[[], AbstractContextManager]
    scaler: torch.amp.GradScaler


def set_tf32(enabled: bool) -> None:
    """tf32 on or off for every CUDA backend at once: cuBLAS matmuls, cuDNN convolutions and RNNs.

    Through the flags that set all of them together: setting only the new per-operator
    `cudnn.conv.fp32_precision` leaves conv and RNN disagreeing, after which reading
    `torch.backends.cudnn.allow_tf32` (Inductor's convolution templates do) raises."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def setup_precision(name: str, device: torch.device) -> Precision:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name)
    if device.type == "cuda":
        # fp32 must mean IEEE fp32: cuDNN would otherwise use tf32 for convolutions by default.
        set_tf32(name == "tf32")
        torch.backends.cudnn.benchmark = True  # autotune once per shape; those steps are warm-up
    # float16 needs a GradScaler so small gradients do not underflow; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")
    return Precision(name, lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), scaler)


def setup_optimizer(model: nn.Module, name: str, lr_at_256: float, weight_decay: float,
                    batch_size: int, total_steps: int, warmup_fraction: float):
    """SGD (Nesterov) or AdamW; linear warm-up then linear decay to zero.

    Learning rates are given at batch 256: SGD scales them linearly with the batch, AdamW by
    the square root. Norms and biases get no weight decay.
    """
    scale = batch_size / 256
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Fused kernels on a GPU: one launch for all parameters, and GradScaler hands them its inf
    # check on the device instead of reading it back (a host wait every fp16 step otherwise).
    fused = all(p.is_cuda for p in model.parameters())
    if name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr_at_256 * scale, momentum=0.9, nesterov=True, fused=fused or None)
    else:
        opt = torch.optim.AdamW(groups, lr=lr_at_256 * scale ** 0.5, fused=fused or None)
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class NoProfiler:
    """Stands in for a profile window when profiling is off."""

    def step(self, step: int) -> None:
        pass

    def covers(self, step: int) -> bool:
        return False

    def close(self) -> None:
        pass


# -- records -----------------------------------------------------------------------------------
@dataclass
class StepTimes:
    """Per-step device-timeline figures of the steady-state steps (ms)."""
    step_ms: list[float] = field(default_factory=list)
    input_wait_ms: list[float] = field(default_factory=list)
    forward_backward_ms: list[float] = field(default_factory=list)
    optimizer_ms: list[float] = field(default_factory=list)
    step_images: list[int] = field(default_factory=list)
    images: int = 0


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    test_accuracy: float
    train_seconds: float           # this epoch's training wall time, evaluation excluded
    cumulative_train_seconds: float
    images_per_s: float | None     # steady-state steps of this epoch


@dataclass
class TrainResult:
    steady: StepTimes
    epochs: list[EpochRecord]
    warmup_steps: int
    warmup_seconds: float          # device time of the steps left out as warm-up / compilation
    excluded_profiled_steps: int
    total_steps: int
    train_seconds: float


def optimizer_step(model: nn.Module, criterion, optimizer, precision: Precision, x, y) -> torch.Tensor:
    """One training step outside the timed loop (batch-size trials, the Lab's calibration): forward
    under the run's autocast, scaled backward, optimizer step, gradients cleared. The loss."""
    with precision.autocast():
        loss = criterion(model(x), y)
    precision.scaler.scale(loss).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, batches, autocast) -> float:
    """Top-1 accuracy over every test batch; one read-back at the end."""
    model.eval()
    correct, total = None, 0
    for x, y in batches:
        with autocast():
            hits = (model(x).argmax(1) == y).sum()
        correct = hits if correct is None else correct + hits
        total += len(y)
    return float(correct) / total if total else float("nan")


# -- the loop ----------------------------------------------------------------------------------
def train(model: nn.Module, train_batches, test_batches, *, epochs: int, label_smoothing: float,
          optimizer, scheduler, precision: Precision, device: torch.device, warmup_steps: int,
          profiler=None, on_progress: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, report_every_s: float = 0.5,
          sync_debug: str | None = None) -> TrainResult:
    """Train and time. `sync_debug` ("warn" or "error", CUDA only) runs the steps under
    `torch.cuda.set_sync_debug_mode`, so any host wait inside a step is reported or raised:
    the proof that the timed steps never synchronise."""
    profiler = profiler or NoProfiler()
    sync_debug = sync_debug if device.type == "cuda" else None
    clock = DeviceClock(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    steps_per_epoch = len(train_batches)
    total_steps = epochs * steps_per_epoch
    steady, records = StepTimes(), []
    warmup_ms, profiled, step, cumulative = 0.0, 0, 0, 0.0
    live = LatestLoss(device)
    last_report = start_time = time.perf_counter()

    try:
        for epoch in range(1, epochs + 1):
            model.train()
            epoch_start = time.perf_counter()
            marks, losses, batch_sizes = [], [], []
            if sync_debug and step >= warmup_steps:
                torch.cuda.set_sync_debug_mode(sync_debug)
            previous = clock.mark()
            for x, y in train_batches:
                start = clock.mark()                      # previous -> start: waiting for input
                with precision.autocast():
                    loss = criterion(model(x), y)
                precision.scaler.scale(loss).backward()
                after_backward = clock.mark()
                precision.scaler.step(optimizer)
                precision.scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                end = clock.mark()
                marks.append((step, previous, start, after_backward, end))
                losses.append(loss.detach())
                batch_sizes.append(len(y))
                previous = end
                profiler.step(step)
                step += 1
                if sync_debug and step == warmup_steps:   # warm-up (cuDNN autotuning) is not checked
                    torch.cuda.set_sync_debug_mode(sync_debug)
                live.offer(loss)
                now = time.perf_counter()
                if now - last_report >= report_every_s:
                    last_report = now
                    if should_stop and should_stop():
                        raise RunCancelled()
                    if on_progress:
                        elapsed = now - start_time
                        on_progress({"phase": "train", "epoch": epoch, "epochs": epochs, "step": step,
                                     "steps_total": total_steps, "loss": live.value,
                                     "images_per_s": sum(batch_sizes) / max(now - epoch_start, 1e-9),
                                     "eta_s": elapsed / step * (total_steps - step)})
            if sync_debug:
                torch.cuda.set_sync_debug_mode(0)
            clock.synchronize()
            epoch_seconds = time.perf_counter() - epoch_start
            cumulative += epoch_seconds

            epoch_images, epoch_ms = 0, 0.0
            for (i, prev, start, mid, end), n in zip(marks, batch_sizes):
                step_ms = clock.elapsed_ms(prev, end)
                if i < warmup_steps:
                    warmup_ms += step_ms
                    continue
                if profiler.covers(i):
                    profiled += 1
                    continue
                steady.step_ms.append(step_ms)
                steady.input_wait_ms.append(clock.elapsed_ms(prev, start))
                steady.forward_backward_ms.append(clock.elapsed_ms(start, mid))
                steady.optimizer_ms.append(clock.elapsed_ms(mid, end))
                steady.step_images.append(n)
                steady.images += n
                epoch_images += n
                epoch_ms += step_ms
            train_loss = float(torch.stack(losses).float().mean()) if losses else float("nan")

            if on_progress:
                on_progress({"phase": "evaluate", "epoch": epoch, "epochs": epochs, "step": step,
                             "steps_total": total_steps, "loss": train_loss})
            accuracy = evaluate(model, test_batches, precision.autocast)
            records.append(EpochRecord(epoch, train_loss, accuracy, epoch_seconds, cumulative,
                                       epoch_images / (epoch_ms / 1000) if epoch_ms else None))
            if on_progress:
                on_progress({"phase": "train", "epoch": epoch, "epochs": epochs, "step": step,
                             "steps_total": total_steps, "loss": train_loss, "test_accuracy": accuracy,
                             "epoch_done": True})
    finally:
        if sync_debug:
            torch.cuda.set_sync_debug_mode(0)
        profiler.close()   # on every path: a profiler left running crashes the process at exit
    return TrainResult(steady, records, min(warmup_steps, total_steps), warmup_ms / 1000, profiled,
                       total_steps, cumulative)
