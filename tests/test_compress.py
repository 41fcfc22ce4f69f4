"""Compression variants of ONE trained speednet (a Fashion-MNIST slice, CPU), made by the runner's
compression phase and shared by every test below. Fine-tune steps and benchmark repeats are
small through the steps' own settings; the defaults stay honest."""
import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from optlab.compress.checkpoint import fit_to_state_dict, load_run_model, load_weights
from optlab.compress.recipe import FIELDS
from optlab.data import load_dataset
from optlab.models import build_model
from optlab.pipeline import to_model_input
from optlab.runner import execute

BENCH = {"method": "benchmark", "repeats": 5, "warmup": 1, "throughput_batch": 16, "throughput_repeats": 2,
         "batch_sizes": [1, 16]}
STEPS = [
    BENCH,
    {"method": "prune_unstructured", "sparsity": 0.5, "finetune_steps": 1},
    {"method": "prune_structured", "ratio": 0.3, "finetune_steps": 2},
    {"method": "int8_static", "calibration_batches": 2},
    {"method": "int8_dynamic"},
    {"method": "distill", "student": "speednet", "width": 0.25, "steps": 3},
    {"method": "export_onnx"},
]
# Accuracy tolerances on the 200 test images: int8 static may move a few predictions (6 images),
# dynamic int8 touches only the classifier (4 images).
INT8_STATIC_TOLERANCE = 0.03
INT8_DYNAMIC_TOLERANCE = 0.02


@pytest.fixture(scope="session")
def compressed(tmp_path_factory):
    """A 16 px speednet trained one epoch on 1024 images (~70 % accuracy), with the CPU variants."""
    from optlab.store import Store
    store = Store(tmp_path_factory.mktemp("compress-home"))
    # The device-resident pipeline (on the CPU here) keeps the shared run quick.
    rid = store.submit(tiny_config(image_size=16, limit_train=1024, limit_test=200, batch_size=32,
                                    pipeline="gpu", compress=STEPS))
    execute(store, rid)
    run = store.get(rid)
    assert run.status == "done", run.error
    return store, run


def variants(run, method):
    return [v for v in run.summary["variants"] if v["method"] == method]


def variant(run, method):
    (found,) = variants(run, method)
    return found


def conv_linear_weights(state):
    return [t for k, t in state.items() if k.endswith("weight") and t.ndim >= 2]


def test_baseline_comes_first_and_every_variant_carries_every_figure(compressed):
    store, run = compressed
    records = run.summary["variants"]
    assert records[0]["name"] == "baseline" and records[0]["method"] == "baseline"
    assert records[0]["test_accuracy"] == pytest.approx(run.summary["test_accuracy"])
    for v in records:
        assert set(FIELDS) <= set(v), v["name"]
        assert v["device"] == "cpu" and v["device_label"].startswith("CPU"), v["device_label"]
        if v.get("error"):
            continue
        assert v["latency_ms_p90"] >= v["latency_ms_p50"] > 0
        assert v["throughput_images_per_s"] > 0 and v["throughput_batch"] == 16
        assert [row["batch"] for row in v["batch_sweep"]] == [1, 16]
        assert v["size_mb"] > 0 and v["params"] >= v["nonzero_params"] > 0
        assert v["macs"] > 0 and v["test_accuracy"] is not None
        assert v["latency_repeats"] == 5 and v["timer"] == "perf_counter"
        low, high = v["latency_ms_ci95"]
        assert low <= v["latency_ms_p50"] <= high and v["latency_ms_p10"] <= v["latency_ms_p50"]
    stored = store.metrics(run.id, "variant")
    assert [v["name"] for v in stored[:len(records)]] == [v["name"] for v in records]


def test_variants_are_timed_together_with_the_baseline_and_compared_with_an_interval(compressed):
    _, run = compressed
    measured = [v for v in run.summary["variants"] if not v.get("error")]
    for v in measured:
        assert v["rounds"] == 5 and v["interleaved_with"] == len(measured) - 1   # every CPU model in one set of rounds
    for v in measured[1:]:
        assert v["baseline"] == "baseline"
        assert v["speedup_verdict"] in ("faster", "slower", "within noise") and v["throughput_speedup_verdict"]
        low, high = v["speedup_ci95"]
        assert low <= v["speedup_vs_baseline"] <= high
        assert [r["batch"] for r in v["speedup_by_batch"]] == [1, 16]
        assert any("timed together in 5 interleaved rounds" in n for n in v["notes"])
        noisy = [r["batch"] for r in v["speedup_by_batch"] if r["verdict"] == "within noise"]
        assert any(n.startswith("within noise") for n in v["notes"]) == bool(noisy)


def test_unstructured_pruning_reaches_the_asked_sparsity_without_shrinking_anything(compressed):
    _, run = compressed
    base, v = variant(run, "baseline"), variant(run, "prune_unstructured")
    weights = conv_linear_weights(load_weights(v["artifact"]))
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros / total == pytest.approx(0.5, abs=1e-3)
    assert v["extra"]["weight_sparsity"] == pytest.approx(zeros / total)
    assert v["params"] == base["params"] and v["macs"] == base["macs"]
    assert v["nonzero_params"] < 0.6 * base["params"]
    assert v["size_mb"] == pytest.approx(base["size_mb"], rel=0.01)     # zeros are stored densely
    assert v["extra"]["finetune"]["steps"] == 1
    assert any("no speed-up is expected" in n for n in v["notes"])
    assert [r["batch"] for r in v["speedup_by_batch"]] == [1, 16]


