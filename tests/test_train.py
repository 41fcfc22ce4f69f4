import pytest
import torch

from conftest import tiny_config
from optlab.models import MODELS, ModelSpec
from optlab.runner import execute
from optlab.train import setup_precision


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One real run on 1024 Fashion-MNIST images, shared by the assertions below."""
    from optlab.store import Store
    store = Store(tmp_path_factory.mktemp("home"))
    rid = store.submit(tiny_config(limit_train=1024, limit_test=500, epochs=2, target_accuracy=0.3))
    execute(store, rid)
    return store, store.get(rid)


def test_a_run_finishes_with_well_above_chance_accuracy(finished):
    _, run = finished
    assert run.status == "done", run.error
    assert run.summary["test_accuracy"] > 0.5          # chance is 0.1


def test_steady_state_figures_are_present_and_plausible(finished):
    _, run = finished
    s = run.summary
    assert s["device"] == "cpu" and s["device_label"].startswith("CPU")
    assert s["steady_steps"] == s["steps"] - s["warmup_steps"] > 0
    assert s["train_images_per_s"] > 0
    assert s["step_ms_p90"] >= s["step_ms_p50"] > 0
    assert 0 <= s["input_wait_share"] < 1
    assert s["forward_backward_ms_p50"] + s["optimizer_ms_p50"] <= s["step_ms_p90"] * 1.01
    # Throughput is images over the steady steps' own time: consistent with the median step.
    per_step = s["batch_size"] / (s["train_images_per_s"] / 1000)
    assert 0.5 * s["step_ms_p50"] < per_step < 2 * s["step_ms_p90"]
    assert s["peak_memory_mb"] > 0 and s["memory_kind"] == "host_rss"
    assert s["versions"]["torch"] == torch.__version__


def test_accuracy_is_recorded_each_epoch_with_time_to_target(finished):
    store, run = finished
    epochs = store.metrics(run.id, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["cumulative_train_seconds"] > epochs[0]["cumulative_train_seconds"]
    assert run.summary["accuracy_per_epoch"] == [e["test_accuracy"] for e in epochs]
    first = next(e for e in epochs if e["test_accuracy"] >= 0.3)
    assert run.summary["time_to_target_s"] == first["cumulative_train_seconds"]
    assert run.summary["train_seconds"] == pytest.approx(epochs[-1]["cumulative_train_seconds"])


def test_trained_weights_are_kept(finished):
    _, run = finished
    state = torch.load(run.summary["weights_path"], weights_only=True)
    assert "head.weight" in state


def test_gpu_pipeline_bf16_and_channels_last_run_on_the_cpu(store):
    # 8 px, 2 x 16 steps: bf16 has no native kernels on this kind of CPU (about 17x slower than fp32 at
    # 28 px); at 16 px and 768 images the same check took 31 CPU-seconds, here 12
    rid = store.submit(tiny_config(pipeline="gpu", precision="bf16", channels_last=True, image_size=8,
                                   limit_train=512, batch_size=32, epochs=2))
    execute(store, rid)
    run = store.get(rid)
    assert run.status == "done", run.error
    # it learned: chance is 0.1, and 0.2 on 256 test images is five standard deviations above it
    assert run.summary["test_accuracy"] > 0.2


def test_fp16_uses_a_grad_scaler_and_bf16_does_not():
    assert setup_precision("fp16", torch.device("cpu")).scaler.is_enabled()
    assert not setup_precision("bf16", torch.device("cpu")).scaler.is_enabled()


def test_out_of_memory_fails_the_run_with_the_batch_size_and_a_suggestion(store, monkeypatch):
    class RunsOutOfMemory(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(MODELS._entries, "oom", ModelSpec(lambda c, n, s: RunsOutOfMemory(), "sgd", 0.1, 0, ""))
    rid = store.submit(tiny_config(model="oom", batch_size=64))
    execute(store, rid)
    run = store.get(rid)
    assert run.status == "failed"
    assert "out of memory at batch size 64" in run.error and "try batch size 32" in run.error


def test_a_bad_data_set_fails_the_run_with_the_reason(store, monkeypatch, tmp_path):
    monkeypatch.setenv("OPTLAB_DATA", str(tmp_path))
    rid = store.submit(tiny_config(dataset="mnist"))
    execute(store, rid)
    run = store.get(rid)
    assert run.status == "failed" and "mnist was not found" in run.error


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_tf32_is_set_for_every_backend_and_stays_readable(precision):
    """Inductor's convolution templates read torch.backends.cudnn.allow_tf32, which raises when
    only the new per-operator flag for convolutions was set."""
    setup_precision(precision, torch.device("cuda"))   # sets the flags; needs no GPU
    tf32 = precision == "tf32"
    assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cudnn.rnn.fp32_precision
    assert (torch.backends.cuda.matmul.fp32_precision == "tf32") is tf32


# -- the disk: the run's folder before the work, the weights whole or not at all ----------------------
def optlab_in_namespace(home, setup: str, *argv):
    """`python -m optlab ARGV` in a private mount namespace after the shell commands `setup`
    (mounts that only this process sees); the files then under OPTLAB_HOME/runs are listed
    on the last line of stderr."""
    import os
    import subprocess
    import sys
    script = (f'set -e; {setup}; set +e; "$0" -m optlab "$@"; rc=$?; '
              f'echo "files:" $(cd "{home}/runs" && find . -type f | sort) >&2; exit $rc')
    return subprocess.run(["unshare", "-m", "bash", "-c", script, sys.executable, *argv], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OPTLAB_HOME=str(home)))


@pytest.fixture
def mounts(isolated_home):
    import subprocess
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", "/mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a file system here: {probe.stderr.strip()}")
    from optlab.store import Store
    store = Store()
    (store.home / "runs").mkdir()
    return store


RUN = ["run", "--device", "cpu", "--limit-train", "256", "--limit-test", "128", "--batch-size", "64", "--epochs", "1",
       "--workers", "0", "--no-profile", "--json"]


def test_a_full_disk_fails_the_run_with_that_reason_and_leaves_no_truncated_weights(mounts):
    # The run folders live on a 1 MiB file system: run.json fits, the 4.5 MB of weights do not.
    runs = mounts.home / "runs"
    out = optlab_in_namespace(mounts.home, f'mount -t tmpfs -o size=1m tmpfs "{runs}"', *RUN)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (run,) = mounts.list()
    assert run.status == "failed" and run.error.startswith("no space left on the device writing"), run.error
    assert f"runs/{run.id}/model.pt" in run.error
    assert out.stderr.splitlines()[-1] == f"files: ./{run.id}/run.json"   # no model.pt, whole or partial


def test_a_run_folder_that_cannot_be_written_fails_the_run_before_training(mounts):
    runs = mounts.home / "runs"
    out = optlab_in_namespace(mounts.home, f'mount --bind -o ro "{runs}" "{runs}"', *RUN)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (run,) = mounts.list()
    assert run.status == "failed" and run.error.startswith("the file system is read-only writing"), run.error
    assert not (run.summary or {}).get("steps") and mounts.metrics(run.id, "epoch") == []
