"""The advisor: rules speak only on their evidence, and "try it" closes the loop with a measured child run."""
import pytest

from conftest import tiny_config
from optlab import advisor
from optlab.advisor import advice_outcome, advise, try_advice
from optlab.config import ConfigError
from optlab.device import DeviceInfo
from optlab.runner import execute
from test_profiling import profiled  # noqa: F401  (the session's one profiled CPU run)

GPU_RULES = {"reduced_precision", "channels_last", "host_overhead", "low_gpu_utilisation", "memory_headroom"}


def test_a_cpu_run_is_told_its_figures_are_cpu_figures_and_gpu_rules_stay_silent(profiled):  # noqa: F811
    _, run = profiled
    items = advise(run.summary, run.config, run.device)
    rules = [a.rule for a in items]
    assert rules[0] == "cpu_figures"
    assert not GPU_RULES & set(rules)
    cpu = items[0]
    assert cpu.change == {} and not cpu.tryable and cpu.reference
    assert "CPU" in cpu.why and "reference, not a measurement of this run" in cpu.prediction_source
    assert advise(None, run.config) == []      # nothing measured, nothing said


# The GPU rules cannot see a GPU here; these are a GPU run's figures as rule inputs.
H100 = DeviceInfo(kind="cuda", name="NVIDIA H100 80GB HBM3", capability=(9, 0), total_memory_mb=81_559,
                  supports_bf16=True, supports_fp16=True, has_tensor_cores=True).to_dict()
V100 = DeviceInfo(kind="cuda", name="Tesla V100-SXM2-16GB", capability=(7, 0), total_memory_mb=16_160,
                  supports_bf16=False, supports_fp16=True, has_tensor_cores=True).to_dict()


def gpu_summary(busy=0.95, host_ms=4.0, step_ms=10.0, median_us=80.0, conv=0.6, peak_mb=60_000.0, wait=0.02):
    return {"device": "cuda", "device_label": "GPU: NVIDIA H100 80GB HBM3", "batch_size": 256,
            "input_wait_share": wait, "peak_memory_mb": peak_mb, "peak_reserved_mb": peak_mb,
            "memory_kind": "cuda_allocator",
            "profile": {"device": "cuda", "gpu_kernels_recorded": True,
                        "categories": [{"category": "convolution", "ms": 6.0, "share": conv},
                                       {"category": "elementwise", "ms": 4.0, "share": 1 - conv}],
                        "utilisation": {"basis": "gpu", "busy_share": busy},
                        "host": {"basis": "gpu", "step_ms": step_ms, "host_ms": host_ms, "device_ms": busy * step_ms},
                        "kernel_us_median": median_us, "kernels_per_step": 400, "tensor_cores": {"share": 0.0}}}


def rules_of(summary, device=H100, **config):
    cfg = tiny_config(device="cuda", model="resnet50", batch_size=256, **config)
    return {a.rule: a for a in advise(summary, cfg, device)}


def test_fp32_on_a_tensor_core_gpu_suggests_bf16_with_the_labelled_reference():
    a = rules_of(gpu_summary(), precision="fp32")["reduced_precision"]
    assert a.change == {"precision": "bf16"} and a.expected_factor == 2.2 and a.reference
    assert "H100" in a.prediction_source and "not a measurement of this run" in a.prediction_source
    assert a.evidence["tensor_core_share"] == 0.0
    assert rules_of(gpu_summary(), device=V100, precision="fp32")["reduced_precision"].change == {"precision": "fp16"}
    assert "reduced_precision" not in rules_of(gpu_summary(), precision="bf16")


def test_amp_on_a_conv_net_without_channels_last_suggests_channels_last():
    a = rules_of(gpu_summary(conv=0.6), precision="bf16")["channels_last"]
    assert a.change == {"channels_last": True} and a.expected_factor == pytest.approx(4.0 / 2.2)
    assert "channels_last" not in rules_of(gpu_summary(conv=0.6), precision="bf16", channels_last=True)
    assert "channels_last" not in rules_of(gpu_summary(conv=0.05), precision="bf16")   # hardly any convolution
    assert "channels_last" not in rules_of(gpu_summary(conv=0.6), precision="fp32")


