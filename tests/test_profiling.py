"""The profile summary: one real profiled CPU run (shared by every profiling test in the session),
its trace file read back, and the GPU path on a trace written in torch.profiler's Chrome-trace format."""
import gzip
import json

import pytest

from conftest import built_once, tiny_config
from optlab import profiling
from optlab.profiling import classify, is_tensor_core_kernel, summarize_trace_file

def make_profiled_run(tmp_path_factory):
    """One real profiled run per test session (see conftest.built_once): 16 steps of speednet on
    1024 Fashion-MNIST images (warm-up 4, profiled window 4..9). Also keeps the profiler's own
    key_averages() for checks, in key_averages.json beside the store."""
    from optlab.store import Store

    def build(home):
        from optlab.runner import execute
        store = Store(home)
        run_id = store.submit(tiny_config(profile=True, limit_train=1024, batch_size=64))
        original, averages = profiling.summarize_profile, {}

        def keep_averages(prof, device):
            if not averages:   # the training window's (the inference window comes after it)
                averages.update({e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()})
            return original(prof, device)
        profiling.summarize_profile = keep_averages
        try:
            execute(store, run_id)
        finally:
            profiling.summarize_profile = original
        (home / "key_averages.json").write_text(json.dumps(averages))

    store = Store(built_once(tmp_path_factory, "profiled", build))
    [run] = store.list()
    return store, run


@pytest.fixture(scope="session")
def profiled(tmp_path_factory):
    return make_profiled_run(tmp_path_factory)


def _train_trace(store, run):
    files = profiling.trace_files(profiling.run_trace_dir(store, run), "train")
    assert len(files) == 1, files
    return files[0]


# -- the real CPU run --------------------------------------------------------------------------------
def test_a_cpu_profile_is_labelled_as_cpu_figures(profiled):
    store, run = profiled
    assert run.status == "done", run.error
    assert [e for e in store.events(run.id) if e["level"] == "error"] == []
    p = run.summary["profile"]
    assert p["device"] == "cpu" and p["gpu_kernels_recorded"] is False
    assert "CPU" in p["reason"] and "not a GPU figure" in p["reason"]
    assert p["utilisation"]["basis"] == "cpu" and p["category_basis"] == "cpu" and p["host"]["basis"] == "cpu"
    assert p["top_kind"].startswith("CPU operators")
    assert p["tensor_cores"]["share"] is None and "no GPU kernels" in p["tensor_cores"]["reason"]
    assert p["steps"] == 3 and len(p["step_ms"]) == 3     # the active part of the window


def test_cpu_time_is_split_into_categories_that_add_up(profiled):
    _, run = profiled
    p = run.summary["profile"]
    cats = {r["category"]: r for r in p["categories"]}
    assert p["categories"][0]["category"] == "convolution"     # speednet is a conv net
    assert {"optimizer", "normalisation", "elementwise"} <= set(cats)
    assert sum(r["share"] for r in p["categories"]) == pytest.approx(1.0)
    # self times of everything inside the steps add up to the time inside top-level operators
    assert sum(r["ms"] for r in p["categories"]) == pytest.approx(p["utilisation"]["busy_ms"], rel=0.02)
    u = p["utilisation"]
    assert u["busy_ms"] + u["idle_ms"] == pytest.approx(p["window_ms"])
    assert 0 < u["busy_share"] <= 1
    assert p["window_ms"] == pytest.approx(sum(p["step_ms"]), rel=0.01)


def test_top_operator_self_times_match_the_profilers_key_averages(profiled):
    store, run = profiled
    averages = json.loads((store.home / "key_averages.json").read_text())
    for row in run.summary["profile"]["top"][:8]:
        self_us, count = averages[row["name"]]
        assert row["calls"] == count, row["name"]
        assert row["ms"] == pytest.approx(self_us / 1000, rel=1e-6), row["name"]


def test_memory_is_split_by_phase(profiled):
    _, run = profiled
    m = run.summary["profile"]["memory"]
    phases = {r["phase"]: r for r in m["phases"]}
    assert m["device"] == "cpu" and m["records"] > 0
    assert {"forward", "backward", "optimizer"} <= set(phases)
    assert phases["forward"]["allocated_mb_per_step"] > 1       # activations of 64 images
    assert phases["backward"]["freed_mb_per_step"] > 1          # ...released by the backward pass


