"""Fitting a run to this machine before it is queued: choices the device offers, checks made before
queueing, presets in their CPU version, a smaller run, and the duration estimate (a real
calibration on this CPU; a real finished run for the estimate from the store)."""
import pytest

from conftest import tiny_config
from optlab import estimate, fit
from optlab.config import PRESETS, RunConfig
from optlab.device import describe
from optlab.runner import execute

CPU = describe("cpu")


def test_the_cpu_is_not_offered_gpu_only_precisions_and_each_says_why():
    refused = fit.unavailable("precision", CPU)
    assert set(refused) == {"tf32", "fp16"} and "needs a GPU" in refused["fp16"]
    assert fit.offered("precision", CPU) == ["fp32", "bf16"]
    assert fit.offered("device", CPU) == ["auto", "cpu"]
    assert fit.unavailable_note(refused, CPU) == "tf32, fp16: need an NVIDIA GPU, and this server has none"


@pytest.mark.parametrize("changes, message", [
    (dict(limit_train=100, batch_size=128), "batch size 128 is larger than the 100 training images"),
    (dict(limit_train=70000), "Training images 70,000 is more than fashion-mnist's 60,000"),
    (dict(dataset="imagefolder"), "the imagefolder data set needs a folder"),
    (dict(dataset="imagefolder", data_path="/etc"), "/etc is outside the folders this server allows"),
])
def test_what_would_fail_in_the_queue_is_an_error_before_it(changes, message):
    [finding] = fit.preflight(RunConfig(**changes))
    assert finding.level == "error" and message in finding.message


def test_a_plan_names_the_sweep_combination_that_would_fail():
    from optlab.config import ConfigError
    base = RunConfig(limit_train=4096, batch_size=64)
    with pytest.raises(ConfigError, match=r"fp16 \(one of the sweep's runs\): fp16 needs a GPU"):
        fit.plan(base, {"precision": ["fp32", "fp16"]}, lambda c: CPU)
    with pytest.raises(ConfigError, match=r"bs=8192 \(one of the sweep's runs\): batch size 8192 is larger"):
        fit.plan(base, {"batch_size": [64, 8192]}, lambda c: CPU)
    assert [c.label for c in fit.plan(base, {"batch_size": [32, 64]}, lambda c: CPU)] == ["bs=32", "bs=64"]
    assert fit.plan(base, None, lambda c: CPU) == [base]


def test_an_image_folder_under_the_allowed_roots_is_counted_without_decoding(tmp_path, monkeypatch):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for n in range(5):
            (tmp_path / cls / f"{n}.png").write_bytes(b"not decoded to be counted")
    monkeypatch.setenv("OPTLAB_IMAGE_ROOTS", str(tmp_path))
    facts = fit.data_facts(RunConfig(dataset="imagefolder", data_path=str(tmp_path), image_size=32))
    assert (facts.available_train, facts.test_images, facts.num_classes, facts.size) == (8, 2, 2, 32)


def test_a_run_with_too_few_steps_is_warned_with_a_batch_that_gives_enough():
    [finding] = fit.preflight(RunConfig(limit_train=4096, epochs=1, batch_size=1024))
    assert finding.level == "warning" and finding.message.startswith("only 4 steps in all")
    assert f"A batch of 81 or less gives {fit.ENOUGH_STEPS}+ steps" in finding.message
    assert fit.preflight(RunConfig(limit_train=4096, epochs=1, batch_size=81)) == []


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_has_a_version_this_cpu_runs_without_a_warning(name):
    cfg, note = fit.preset_for(name, CPU)
    cfg.validate(CPU)
    assert fit.preflight(cfg) == []
    if name in fit.CPU_VERSIONS:
        original = PRESETS[name]
        assert note.startswith(f"CPU version of {name}")
        # the lesson is the same knobs; only the size of the run changes
        same = ("model", "precision", "channels_last", "pipeline", "compile", "image_size", "lr", "optimizer")
        assert all(getattr(cfg, k) == getattr(original, k) for k in same)


def test_a_smaller_version_fits_the_budget_at_the_measured_speed():
    cfg = RunConfig(model="resnet18", epochs=2, batch_size=128)
    facts = fit.data_facts(cfg)
    small = fit.shrink(cfg, seconds_per_image=0.02, overhead_s=30, budget_s=600, facts=facts)
    assert small.epochs == 1 and small.limit_train == 16384 and small.limit_test == 2000
    assert 0.02 * small.limit_train * small.epochs + 30 <= 600
    assert small.limit_train // small.batch_size >= fit.ENOUGH_STEPS
    assert fit.shrink(cfg, seconds_per_image=10.0, overhead_s=30, budget_s=600, facts=facts) is None


def test_the_estimate_times_a_few_real_steps_here_when_no_past_run_is_alike(store):
    cfg = tiny_config(limit_train=256, limit_test=128, batch_size=32, epochs=2)
    facts = fit.data_facts(cfg)
    est = estimate.estimate(store, cfg, CPU, facts, wait=None)
    assert est.source == "calibration" and est.steps == 2 * 256 // 32
    assert est.seconds > est.train_seconds > 0
    assert est.basis.startswith("from timing") and "images/s" in est.basis and "not included" in est.basis


def test_the_estimate_follows_a_finished_run_of_the_same_settings(store):
    cfg = tiny_config(limit_train=256, limit_test=128, batch_size=32, epochs=1)
    done = store.submit(cfg)
    execute(store, done)
    run = store.get(done)
    longer = cfg.replace(limit_train=512, epochs=2, num_workers=1)
    est = estimate.estimate(store, longer, CPU, fit.data_facts(longer))
    assert est.source == "past runs" and est.basis.startswith(f"from run #{done} on this device")
    assert "it differed in num_workers" in est.basis
    s = run.summary
    warm = s["warmup_steps"] * s["batch_size"]
    assert est.train_seconds == pytest.approx(s["warmup_seconds"] + (512 * 2 - warm) / s["train_images_per_s"])
    assert est.seconds == pytest.approx(est.train_seconds + (run.finished_at - run.started_at
                                                             - run.summary["train_seconds"]))
    # another batch size steps at another speed: that run is no guide
    assert estimate.closest_past_run(store, cfg.replace(batch_size=64), CPU, fit.data_facts(cfg)) is None
