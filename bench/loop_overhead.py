"""OptLab's training loop against a minimal plain PyTorch loop: same model, batch, precision, data.

Both loops train from the same device-resident Fashion-MNIST tensors (no augmentation, so the
work per step is identical) in one process, in interleaved rounds: round r runs OptLab then the
plain loop, round r+1 the other way round, so drift on the machine (clocks, other people's work)
hits both sides alike. Each side is timed the same way over a whole round (CUDA events on a GPU,
the host clock on the CPU, after a synchronize); the ratio OptLab / plain is taken per round,
and the median and 95 % interval of those ratios are printed. Target: >= 0.98.

    python bench/loop_overhead.py                                  # CPU-sized defaults
    python bench/loop_overhead.py --model resnet18 --batch-size 256 --precision bf16 --channels-last
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optlab import device as devices  # noqa: E402
from optlab.config import RunConfig  # noqa: E402
from optlab.data import load_dataset  # noqa: E402
from optlab.models import MODELS, build_model  # noqa: E402
from optlab.pipeline import make_pipeline, memory_format, normalisation  # noqa: E402
from optlab.stats import summarize_repeats  # noqa: E402
from optlab.train import setup_optimizer, setup_precision, train  # noqa: E402

TARGET = 0.98


class Timer:
    """Wall time of a block of device work: CUDA events on a GPU, the host clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1000


class PlainLoop:
    """The smallest honest loop: gather, normalise, forward, backward, step."""

    def __init__(self, model, ds, batch_size, precision, channels_last, device):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.model, self.batch_size, self.device = model, batch_size, device
        fused = device.type == "cuda" or None   # as OptLab's loop: fused optimizer kernels on a GPU
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=fused)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
        self.crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        self.fmt = memory_format(channels_last)
        self.x, self.y = ds.train_x.to(device), ds.train_y.to(device)
        self.mean, self.std = normalisation(ds.mean, ds.std, device)

    def steps(self, count: int) -> None:
        self.model.train()
        order = torch.rand(len(self.y), device=self.device).argsort()
        for i in range(count):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = ((self.x[idx].float() / 255 - self.mean) / self.std).contiguous(memory_format=self.fmt)
            with self.autocast():
                loss = self.crit(self.model(x), self.y[idx])
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)


class OptLabLoop:
    """optlab.train.train over exactly `steps` steps (one epoch of the first steps*batch images)."""

    def __init__(self, model, cfg, ds, batch_size, device, steps):
        spec = MODELS.get(cfg.model)
        self.model, self.device = model, device
        self.precision = setup_precision(cfg.precision, device)
        self.batches = make_pipeline(ds.limited(steps * batch_size, 256), cfg, device, batch_size, train=True)
        self.test = make_pipeline(ds.limited(None, 256), cfg, device, 256, train=False)
        self.opt, self.sched = setup_optimizer(model, "sgd", spec.lr, 5e-4, batch_size, 10 ** 9, 0.0)

    def steps(self, count: int) -> None:
        train(self.model, self.batches, [], epochs=1, label_smoothing=0.1, optimizer=self.opt,
              scheduler=self.sched, precision=self.precision, device=self.device, warmup_steps=0)


def measure(model_name="speednet", batch_size=128, precision="fp32", channels_last=False, rounds=5,
            steps=20, device="auto") -> dict:
    device = devices.resolve(device)
    info = devices.describe(device)
    cfg = RunConfig(model=model_name, precision=precision, channels_last=channels_last, pipeline="gpu",
                    augment=False, device=device.type, profile=False, batch_size=batch_size)
    cfg.validate(info)
    ds = load_dataset(cfg)
    if steps * batch_size > len(ds.train_y):
        raise SystemExit(f"{steps} steps of {batch_size} need {steps * batch_size} images; the data set has "
                         f"{len(ds.train_y)}")

    def fresh():
        torch.manual_seed(0)
        return build_model(model_name, ds.channels, ds.num_classes, ds.native_size).to(
            device, memory_format=memory_format(channels_last))

    loops = {"optlab": OptLabLoop(fresh(), cfg, ds, batch_size, device, steps),
             "plain": PlainLoop(fresh(), ds, batch_size, precision, channels_last, device)}
    for loop in loops.values():   # warm-up round: cuDNN autotuning, allocator growth
        loop.steps(steps)
    rates = {name: [] for name in loops}
    ratios = []
    for r in range(rounds):
        order = ("optlab", "plain") if r % 2 == 0 else ("plain", "optlab")
        for name in order:
            with Timer(device) as t:
                loops[name].steps(steps)
            rates[name].append(steps * batch_size / (t.ms / 1000))
        ratios.append(rates["optlab"][-1] / rates["plain"][-1])
    # Ratios multiply: their interval is taken on the log scale (the geometric mean's interval).
    logs = summarize_repeats([math.log(r) for r in ratios])
    ci = tuple(math.exp(v) for v in logs["ci95"]) if logs["ci95"] else None
    return {"device": info.label, "model": model_name, "batch_size": batch_size, "precision": precision,
            "channels_last": channels_last, "rounds": rounds, "steps_per_round": steps,
            "optlab_images_per_s_median": statistics.median(rates["optlab"]),
            "plain_images_per_s_median": statistics.median(rates["plain"]),
            "ratio_median": statistics.median(ratios), "ratio_geometric_mean": math.exp(logs["mean"]),
            "ratio_ci95": ci, "ratios": ratios, "target": TARGET,
            "meets_target": statistics.median(ratios) >= TARGET}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="speednet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="steps per side per round")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result = measure(a.model, a.batch_size, a.precision, a.channels_last, a.rounds, a.steps, a.device)
    if a.json:
        print(json.dumps(result))
        return 0
    lo, hi = result["ratio_ci95"] or (float("nan"), float("nan"))
    print(f"{result['device']}: {a.model}, batch {a.batch_size}, {a.precision}"
          f"{', channels_last' if a.channels_last else ''}; {a.rounds} interleaved rounds of {a.steps} steps")
    print(f"  OptLab {result['optlab_images_per_s_median']:,.0f} img/s, plain {result['plain_images_per_s_median']:,.0f}"
          f" img/s (medians)")
    print(f"  ratio OptLab/plain: median {result['ratio_median']:.3f}, geometric mean {result['ratio_geometric_mean']:.3f} "
          f"(95 % interval {lo:.3f} to {hi:.3f}); target >= {TARGET}: "
          f"{'met' if result['meets_target'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