def test_the_saved_trace_file_gives_the_same_summary(profiled):
    store, run = profiled
    live, saved = run.summary["profile"], summarize_trace_file(_train_trace(store, run))
    assert saved["source"] == "trace file" and live["source"] == "profiler"
    assert (saved["device"], saved["gpu_kernels_recorded"], saved["steps"]) == ("cpu", False, live["steps"])
    assert saved["step_ms"] == pytest.approx(live["step_ms"], rel=1e-6)
    assert saved["utilisation"]["busy_ms"] == pytest.approx(live["utilisation"]["busy_ms"], rel=1e-4)
    assert [r["category"] for r in saved["categories"]] == [r["category"] for r in live["categories"]]
    for a, b in zip(saved["categories"], live["categories"]):
        assert a["ms"] == pytest.approx(b["ms"], rel=1e-4, abs=1e-3)
    assert [r["name"] for r in saved["top"]] == [r["name"] for r in live["top"]]
    for a, b in zip(saved["memory"]["phases"], live["memory"]["phases"]):
        assert a["phase"] == b["phase"]
        assert a["peak_above_start_mb"] == pytest.approx(b["peak_above_start_mb"])


def test_inference_window_is_profiled_beside_the_training_trace(profiled):
    store, run = profiled
    inf = run.summary["profile_inference"]
    assert inf["worker"] == "inference" and inf["device"] == "cpu" and inf["steps"] == 3
    assert inf["batch_size"] == 64
    files = profiling.trace_files(profiling.run_trace_dir(store, run), "inference")
    assert [str(f) for f in files] == [inf["trace_file"]]
    assert {r["phase"] for r in inf["memory"]["phases"]} == {"forward"}   # no backward, no optimizer
    assert "optimizer" not in {r["category"] for r in inf["categories"]}
    assert inf["categories"][0]["category"] == "convolution"


def test_trace_command_lists_the_files_and_the_tensorboard_command(profiled, monkeypatch, capsys):
    from optlab.cli import main
    store, run = profiled
    monkeypatch.setenv("OPTLAB_HOME", str(store.home))
    assert main(["trace", str(run.id)]) == 0
    out = capsys.readouterr().out
    assert str(_train_trace(store, run)) in out and "inference." in out
    assert f"tensorboard --logdir {store.home / 'runs'}" in out and f"{run.id}/tb/run{run.id}" in out


