import json

import pytest

from optlab.config import PRESETS, ConfigError, RunConfig, parse_batch_size, preset
from optlab.device import DeviceInfo

CPU = DeviceInfo(kind="cpu", name="test CPU")
OLD_GPU = DeviceInfo(kind="cuda", name="Tesla T4", capability=(7, 5), supports_bf16=False,
                     supports_fp16=True, has_tensor_cores=True)
H100 = DeviceInfo(kind="cuda", name="NVIDIA H100", capability=(9, 0), supports_bf16=True,
                  supports_fp16=True, has_tensor_cores=True)


def test_config_round_trips_through_json():
    cfg = RunConfig(model="resnet18", precision="bf16", batch_size="auto", channels_last=True,
                    compile=True, pipeline="gpu", image_size=32, limit_train=100,
                    compress=[{"method": "x"}])
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["batch_size"] == "auto"


def test_defaults_and_every_preset_are_valid_on_a_gpu():
    RunConfig().validate(H100)
    for name in PRESETS:
        preset(name).validate(H100)


@pytest.mark.parametrize("changes, allowed", [
    ({"model": "alexnet"}, "speednet"),
    ({"dataset": "imagenet"}, "fashion-mnist"),
    ({"precision": "fp8"}, "bf16"),
    ({"device": "tpu"}, "cuda"),
    ({"pipeline": "disk"}, "gpu"),
    ({"optimizer": "lamb"}, "adamw"),
    ({"batch_size": 0}, "'auto'"),
    ({"batch_size": "big"}, "'auto'"),
    ({"epochs": 0}, "1..1000"),
    ({"image_size": 4}, "8..512"),
    ({"lr": -1.0}, "> 0"),
    ({"target_accuracy": 94}, "fraction"),
])
def test_bad_values_are_refused_with_what_is_allowed(changes, allowed):
    with pytest.raises(ConfigError) as e:
        RunConfig(**changes).validate()
    assert allowed in str(e.value)


def test_fp16_and_tf32_on_the_cpu_are_refused():
    for precision in ("fp16", "tf32"):
        with pytest.raises(ConfigError, match="CPU"):
            RunConfig(precision=precision, device="cpu").validate(CPU)
    RunConfig(precision="bf16", device="cpu").validate(CPU)


def test_bf16_on_a_gpu_without_bf16_is_refused():
    with pytest.raises(ConfigError, match="no bf16"):
        RunConfig(precision="bf16").validate(OLD_GPU)
    RunConfig(precision="fp16").validate(OLD_GPU)


def test_cuda_asked_for_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="no GPU"):
        RunConfig(device="cuda").validate(CPU)


def test_unknown_settings_in_json_are_refused():
    with pytest.raises(ConfigError, match="unknown setting"):
        RunConfig.from_dict({"model": "speednet", "turbo": True})


def test_batch_size_text_parses_numbers_and_auto():
    assert parse_batch_size("auto") == "auto"
    assert parse_batch_size("512") == 512
    with pytest.raises(ConfigError):
        parse_batch_size("lots")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="speedrun"):
        preset("fastest")


def test_compression_steps_are_checked_against_the_device():
    with pytest.raises(ConfigError, match="2:4"):
        RunConfig(device="cpu", compress=[{"method": "prune_2to4"}]).validate(CPU)
