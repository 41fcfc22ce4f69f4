"""Data-parallel runs on the CPU: two Gloo ranks started by torchrun, on a real Fashion-MNIST slice.

A two-rank run finishes with figures from both ranks and, beside its one-device reference, a
scaling-efficiency figure; a rank killed mid-run fails the run with the reason and leaves no
process behind; the knob is refused where it cannot work; each rank's share is disjoint and equal.
"""
import os
import signal
import threading
import time

import pytest

from conftest import tiny_config
from optlab import ddp
from optlab.config import ConfigError
from optlab.device import describe
from optlab.hostload import affinity_cpus

pytestmark = pytest.mark.skipif(len(affinity_cpus()) < 2, reason="two ranks need two CPU cores")


def _execute(store, run_id):
    from optlab.runner import execute
    return execute(store, run_id)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _rank_processes(run_id: int) -> list[int]:
    """Processes whose command line runs this run's ranks (torchrun's or a rank's)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"optlab.rank" in cmd and str(run_id).encode() in cmd and _alive(int(entry)):
                found.append(int(entry))
    return found


def test_two_gloo_ranks_finish_with_both_ranks_figures_and_a_scaling_efficiency(store, monkeypatch, tmp_path):
    cfg = tiny_config(gpus=2, batch_size=16, profile=True, image_size=8)
    reference = ddp.reference_to_queue(store, cfg)
    assert reference is not None and reference.gpus == 1 and reference.batch_size == 16
    one = store.submit(reference.replace(profile=False))   # the profile setting is not part of the comparison
    two = store.submit(cfg)
    assert ddp.reference_to_queue(store, cfg) is None          # queued once: not queued again
    _execute(store, one)
    summary = _execute(store, two)
    run = store.get(two)
    assert run.status == "done", run.error

    d = summary["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo"
    assert [r["rank"] for r in d["ranks"]] == [0, 1]
    assert len({r["pid"] for r in d["ranks"]}) == 2                # two processes, not one twice
    for r in d["ranks"]:
        assert r["steady_steps"] > 0 and r["images"] > 0 and r["step_ms_p50"] > 0
    # rank 0's steps counted with both ranks' images: 512 images, 256 a rank, 16 steps of 16 each
    assert summary["train_images"] == 512 and summary["steps"] == 16
    step_images = store.metrics(two, "step_times")[0]["images"]
    assert set(step_images) == {32}
    assert "× 2 ranks (gloo)" in summary["device_label"]
    assert 0 <= d["allreduce_share"] < 1                            # the profile saw the collective
    assert any(c["category"] == "communication" for c in summary["profile"]["categories"])

    figures, why = ddp.scaling_for(store, run)
    assert why is None and figures["reference_run"] == one
    one_speed = store.get(one).summary["train_images_per_s"]
    assert figures["efficiency"] == pytest.approx(summary["train_images_per_s"] / (2 * one_speed))
    assert figures["images_per_s_per_device"] == pytest.approx(summary["train_images_per_s"] / 2)
    rows = dict(ddp.distributed_rows(run, store))
    assert f"run #{one}" in rows["scaling"] and "efficiency" in rows["scaling"]
    assert (store.artifacts_dir(two) / "model.pt").exists()
    assert _rank_processes(two) == []

    # the Runs page and the report show the ranks and the efficiency
    from conftest import open_page
    from optlab.report import write_report
    at = open_page(monkeypatch, store.home, "runs", run=two)
    assert any("Data-parallel ranks" in m.value for m in at.markdown)
    assert any(rows["scaling"] in str(t.value.to_dict()) for t in at.table)
    write_report(store, [store.get(one), run], tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "Data-parallel ranks" in html and "efficiency" in html and "rank 1" in html


def test_a_rank_killed_mid_run_fails_the_run_with_the_reason_and_leaves_nothing_behind(store):
    run_id = store.submit(tiny_config(gpus=2, batch_size=16, limit_train=4096, epochs=2, image_size=8))
    folder = store.artifacts_dir(run_id, create=False)
    worker = threading.Thread(target=_execute, args=(store, run_id))
    worker.start()
    deadline = time.monotonic() + 120
    progress = folder / ddp.PROGRESS_FILE
    while time.monotonic() < deadline:   # both ranks started and rank 0 is training
        if (folder / "rank1.pid").exists() and progress.exists() and b'"step"' in progress.read_bytes():
            break
        time.sleep(0.2)
    else:
        pytest.fail("the ranks never started training")
    pids = [int((folder / f"rank{r}.pid").read_text()) for r in (0, 1)]
    os.kill(pids[1], signal.SIGKILL)
    worker.join(timeout=120)
    assert not worker.is_alive()
    run = store.get(run_id)
    assert run.status == "failed"
    assert "rank 1 of 2 was killed by SIGKILL" in run.error
    deadline = time.monotonic() + 10
    while (_rank_processes(run_id) or any(_alive(p) for p in pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _rank_processes(run_id) == [] and not any(_alive(p) for p in pids)


def test_the_knob_is_refused_where_it_cannot_work():
    cpu = describe("cpu")
    with pytest.raises(ConfigError, match="gpus must be a whole number 1..8"):
        tiny_config(gpus=0).validate()
    with pytest.raises(ConfigError, match="batch size 'auto' searches on one device"):
        tiny_config(gpus=2, batch_size="auto").validate()
    cores = len(affinity_cpus())
    if cores < 8:
        with pytest.raises(ConfigError, match=f"this machine has {cores}"):
            tiny_config(gpus=cores + 1).validate(cpu)
    tiny_config(gpus=2).validate(cpu)


def test_each_rank_gets_an_equal_disjoint_share_of_the_training_images():
    from optlab.data import load_dataset
    ds = load_dataset(tiny_config(limit_train=101))
    shares = [ds.shard(r, 3) for r in range(3)]
    assert [len(s.train_y) for s in shares] == [33, 33, 33]         # 101 cut to 99: equal steps on every rank
    seen = [tuple(x.flatten().tolist()) for s in shares for x in s.train_x]
    assert len(set(seen)) == len(seen) == 99
    assert all(len(s.test_y) == len(ds.test_y) for s in shares)      # every rank evaluates the whole test set