def test_structured_pruning_removes_channels_and_the_model_still_classifies(compressed):
    _, run = compressed
    base, v = variant(run, "baseline"), variant(run, "prune_structured")
    assert v["params"] < 0.75 * base["params"]
    assert v["macs"] < 0.75 * base["macs"]
    assert 0 <= v["test_accuracy"] <= 1
    # The saved weights rebuild the narrower network from the registry (weights_only load).
    state = load_weights(v["artifact"])
    model = fit_to_state_dict(build_model("speednet", 1, 10, 16), state).eval()
    assert sum(p.numel() for p in model.parameters()) == v["params"]
    with torch.no_grad():
        assert model(torch.randn(4, 1, 16, 16)).shape == (4, 10)


def test_int8_static_is_smaller_runs_on_the_cpu_and_keeps_accuracy(compressed):
    _, run = compressed
    base, v = variant(run, "baseline"), variant(run, "int8_static")
    assert v["device"] == "cpu"
    assert v["layers_converted"].startswith("8 of 8 Conv2d/Linear")
    assert v["size_mb"] < base["size_mb"] / 3
    assert abs(v["test_accuracy"] - base["test_accuracy"]) <= INT8_STATIC_TOLERANCE
    assert v["latency_ms_p50"] > 0 and v["macs"] == base["macs"]   # counted on the float graph


def test_dynamic_int8_touches_only_the_classifier_of_a_cnn_and_says_so(compressed):
    _, run = compressed
    base, v = variant(run, "baseline"), variant(run, "int8_dynamic")
    assert v["layers_converted"].startswith("1 of 8 Conv2d/Linear")
    assert any("convolutions stay fp32" in n for n in v["notes"])
    assert v["size_mb"] < base["size_mb"]
    assert abs(v["test_accuracy"] - base["test_accuracy"]) <= INT8_DYNAMIC_TOLERANCE


def test_the_distilled_student_differs_from_its_control_only_by_the_teacher(compressed):
    _, run = compressed
    distilled, control = variants(run, "distill")
    assert distilled["extra"]["with_teacher"] and not control["extra"]["with_teacher"]
    assert distilled["extra"]["train"]["steps"] == control["extra"]["train"]["steps"] == 3
    assert distilled["params"] == control["params"] < variant(run, "baseline")["params"] / 10
    assert "accuracy_gain_vs_control" in distilled
    # Same seed, batches and steps: were the teacher's logits ignored, the weights would be the same.
    a, b = load_weights(distilled["artifact"]), load_weights(control["artifact"])
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) > 1e-3


def test_2to4_on_the_cpu_is_refused_with_its_reason_before_training(store):
    rid = store.submit(tiny_config(compress=[{"method": "prune_2to4"}]))
    execute(store, rid)
    run = store.get(rid)
    assert run.status == "failed"
    assert "compute capability 8.0" in run.error and "CPU" in run.error
    assert run.summary is None                      # refused before any training started


def test_onnx_runtime_variant_matches_pytorch(compressed):
    import onnxruntime as ort
    _, run = compressed
    base, v = variant(run, "baseline"), variant(run, "export_onnx")
    assert v["extra"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert abs(v["test_accuracy"] - base["test_accuracy"]) <= 0.005      # at most one image of 200
    assert "ONNX Runtime" in v["device_label"] and v["macs"] == base["macs"]
    # Independently: the file on disk against the run's saved weights.
    cfg = run.run_config
    ds = load_dataset(cfg)
    model = load_run_model(run, ds, torch.device("cpu"))
    x = to_model_input(ds.test_x[:32], ds.mean, ds.std, 16, channels_last=False)
    session = ort.InferenceSession(v["artifact"], providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), atol=1e-4)


def test_variants_figure_plots_measured_variants_per_device(compressed):
    from optlab.variant_charts import variants_figure
    _, run = compressed
    refused = dict(variant(run, "baseline"), name="prune_2to4", method="prune_2to4", refused=True,
                   error="needs compute capability 8.0+", test_accuracy=None, latency_ms_p50=None)
    fig = variants_figure(run.summary["variants"] + [refused])
    points = [t for t in fig.data if t.mode == "markers+text"]
    assert [t.name for t in points] == [variant(run, "baseline")["device_label"], variant(run, "export_onnx")["device_label"]]
    measured = [v for v in run.summary["variants"] if not v.get("error")]
    assert measured and all(v.get("latency_ms_p50") for v in measured)
    assert sum(len(t.x) for t in points) == len(measured)
    assert "not shown (no measurement): prune_2to4" in fig.layout.title.subtitle.text
    bars = points[0].error_x      # the 95 % interval of each median latency
    assert bars.visible and len(bars.array) == len(points[0].x) and min(bars.array) >= 0


def test_compress_command_adds_variants_to_a_finished_run(compressed, monkeypatch, capsys):
    from optlab.cli import main
    store, run = compressed
    monkeypatch.setenv("OPTLAB_HOME", str(store.home))
    before = len(store.get(run.id).summary["variants"])
    rc = main(["compress", str(run.id), "--quantize", "dynamic", "--bench-repeats", "3", "--bench-warmup", "1",
               "--throughput-batch", "8", "--batch-sizes", "1,8", "--device", "cpu", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in out["variants"]] == ["baseline", "int8 dynamic (Linear)"]
    assert all(set(FIELDS) <= set(v) for v in out["variants"])
    assert out["variants"][1]["throughput_batch"] == 8 and out["variants"][1]["latency_repeats"] == 3
    assert len(store.get(run.id).summary["variants"]) == before + 2


def test_compress_command_refuses_2to4_on_the_cpu_before_loading_anything(compressed, monkeypatch, capsys):
    from optlab.cli import main
    store, run = compressed
    monkeypatch.setenv("OPTLAB_HOME", str(store.home))
    assert main(["compress", str(run.id), "--prune", "2:4", "--device", "cpu"]) == 2
    assert "compute capability 8.0" in capsys.readouterr().err
