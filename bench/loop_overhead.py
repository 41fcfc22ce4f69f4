"""OptLab's training loop against a minimal plain PyTorch loop: same model, batch, precision, data.

Both loops train from the same device-resident Fashion-MNIST tensors (no augmentation, so the
work per step is identical); the plain loop is timed with two CUDA events around all steady
steps, OptLab's reports its own steady-state figure. Target on an H100: OptLab >= 0.98 x plain.

    python bench/loop_overhead.py --model resnet18 --batch-size 256 --precision bf16 --channels-last
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optlab import device as devices  # noqa: E402
from optlab.config import RunConfig  # noqa: E402
from optlab.data import load_dataset  # noqa: E402
from optlab.models import MODELS, build_model  # noqa: E402
from optlab.pipeline import make_pipeline, memory_format  # noqa: E402
from optlab.train import setup_optimizer, setup_precision, train  # noqa: E402


def plain_loop(model, x_all, y_all, mean, std, batch_size, steps, warmup, precision, channels_last, device):
    """The smallest honest loop: gather, normalise, forward, backward, step."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    fmt = memory_format(channels_last)
    mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=device).view(1, -1, 1, 1)
    n = len(y_all)
    order = torch.randperm(n, device=device)
    model.train()

    def step(i):
        idx = order[(i * batch_size) % (n - batch_size):][:batch_size]
        x = ((x_all[idx].float() / 255 - mean) / std).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = crit(model(x), y_all[idx])
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            step(i)
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end)
    else:
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        ms = (time.perf_counter() - t) * 1000
    return steps * batch_size / (ms / 1000)


def optlab_loop(model, cfg, ds, device, batch_size, epochs):
    spec = MODELS.get(cfg.model)
    precision = setup_precision(cfg.precision, device)
    batches = make_pipeline(ds, cfg, device, batch_size, train=True)
    test = make_pipeline(ds.limited(None, 256), cfg, device, 256, train=False)
    opt, sched = setup_optimizer(model, "sgd", spec.lr, 5e-4, batch_size, epochs * len(batches), 0.1)
    result = train(model, batches, test, epochs=epochs, label_smoothing=0.1, optimizer=opt, scheduler=sched,
                   precision=precision, device=device, warmup_steps=5)
    s = result.steady
    return s.images / (sum(s.step_ms) / 1000), len(s.step_ms)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--limit-train", type=int, default=60000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    device = devices.resolve(a.device)
    info = devices.describe(device)
    cfg = RunConfig(model=a.model, precision=a.precision, channels_last=a.channels_last, pipeline="gpu",
                    augment=False, limit_train=a.limit_train, device=device.type, profile=False)
    cfg.validate(info)
    ds = load_dataset(cfg)

    def fresh():
        torch.manual_seed(0)
        return build_model(a.model, ds.channels, ds.num_classes, ds.native_size).to(
            device, memory_format=memory_format(a.channels_last))

    ours, steps = optlab_loop(fresh(), cfg, ds, device, a.batch_size, a.epochs)
    x_all, y_all = ds.train_x.to(device), ds.train_y.to(device)
    plain = plain_loop(fresh(), x_all, y_all, ds.mean, ds.std, a.batch_size, steps, 5,
                       a.precision, a.channels_last, device)
    result = {"device": info.label, "model": a.model, "batch_size": a.batch_size, "precision": a.precision,
              "channels_last": a.channels_last, "steps": steps, "optlab_images_per_s": round(ours, 1),
              "plain_images_per_s": round(plain, 1), "ratio": round(ours / plain, 4), "target": 0.98}
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