def test_host_bound_small_kernels_suggest_compile_and_an_idle_gpu_a_larger_batch():
    rules = rules_of(gpu_summary(busy=0.4, host_ms=9.5, median_us=8.0, peak_mb=30_000), precision="bf16",
                     channels_last=True)
    assert rules["host_overhead"].change == {"compile": True} and rules["host_overhead"].expected_factor is None
    low = rules["low_gpu_utilisation"]
    assert low.change == {"batch_size": 512} and low.expected_factor == pytest.approx(2.0)
    assert low.evidence["gpu_busy_share"] == 0.4
    full = rules_of(gpu_summary(busy=0.4, peak_mb=60_000), precision="bf16", channels_last=True)
    assert "low_gpu_utilisation" not in full                        # twice the batch would not fit
    busy = rules_of(gpu_summary(busy=0.95), precision="bf16", channels_last=True)
    assert not {"host_overhead", "low_gpu_utilisation"} & set(busy)
    assert "host_overhead" not in rules_of(gpu_summary(busy=0.4, host_ms=9.5, median_us=8.0),
                                           precision="bf16", compile=True)


def test_memory_headroom_suggests_auto_only_when_memory_is_left():
    roomy = rules_of(gpu_summary(peak_mb=8_000), precision="bf16", channels_last=True)["memory_headroom"]
    assert roomy.change == {"batch_size": "auto"} and roomy.evidence["device_memory_mb"] == H100["total_memory_mb"]
    assert "memory_headroom" not in rules_of(gpu_summary(peak_mb=60_000), precision="bf16", channels_last=True)


def test_input_wait_suggests_the_device_pipeline_with_a_bound_from_this_run():
    a = rules_of(gpu_summary(wait=0.5), precision="bf16", channels_last=True)["input_bound"]
    assert a.change == {"pipeline": "gpu"} and a.expected_factor == pytest.approx(2.0) and not a.reference
    assert "computed from this run" in a.prediction_source
    assert "input_bound" not in rules_of(gpu_summary(wait=0.02), precision="bf16")


def test_try_it_queues_a_child_and_compares_prediction_with_measurement(store, monkeypatch):
    parent_id = store.submit(tiny_config(limit_train=128, batch_size=16, limit_test=64))
    execute(store, parent_id)
    parent = store.get(parent_id)
    assert parent.status == "done", parent.error
    # Lowered so the rule speaks on this short CPU run's real (small) input wait.
    monkeypatch.setattr(advisor, "INPUT_WAIT_SHARE", 0.0)
    advice = {a.rule: a for a in advise(parent.summary, parent.config, parent.device)}["input_bound"]
    assert advice.evidence["input_wait_share"] == parent.summary["input_wait_share"]

    child_id = try_advice(store, parent, advice, user="ada")
    child = store.get(child_id)
    assert (child.status, child.parent_id, child.user) == ("queued", parent_id, "ada")
    assert child.run_config.changes_from(parent.run_config) == {"pipeline": "gpu"}
    assert child.label == f"#{parent_id} + pipeline=gpu (data in memory)"     # what gpu means on a CPU run
    assert store.metrics(child_id, "advice")[0]["expected_factor"] == pytest.approx(advice.expected_factor)
    assert advice_outcome(store, child_id) is None                  # not run yet

    execute(store, child_id)
    outcome = advice_outcome(store, child_id)
    child = store.get(child_id)
    assert outcome["predicted_factor"] == pytest.approx(1 / (1 - parent.summary["input_wait_share"]))
    assert outcome["measured_factor"] == pytest.approx(
        child.summary["train_images_per_s"] / parent.summary["train_images_per_s"])
    assert outcome["same_device"] and outcome["device_label"].startswith("CPU")
    assert advice_outcome(store, parent_id) is None                 # the parent tried nothing


def test_advice_without_a_change_cannot_be_tried(profiled):  # noqa: F811
    store, run = profiled
    cpu = advise(run.summary, run.config, run.device)[0]
    with pytest.raises(ConfigError, match="no setting to try"):
        try_advice(store, run, cpu)
