import dataclasses
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


# -- every field's type, whatever the source ------------------------------------------------------
@pytest.mark.parametrize("changes, field", [
    ({"channels_last": "yes"}, "channels_last"),
    ({"compile": 1}, "compile"),
    ({"data_path": 5}, "data_path"),
    ({"model": None}, "model"),
    ({"epochs": True}, "epochs"),
    ({"epochs": 2.0}, "epochs"),
    ({"epochs": None}, "epochs"),
    ({"seed": 1e23}, "seed"),
    ({"lr": "0.1"}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"label_smoothing": float("inf")}, "label_smoothing"),
    ({"batch_size": None}, "batch_size"),
    ({"batch_size": 64.0}, "batch_size"),
    ({"image_size": [32]}, "image_size"),
    ({"compress": "prune"}, "compress"),
    ({"compress": ["prune"]}, "compress"),
    ({"data_path": "/data/\x1b[2Jcats"}, "data_path"),
])
def test_a_value_of_the_wrong_type_is_refused_from_json_and_before_a_run(changes, field):
    data = {**RunConfig().to_dict(), **changes}
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        RunConfig.from_dict(data)
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        RunConfig(**changes).validate()


def test_null_is_taken_only_where_the_annotation_allows_it():
    RunConfig.from_dict({"lr": None, "image_size": None, "optimizer": None, "data_path": None}).validate()
    with pytest.raises(ConfigError, match="precision must be text, not null"):
        RunConfig.from_dict({"precision": None})


def test_a_field_added_to_the_dataclass_is_checked_by_the_same_rules():
    @dataclasses.dataclass
    class WithRepeats(RunConfig):
        repeats: int = 1

    WithRepeats(repeats=3).check_types()
    for bad in ("3", True, 3.0, None):
        with pytest.raises(ConfigError, match="repeats must be a whole number"):
            WithRepeats(repeats=bad).check_types()


@pytest.mark.parametrize("seed, ok", [(0, True), (2**32 - 1, True), (2**32, False), (-1, False), (10**30, False)])
def test_the_seed_is_a_32_bit_whole_number(seed, ok):
    cfg = RunConfig(seed=seed)
    if ok:
        cfg.validate()
    else:
        with pytest.raises(ConfigError, match="seed"):
            cfg.validate()


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "JSON object"),
    ('"speednet"', "JSON object"),
    ("null", "JSON object"),
    ('{"seed": ', "not valid JSON"),
    ("{'seed': 1}", "not valid JSON"),
])
def test_json_that_is_not_a_config_object_is_one_clear_error(text, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_json(text)


def test_the_names_checked_without_torch_are_the_registries_names():
    from optlab.config import DATASET_NAMES, MODEL_NAMES
    from optlab.data import DATASETS
    from optlab.models import MODELS
    assert list(MODEL_NAMES) == MODELS.names()
    assert list(DATASET_NAMES) == DATASETS.names()


# -- what the data allows, checked before the run is queued ---------------------------------------
def test_a_batch_larger_than_the_training_images_is_refused_at_submit_time():
    with pytest.raises(ConfigError, match="batch size 512 is larger than the 256 training images"):
        RunConfig(limit_train=256, batch_size=512).validate()
    with pytest.raises(ConfigError, match="larger than fashion-mnist's 60000"):
        RunConfig(limit_train=70000).validate()
    with pytest.raises(ConfigError, match="batch size 9000 is larger than the 8192"):
        RunConfig(dataset="synthetic", batch_size=9000).validate()
    RunConfig(limit_train=256, batch_size=256).validate()
    RunConfig(batch_size="auto", limit_train=16).validate()


def test_an_image_folder_without_a_path_or_outside_the_roots_is_refused_at_submit_time(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTLAB_IMAGE_ROOTS", str(tmp_path / "allowed"))
    (tmp_path / "allowed" / "cats").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match="needs a folder"):
        RunConfig(dataset="imagefolder").validate()
    with pytest.raises(ConfigError, match="outside the folders this server allows"):
        RunConfig(dataset="imagefolder", data_path=str(tmp_path / "elsewhere")).validate()
    with pytest.raises(ConfigError, match="outside the folders"):   # a way out through ".."
        RunConfig(dataset="imagefolder", data_path=str(tmp_path / "allowed" / ".." / "elsewhere")).validate()
    RunConfig(dataset="imagefolder", data_path=str(tmp_path / "allowed")).validate()