def test_show_json_carries_the_profile_and_the_advice(profiled, monkeypatch, capsys):
    from optlab.cli import main
    store, run = profiled
    monkeypatch.setenv("OPTLAB_HOME", str(store.home))
    assert main(["show", str(run.id), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["profile"]["steps"] == 3
    assert [a["rule"] for a in out["advice"]][0] == "cpu_figures"


def test_trace_command_says_why_there_is_no_trace(store, capsys):
    from optlab.cli import main
    run_id = store.submit(tiny_config(profile=False))
    store.finish(run_id, "done", summary={"device": "cpu"})
    assert main(["trace", str(run_id)]) == 1
    assert "profiling was off" in capsys.readouterr().out


# -- the GPU path, on a trace in torch.profiler's format ------------------------------------------------
def _gpu_trace(path):
    """Two profiled steps of an H100 bf16 run, as torch.profiler writes them (names and args as in
    real traces; times chosen so the expected figures are easy to check by hand)."""
    def op(name, ts, dur, eid, cat="cpu_op", **args):
        return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": 7, "ts": ts, "dur": dur,
                "args": {"External id": eid, **args}}

    def kernel(name, ts, dur, eid, cat="kernel"):
        return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": 7, "ts": ts, "dur": dur,
                "args": {"External id": eid, "device": 0, "stream": 7, "correlation": 1000 + eid}}

    gemm = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas"
    add = "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)"
    events = [{"ph": "M", "name": "process_name", "pid": 7, "tid": 0, "args": {"name": "python"}}]
    for step, t0 in ((1, 0.0), (2, 1000.0)):
        events += [
            op(f"ProfilerStep#{step}", t0, 1000, step * 100, cat="user_annotation"),
            op("aten::mm", t0 + 10, 100, step * 100 + 1, **{"Input type": ["c10::BFloat16", "c10::BFloat16"]}),
            op("cudaLaunchKernel", t0 + 20, 10, step * 100 + 1, cat="cuda_runtime"),
            op("aten::add", t0 + 120, 50, step * 100 + 2),
            op("cudaLaunchKernel", t0 + 130, 10, step * 100 + 2, cat="cuda_runtime"),
            op("Optimizer.step#SGD.step", t0 + 200, 100, step * 100 + 3, cat="user_annotation"),
            op("aten::_foreach_add_", t0 + 210, 50, step * 100 + 4),
            op("cudaLaunchKernel", t0 + 220, 10, step * 100 + 4, cat="cuda_runtime"),
            op("cudaStreamSynchronize", t0 + 600, 300, 0, cat="cuda_runtime"),
            kernel(gemm, t0 + 100, 400, step * 100 + 1),              # 400 µs on Tensor Cores
            kernel(add, t0 + 500, 100, step * 100 + 2),               # 100 µs elementwise
            kernel("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>", t0 + 600, 100,
                   step * 100 + 4),                                   # 100 µs optimizer
            kernel("Memcpy HtoD (Pinned -> Device)", t0 + 700, 50, step * 100 + 5, cat="gpu_memcpy"),
        ]
    events.append({"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 7, "tid": 7,
                   "ts": 50.0, "args": {"Total Allocated": 4096, "Bytes": 4096, "Device Type": 1, "Device Id": 0}})
    doc = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "computeMajor": 9}],
           "profile_memory": 1, "traceEvents": events}
    with gzip.open(path, "wt") as f:
        json.dump(doc, f)
    return path


def test_gpu_trace_gives_busy_share_categories_and_tensor_core_share(tmp_path):
    s = summarize_trace_file(_gpu_trace(tmp_path / "train.1.pt.trace.json.gz"))
    assert s["device"] == "cuda" and s["gpu_kernels_recorded"] and s["reason"] is None
    assert s["device_name"] == "NVIDIA H100 80GB HBM3"
    assert s["steps"] == 2 and s["window_ms"] == pytest.approx(2.0)
    assert s["utilisation"]["basis"] == "gpu"
    assert s["utilisation"]["busy_share"] == pytest.approx(0.65)            # 650 of 1000 µs per step
    cats = {r["category"]: r["ms"] for r in s["categories"]}
    assert cats == pytest.approx({"matmul": 0.8, "elementwise": 0.2, "optimizer": 0.2, "memory copies": 0.1})
    assert s["tensor_cores"]["share"] == pytest.approx(400 / 600)           # copies are not kernels
    assert s["top"][0]["tensor_core"] is True and s["top"][0]["calls"] == 2
    assert s["host"]["host_wait_ms"] == pytest.approx(0.3)                  # cudaStreamSynchronize
    assert s["host"]["host_ms"] == pytest.approx(0.7) and s["host"]["device_ms"] == pytest.approx(0.65)
    assert s["memory"]["device"] == "cuda"


def test_a_gpu_trace_without_kernels_says_why(tmp_path):
    path = tmp_path / "t.pt.trace.json"
    doc = json.loads(gzip.open(_gpu_trace(tmp_path / "g.json.gz"), "rt").read())
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("cat") not in ("kernel", "gpu_memcpy")]
    path.write_text(json.dumps(doc))
    s = summarize_trace_file(path)
    assert s["device"] == "cuda" and not s["gpu_kernels_recorded"] and "CUPTI" in s["reason"]


def test_a_file_that_is_not_a_trace_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="traceEvents"):
        summarize_trace_file(bad)


# -- the rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, context, category", [
    ("aten::mkldnn_convolution", (), "convolution"),
    ("aten::convolution_backward", (), "convolution"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", (), "convolution"),
    ("aten::addmm", (), "matmul"),
    ("ampere_sgemm_128x64_nn", (), "matmul"),
    ("aten::native_batch_norm", (), "normalisation"),
    ("aten::gelu", (), "elementwise"),
    ("aten::add_", ("Optimizer.step#SGD.step", "ProfilerStep#7"), "optimizer"),
    ("aten::fill_", ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__",), "data loading"),
    ("Memcpy HtoD (Pinned -> Device)", (), "memory copies"),
    ("aten::max_pool2d_with_indices", (), "other"),
])
def test_category_rules(name, context, category):
    assert classify(name, context) == category


