"""optlab.inference on the CPU: what a benchmark returns, that its counts and memory are real, and
that compared models are timed together in interleaved rounds with a spread and a verdict."""
import math
import random

import pytest
import torch
from torch import nn

from optlab.compress.recipe import speedup
from optlab.stats import MIN_EFFECT
from optlab.inference import activation_peak_mb, batch_like, benchmark, count_macs, spread, tensor_bytes, time_models

CPU = torch.device("cpu")
QUICK = dict(repeats=5, warmup=1, throughput_batch=8, throughput_repeats=2, batch_sizes=[1, 4])


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()


def test_benchmark_reports_latency_throughput_sweep_memory_and_macs():
    model = small_cnn()
    r = benchmark(model, torch.randn(1, 1, 16, 16), CPU, **QUICK)
    assert r["latency_ms_p90"] >= r["latency_ms_p50"] > 0 and r["latency_repeats"] == 5
    assert r["throughput_batch"] == 8 and r["throughput_repeats"] == 2 and r["throughput_images_per_s"] > 0
    assert [row["batch"] for row in r["batch_sweep"]] == [1, 4, 8]
    assert r["timer"] == "perf_counter" and r["memory_kind"] == "cpu_profiler"
    weights_and_input = (tensor_bytes(model) + 8 * 16 * 16 * 4) / 2**20
    assert r["peak_memory_mb"] > weights_and_input
    assert r["macs"] == 8 * 9 * 16 * 16 + 8 * 16 * 16 * 10


def test_macs_are_counted_per_multiply_accumulate():
    assert count_macs(nn.Linear(100, 10, bias=False), torch.randn(1, 100)) == 1000
    assert count_macs(nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.randn(1, 3, 8, 8)) == 8 * 3 * 9 * 64


def test_macs_are_none_where_the_counter_sees_no_torch_operator():
    def outside_torch(x):
        return torch.from_numpy(x.numpy() @ x.numpy().T)
    assert count_macs(outside_torch, torch.randn(1, 4)) is None


def test_cpu_activation_memory_is_measured_and_grows_with_the_batch():
    model = small_cnn()
    with torch.no_grad():
        one, kind = activation_peak_mb(model, torch.randn(1, 1, 16, 16), CPU)
        many, _ = activation_peak_mb(model, torch.randn(64, 1, 16, 16), CPU)
    assert kind == "cpu_profiler"
    # 64 images of 8 x 16 x 16 float32 activations are at least 0.5 MB.
    assert many > one and many >= 64 * 8 * 16 * 16 * 4 / 2**20


def test_batches_keep_the_example_dtype_and_memory_format():
    example = torch.randn(1, 3, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x = batch_like(example, 5)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert batch_like(torch.randn(1, 3, 8, 8), 2).is_contiguous()


@pytest.mark.parametrize("bad", [dict(timer="wallclock"), dict(repeats=0), dict(throughput_batch=0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        benchmark(small_cnn(), torch.randn(1, 1, 16, 16), CPU, **{**QUICK, **bad})


# -- models that are compared are timed together ---------------------------------------------------------
class Logged(nn.Module):
    """A real (small) model that notes each call's batch size under its name."""

    def __init__(self, name, log):
        super().__init__()
        self.name, self.log, self.layer = name, log, nn.Linear(4, 2)

    def forward(self, x):
        self.log.append((self.name, len(x)))
        return self.layer(x)


def test_variants_are_timed_round_robin_after_every_model_is_warmed_up():
    log = []
    models = [Logged(name, log) for name in ("baseline", "v1", "v2")]
    records = time_models(models, torch.randn(1, 4), repeats=6, warmup=2, throughput_batch=8, throughput_repeats=2,
                          batch_sizes=[1], rounds=3)
    warm = 3 * 2 + 3 * 2                     # batch 1: 2 calls each; batch 8: min(warmup, 3) = 2 calls each
    assert all(n in (1, 8) for _, n in log[:warm])
    timed = log[warm:]
    # round 1: batch 1 (2 calls per model), then batch 8 (1 call per model); round 2 the same; round 3 batch 1 only
    one = [(m, 1) for m in ("baseline", "baseline", "v1", "v1", "v2", "v2")]
    eight = [(m, 8) for m in ("baseline", "v1", "v2")]
    assert timed == one + eight + one + eight + one
    assert [r["latency_repeats"] for r in records] == [6, 6, 6] and [r["throughput_repeats"] for r in records] == [2] * 3
    assert all(r["rounds"] == 3 and r["interleaved_with"] == 2 for r in records)


def test_each_time_comes_with_its_spread_and_the_interval_of_its_median():
    (r,) = time_models([small_cnn()], torch.randn(1, 1, 16, 16), **QUICK)
    assert r["latency_ms_p10"] <= r["latency_ms_p50"] <= r["latency_ms_p90"]
    low, high = r["latency_ms_ci95"]
    assert low <= r["latency_ms_p50"] <= high
    assert all(row["latency_ms_ci95"] for row in r["batch_sweep"])


def draws(median_ms, n, seed):
    """Per-call times of one model: a log-normal spread around `median_ms`, as CPU timings look."""
    rng = random.Random(seed)
    return [median_ms * math.exp(rng.gauss(0, 0.15)) for _ in range(n)]


def test_two_identical_variants_are_called_within_noise():
    a, b = spread(draws(1.5, 50, seed=1)), spread(draws(1.5, 50, seed=2))
    s = speedup(a["p50"], a["ci95"], b["p50"], b["ci95"])
    assert s["verdict"] == "within noise"
    assert s["ci95"][0] < 1 + MIN_EFFECT and s["ci95"][1] > 1 - MIN_EFFECT    # reaches the band of no effect


def test_a_true_two_fold_speed_up_is_called_faster_and_a_slow_down_slower():
    base, fast = spread(draws(2.0, 50, seed=3)), spread(draws(1.0, 50, seed=4))
    s = speedup(base["p50"], base["ci95"], fast["p50"], fast["ci95"])
    assert s["verdict"] == "faster" and s["ci95"][0] > 1.5
    assert speedup(fast["p50"], fast["ci95"], base["p50"], base["ci95"])["verdict"] == "slower"
