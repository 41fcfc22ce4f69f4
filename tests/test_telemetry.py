"""Telemetry: NVML when the run has a GPU, else the process's CPU and memory, said plainly.

This machine has no NVIDIA driver: pynvml.nvmlInit() raises here, so these tests exercise the
real fallback; the NVML path runs on GPU machines.
"""
import time

import pynvml
import pytest
import torch

from conftest import tiny_config
from optlab.telemetry import TelemetrySampler, read_fields, training_energy


def busy(seconds):
    a = torch.randn(256, 256)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = (a @ a).tanh()


def test_without_nvml_it_records_process_cpu_and_memory_and_says_why(store):
    run_id = store.submit(tiny_config())
    sampler = TelemetrySampler(store, run_id, torch.device("cpu"), interval_s=0.05, flush_s=0.2).start()
    busy(0.6)
    assert store.metrics(run_id, "telemetry"), "rows are written while the run goes on, not only at the end"
    sampler.stop()
    rows = store.metrics(run_id, "telemetry")
    assert len(rows) >= 5 and {r["source"] for r in rows} == {"process"}
    assert max(r["cpu_pct"] for r in rows) > 20 and rows[-1]["rss_mb"] > 50
    assert all(r["t"] <= s["t"] for r, s in zip(rows, rows[1:]))
    messages = [e["message"] for e in store.events(run_id)]
    assert any(m.startswith("NVML unavailable: ") and m.endswith("; recording process CPU and memory")
               for m in messages), messages


def test_a_cuda_run_without_nvml_falls_back_and_names_the_nvml_error(store):
    with pytest.raises(pynvml.NVMLError) as missing:
        pynvml.nvmlInit()
    run_id = store.submit(tiny_config())
    sampler = TelemetrySampler(store, run_id, torch.device("cuda"))
    assert sampler.source == "process"
    events = store.events(run_id)
    assert events[0]["level"] == "warning" and str(missing.value) in events[0]["message"]
    sampler.stop()
    assert store.metrics(run_id, "telemetry")[0]["source"] == "process"


def test_one_field_that_fails_does_not_drop_the_others():
    unsupported = {}
    calls = []

    def not_supported():
        calls.append("power")
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    readers = {"gpu_util_pct": lambda: 97, "power_w": not_supported, "temperature_c": lambda: 61}
    for _ in range(3):
        row = read_fields(readers, unsupported, (pynvml.NVMLError,))
        assert row == {"gpu_util_pct": 97, "temperature_c": 61}
    assert list(unsupported) == ["power_w"] and "Not Supported" in unsupported["power_w"]
    assert calls == ["power"]   # not retried every sample


def test_training_energy_counts_only_the_training_phase():
    rows, energy_mj = [], 0.0
    for i in range(40):   # 0.25 s apart: 10 s of training at 200 W, then 5 s of evaluation at 50 W
        phase = "train" if i < 27 else "evaluate"
        rows.append({"t": i * 0.25, "phase": phase, "energy_mj": energy_mj})
        energy_mj += (200 if phase == "train" else 50) * 0.25 * 1000
    e = training_energy(rows, train_seconds=7.0, images=700)
    assert e["avg_train_power_w"] == pytest.approx(200)
    assert e["energy_j"] == pytest.approx(1400) and e["joules_per_image"] == pytest.approx(2.0)
    assert training_energy([{"t": 0, "phase": "train", "cpu_pct": 50}], 7.0, 700) is None


def test_clock_slowdowns_during_training_are_named_and_idle_is_not():
    from optlab.telemetry import clock_stability
    steady = [{"phase": "train", "sm_clock_mhz": 1980, "clock_event_reasons": 0x1} for _ in range(5)]
    assert clock_stability(steady)["disturbed"] is False
    capped = steady + [{"phase": "train", "sm_clock_mhz": 1500, "clock_event_reasons": 0x4 | 0x20}]
    c = clock_stability(capped)
    assert c["disturbed"] and c["clock_moved"]
    assert c["slowdown_reasons"] == ["software power cap", "software thermal slowdown"]
    assert clock_stability([{"phase": "evaluate", "sm_clock_mhz": 900}]) is None