@pytest.mark.parametrize("name, dtypes, expected", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas", (), True),
    ("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_nn", (), True),
    ("volta_h884gemm_64x64_ldg8_nn", (), True),
    ("sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nchw_tilesize128x128x16", (), True),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NTT", ("c10::BFloat16", "c10::BFloat16"), True),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NTT", ("float", "float"), False),
    ("ampere_sgemm_128x64_nn", (), False),
    ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize64x64x8_stage3_warpsize1x2x1_ffma_aligna4_alignc4_execute_kernel__5x_cublas", (), False),
    ("void implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, false, false, true>", (), False),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16> >", (), False),
])
def test_tensor_core_heuristic(name, dtypes, expected):
    assert is_tensor_core_kernel(name, dtypes) is expected


def test_a_cpu_trace_from_a_gpu_machine_is_summarised_as_a_cpu_run(tmp_path):
    """deviceProperties lists the machine's GPUs even for a --device cpu run: without kernels or
    CUDA runtime calls in the trace, it is a CPU run."""
    path = tmp_path / "t.pt.trace.json"
    doc = json.loads(gzip.open(_gpu_trace(tmp_path / "g.json.gz"), "rt").read())
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("cat") not in ("kernel", "gpu_memcpy", "cuda_runtime")]
    path.write_text(json.dumps(doc))
    s = summarize_trace_file(path)
    assert s["device"] == "cpu" and "CPU" in s["reason"]


@pytest.mark.parametrize("steps_per_epoch, epochs, expected", [
    (100, 2, 5),      # room after warm-up in the first epoch
    (8, 3, 8),        # 5 warm-up + 6 would cross into epoch 2: start at epoch 2's first step
    (10, 2, 10),
    (5, 3, None),     # no epoch holds 6 steps: no window rather than one that records evaluation
])
def test_the_profiled_window_stays_inside_one_epoch(steps_per_epoch, epochs, expected):
    from optlab.runner import PROFILE_WINDOW_STEPS, profile_window_start
    first = profile_window_start(5, steps_per_epoch, epochs)
    assert first == expected
    if first is not None:
        assert first // steps_per_epoch == (first + PROFILE_WINDOW_STEPS - 1) // steps_per_epoch


# -- a cancel inside the profiled window ------------------------------------------------------------
CANCEL_IN_WINDOW = """
import sys, torch
from pathlib import Path
from optlab import profiling
from optlab.models import build_model
from optlab.train import RunCancelled, setup_optimizer, setup_precision, train

device = torch.device("cpu")
model = build_model("speednet", 1, 10, 28)
g = torch.Generator().manual_seed(0)
batches = [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(12)]
optimizer, scheduler = setup_optimizer(model, "sgd", 0.1, 0.0, 16, 12, 0.1)
window = profiling.ProfileWindow(Path(sys.argv[1]), device, first_step=3)
checks = []
def should_stop():   # asked after every step (report_every_s=0): the cancel lands inside the window
    checks.append(1)
    return len(checks) >= 5
try:
    train(model, batches, batches[:1], epochs=1, label_smoothing=0.0, optimizer=optimizer, scheduler=scheduler,
          precision=setup_precision("fp32", device), device=device, warmup_steps=2, profiler=window,
          should_stop=should_stop, report_every_s=0.0)
except RunCancelled:
    print("cancelled", window.open, profiling.recording(), torch.autograd.profiler._is_profiler_enabled)
"""


def test_a_cancel_inside_the_profiled_window_closes_the_profiler_and_the_process_exits_cleanly(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", CANCEL_IN_WINDOW, str(tmp_path / "tb")], capture_output=True,
                         text=True, timeout=120)
    # A profiler left running made the interpreter die with SIGSEGV (-11) at exit.
    assert out.returncode == 0, (out.returncode, out.stderr[-1500:])
    assert out.stdout.split() == ["cancelled", "False", "False", "False"]
