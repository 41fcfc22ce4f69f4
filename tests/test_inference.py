"""optlab.inference.benchmark on the CPU: what it returns, and that its counts and memory are real."""
import pytest
import torch
from torch import nn

from optlab.inference import activation_peak_mb, batch_like, benchmark, count_macs, tensor_bytes

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
