import pytest

from conftest import tiny_config
from optlab.config import ConfigError, RunConfig
from optlab.device import DeviceInfo
from optlab.sweeps import MAX_RUNS, SWEEPABLE, expand, parse_values, submit_sweep

CPU = DeviceInfo(kind="cpu", name="test CPU")


def test_two_knobs_give_one_run_per_combination_first_knob_slowest():
    runs = expand(tiny_config(), {"precision": ["fp32", "bf16"], "batch_size": [32, 64, 128]})
    assert [(r.config.precision, r.config.batch_size) for r in runs] == [
        ("fp32", 32), ("fp32", 64), ("fp32", 128), ("bf16", 32), ("bf16", 64), ("bf16", 128)]
    assert runs[4].label == "bf16 · bs=64"
    assert runs[4].values == {"precision": "bf16", "batch_size": 64}


def test_expansion_keeps_every_other_setting_of_the_base():
    base = tiny_config(epochs=3, channels_last=True)
    for run in expand(base, {"precision": ["fp32", "bf16"]}):
        assert run.config.changes_from(base) in ({}, {"precision": "bf16"})
    assert base.precision == "fp32"            # the base is not modified


@pytest.mark.parametrize("knob, text, expected", [
    ("batch_size", "64, 128 ,auto", [64, 128, "auto"]),
    ("precision", "fp32,bf16,fp32", ["fp32", "bf16"]),
    ("channels_last", "true, off", [True, False]),
    ("lr", "0.1, 1e-2, default", [0.1, 0.01, None]),
    ("image_size", "28, 56, none", [28, 56, None]),
    ("epochs", "1,2", [1, 2]),
])
def test_values_are_typed_as_runconfig_declares_them(knob, text, expected):
    assert parse_values(knob, text) == expected


@pytest.mark.parametrize("knob, text, message", [
    ("epochs", "1, two", "whole number"),
    ("batch_size", "big", "whole number or 'auto'"),
    ("compile", "maybe", "true or false"),
    ("compress", "x", "cannot be swept"),
    ("precision", " , ", "at least one value"),
])
def test_unreadable_values_are_refused_with_what_is_allowed(knob, text, message):
    with pytest.raises(ConfigError, match=message):
        parse_values(knob, text)


def test_sweep_shape_limits():
    with pytest.raises(ConfigError, match="at most 2 knobs"):
        expand(RunConfig(), {"precision": ["fp32"], "batch_size": [64], "epochs": [1]})
    with pytest.raises(ConfigError, match="at least one knob"):
        expand(RunConfig(), {})
    with pytest.raises(ConfigError, match=f"at most {MAX_RUNS}"):
        expand(RunConfig(), {"seed": list(range(MAX_RUNS + 1))})
    with pytest.raises(ConfigError, match="cannot be swept"):
        expand(RunConfig(), {"colour": ["red"]})
    assert "compress" not in SWEEPABLE and "precision" in SWEEPABLE


def test_submit_queues_every_combination_under_one_sweep_id(store):
    runs = expand(tiny_config(), {"precision": ["fp32", "bf16"], "channels_last": [False, True]})
    sweep_id, ids = submit_sweep(store, runs, user="ada", device_for=lambda cfg: CPU)
    stored = store.list(sweep_id=sweep_id, newest_first=False)
    assert [r.id for r in stored] == ids and len(ids) == 4
    assert {r.user for r in stored} == {"ada"} and {r.status for r in stored} == {"queued"}
    assert [(r.config["precision"], r.config["channels_last"]) for r in stored] == [
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    assert stored[3].label == "bf16 · channels-last"


def test_a_sweep_with_one_bad_combination_queues_nothing(store):
    runs = expand(tiny_config(), {"precision": ["fp32", "fp16"]})
    with pytest.raises(ConfigError, match=r"fp16 \(one of the sweep's runs\): fp16 needs a GPU"):
        submit_sweep(store, runs, device_for=lambda cfg: CPU)
    assert store.list() == []
