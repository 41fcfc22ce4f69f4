"""Every registered compression method validates its spec; device-bound methods refuse with their
reason at validation and at apply time; the CLI flags become the same stored steps."""
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from optlab.compress import METHODS, CompressionRefused, available_methods, validate_steps
from optlab.compress.checkpoint import save_weights
from optlab.compress.prune import mask_2to4
from optlab.config import ConfigError, RunConfig
from optlab.device import describe
from optlab.models import build_model

CPU_INFO = describe("cpu")
OPTIONAL = {"torchao_int8_weight_only": ("torchao",), "torchao_int8_dynamic": ("torchao",),
            "torchao_float8": ("torchao",), "export_tensorrt": ("torch_tensorrt",), "export_openvino": ("openvino",),
            "openvino_int8": ("openvino", "nncf")}


def cpu_context():
    return SimpleNamespace(device=torch.device("cpu"), device_info=CPU_INFO)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_accepts_its_defaults_and_refuses_unknown_settings(name):
    m = METHODS.get(name)
    for key, param in m.params.items():
        assert param.check(param.default), f"{name}.{key}: default {param.default!r} breaks its own rule"
    errors = m.validate({"method": name, "bogus": 1})
    assert any("unknown setting(s) bogus" in e for e in errors)
    missing = [library for library in OPTIONAL.get(name, ()) if importlib.util.find_spec(library) is None]
    if missing:
        assert any(f"needs {missing[0]}" in e and "not installed" in e for e in m.validate({"method": name}))
    else:
        assert m.validate({"method": name}) == []


@pytest.mark.parametrize("name,key", [(n, k) for n in METHODS.names() for k in METHODS.get(n).params])
def test_every_setting_refuses_a_bad_value_naming_what_is_allowed(name, key):
    m = METHODS.get(name)
    errors = m.validate({"method": name, key: "nonsense"})
    assert any(f"{key} must be {m.params[key].rule}" in e for e in errors)


@pytest.mark.parametrize("sparsity", [0, 1, 1.5, -0.1, True])
def test_sparsity_must_be_a_fraction_strictly_between_0_and_1(sparsity):
    errors = validate_steps([{"method": "prune_unstructured", "sparsity": sparsity}])
    assert errors and "sparsity must be a fraction in (0, 1)" in errors[0]


def test_unknown_methods_and_bad_steps_are_refused_by_the_run_config():
    (error,) = validate_steps([{"method": "magic"}])
    assert error.startswith("unknown compression method 'magic'; choose one of: ") and "prune_unstructured" in error
    with pytest.raises(ConfigError, match="ratio must be"):
        RunConfig(compress=[{"method": "prune_structured", "ratio": 1.0}]).validate()


def test_2to4_is_refused_on_the_cpu_at_validation_and_at_apply_time():
    assert validate_steps([{"method": "prune_2to4"}]) == []          # no device known yet
    (error,) = validate_steps([{"method": "prune_2to4"}], CPU_INFO)
    assert "compute capability 8.0+" in error and CPU_INFO.label in error
    with pytest.raises(CompressionRefused, match="compute capability 8.0"):
        METHODS.get("prune_2to4").apply(build_model("speednet", 1, 10, 16), {"dtype": "fp16"}, cpu_context())


def test_2to4_is_refused_on_a_gpu_older_than_ampere():
    from optlab.device import DeviceInfo
    turing = DeviceInfo(kind="cuda", name="Tesla T4", capability=(7, 5), supports_bf16=False, supports_fp16=True)
    (error,) = validate_steps([{"method": "prune_2to4"}], turing)
    assert "Tesla T4 is 7.5" in error


def test_2to4_mask_keeps_the_two_largest_of_every_four_weights():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 1.0]])
    assert mask_2to4(w).tolist() == [[False, True, True, False, True, False, False, True]]


def test_fp16_is_refused_on_the_cpu_and_bf16_halves_the_model():
    with pytest.raises(CompressionRefused, match="fp16 inference needs a GPU"):
        METHODS.get("half_precision").apply(build_model("speednet", 1, 10, 16), {"dtype": "fp16"}, cpu_context())
    model = build_model("speednet", 1, 10, 16).eval()
    v = METHODS.get("half_precision").apply(build_model("speednet", 1, 10, 16), {"dtype": "bf16"}, cpu_context())
    assert v.input_dtype == torch.bfloat16 and v.layers_converted.startswith("8 of 8")
    with torch.no_grad():
        assert v.model(torch.randn(2, 1, 16, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
    params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() * p.element_size() for p in v.model.parameters()) == 2 * params


def test_gpu_only_methods_say_why_they_are_not_offered_on_this_machine():
    reasons = available_methods(CPU_INFO)
    assert reasons["prune_unstructured"] is None and reasons["int8_static"] is None
    assert "8.0+" in reasons["prune_2to4"]
    if importlib.util.find_spec("torchao") is None:
        assert "pip install torchao" in reasons["torchao_int8_weight_only"]
    else:
        assert "NVIDIA GPUs" in reasons["torchao_int8_weight_only"]


def test_dynamic_int8_shrinks_a_linear_heavy_model_and_keeps_its_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("vit_tiny", 1, 10, 16).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)   # torchvision starts the head at zero
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        reference = model(x)
    before = save_weights(model, tmp_path / "fp32.pt").stat().st_size
    v = METHODS.get("int8_dynamic").apply(model, {}, cpu_context())
    after = save_weights(v.model, tmp_path / "int8.pt").stat().st_size
    converted = int(v.layers_converted.split(" of ")[0])
    assert converted >= 12                      # two MLP layers per block, six blocks (+ the head)
    assert after < 0.7 * before
    with torch.no_grad():
        out = v.model(x)
    assert torch.nn.functional.cosine_similarity(out, reference, dim=1).min() > 0.99


def test_run_flags_become_the_stored_compression_steps():
    from optlab.cli import build_parser, config_from_args
    args = build_parser().parse_args([
        "run", "--prune", "unstructured:0.5", "--finetune-epochs", "0", "--prune", "structured:0.3",
        "--quantize", "int8-static", "--quantize", "dynamic", "--quantize", "bf16", "--distill", "speednet:0.25",
        "--export", "onnx", "--bench-repeats", "7", "--batch-sizes", "1,32"])
    cfg = config_from_args(args).validate()
    assert cfg.compress == [
        {"method": "benchmark", "repeats": 7, "batch_sizes": [1, 32]},
        {"method": "prune_unstructured", "sparsity": 0.5, "finetune_epochs": 0},
        {"method": "prune_structured", "ratio": 0.3, "finetune_epochs": 0},
        {"method": "int8_static"}, {"method": "int8_dynamic"}, {"method": "half_precision", "dtype": "bf16"},
        {"method": "distill", "student": "speednet", "width": 0.25}, {"method": "export_onnx"}]
    assert RunConfig.from_json(cfg.to_json()).compress == cfg.compress


@pytest.mark.parametrize("flags,message", [(["--prune", "random:0.5"], "choose one of: unstructured, structured, 2:4"),
                                           (["--prune", "unstructured:2"], "not a fraction"),
                                           (["--quantize", "int4"], "choose one of: int8-static")])
def test_bad_flag_words_name_the_allowed_ones(flags, message, capsys):
    from optlab.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", *flags])
    assert message in capsys.readouterr().err
