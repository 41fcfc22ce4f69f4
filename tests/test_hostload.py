"""The CPU budget of a run and the host's load: threads plus loader workers never exceed the cores,
cgroup limits are read from the files the kernel writes, and a run is called disturbed only when
other processes took more than the stated share of its cores."""
import os

import pytest
import torch

from conftest import tiny_config
from optlab import hostload
from optlab.hostload import CpuSnapshot, cgroup_cpu_quota, cgroup_memory_limit_mb, host_record, plan_threads
from optlab.runner import execute
from optlab.worker import _set_threads


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 16])
@pytest.mark.parametrize("workers", [0, 1, 2, 8])
def test_threads_and_loader_workers_never_exceed_the_cores(cores, workers):
    plan = plan_threads(cores, "cpu", workers)
    assert plan.intra_op_threads >= 1 and plan.loader_workers >= 0
    assert plan.intra_op_threads + plan.loader_workers <= cores
    assert plan.loader_workers == min(workers, cores - 1)         # workers first, one core kept for training
    assert (plan.note is None) == (plan.loader_workers == workers)


def test_the_device_pipeline_has_no_loader_workers_and_gets_every_core():
    plan = plan_threads(4, "gpu", 2)
    assert (plan.loader_workers, plan.intra_op_threads, plan.note) == (0, 4, None)


def test_the_schedulers_share_in_omp_num_threads_is_the_budget(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cores, source = hostload.cpu_budget()
    assert (cores, source) == (1, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert hostload.cpu_budget()[0] == min(len(os.sched_getaffinity(0)), 64)


def test_the_worker_sizes_the_openmp_pool_to_the_plan_before_torch_loads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")                    # the scheduler's share for this slot
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)          # restored after the test
    plan = _set_threads(tiny_config(pipeline="cpu", num_workers=2))
    assert (plan.cores, plan.loader_workers, plan.intra_op_threads) == (2, 1, 1)
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"


def test_cgroup_v2_limits_are_read_and_the_tightest_level_wins(tmp_path):
    (tmp_path / "user" / "run").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "user" / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "user" / "run" / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "user" / "memory.max").write_text(f"{2 * 2**30}\n")
    (tmp_path / "user" / "run" / "memory.max").write_text("max\n")
    assert cgroup_cpu_quota("0::/user/run\n", tmp_path) == 1.5
    assert cgroup_memory_limit_mb("0::/user/run\n", tmp_path) == 2048


def test_cgroup_v1_limits_are_read_and_no_limit_reads_as_none(tmp_path):
    (tmp_path / "cpu" / "job").mkdir(parents=True)
    (tmp_path / "memory" / "job").mkdir(parents=True)
    (tmp_path / "cpu" / "job" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "job" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    text = "4:memory:/job\n1:cpu,cpuacct:/job\n"
    assert cgroup_cpu_quota(text, tmp_path) == 2.0
    assert cgroup_memory_limit_mb(text, tmp_path) is None
    (tmp_path / "cpu" / "job" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(text, tmp_path) is None


def snapshots(wall, busy, own):
    return CpuSnapshot(100.0, 1000.0, 50.0, 0.5), CpuSnapshot(100.0 + wall, 1000.0 + busy, 50.0 + own, 1.5)


def test_others_taking_more_than_the_stated_share_of_the_runs_cores_disturb_it():
    # 10 s on 2 cores: the run took 15 CPU-s, the CPUs were busy 19 CPU-s, so others took 4 = 20 %.
    record = host_record(*snapshots(10, 19, 15), cpus=2)
    assert record["others_cpu_s"] == pytest.approx(4) and record["others_share"] == pytest.approx(0.2)
    assert record["disturbed"] and "20 %" in record["reason"] and "10 %" in record["reason"]
    assert (record["load1_before"], record["load1_after"]) == (0.5, 1.5)


def test_a_quiet_host_is_not_disturbed():
    record = host_record(*snapshots(10, 16, 15.5), cpus=2)        # others: 0.5 CPU-s of 20 = 2.5 %
    assert not record["disturbed"] and record["reason"] is None


def test_cores_the_run_leaves_free_may_be_used_by_others():
    # The run may use 2 of 4 CPUs; others keeping the 2 free ones busy (20 CPU-s in 10 s) is not a disturbance.
    assert not host_record(*snapshots(10, 35, 15), cpus=4, budget=2)["disturbed"]
    assert host_record(*snapshots(10, 38, 15), cpus=4, budget=2)["disturbed"]     # 3 CPU-s more: 15 % of its 2


def test_unreadable_counters_say_so_instead_of_guessing():
    before, after = snapshots(10, 16, 15)
    after.busy_s = None
    record = host_record(before, after, cpus=2)
    assert not record["disturbed"] and "could not be read" in record["reason"]


def test_a_run_records_its_thread_plan_and_the_hosts_load(store):
    rid = store.submit(tiny_config(pipeline="cpu", num_workers=8))
    execute(store, rid)
    run = store.get(rid)
    assert run.status == "done", run.error
    host = run.summary["host"]
    threads = host["threads"]
    cores = hostload.cpu_budget()[0]
    assert threads["requested_workers"] == 8 and threads["cores"] == cores
    assert threads["loader_workers"] + threads["intra_op_threads"] <= cores
    assert torch.get_num_threads() == threads["intra_op_threads"] and threads["interop_threads"] >= 1
    assert host["wall_s"] > 0 and host["own_cpu_s"] > 0 and host["others_cpu_s"] >= 0
    assert isinstance(host["disturbed"], bool) and host["load1_before"] is not None
    events = [e["message"] for e in store.events(rid)]
    assert any(m.startswith("DataLoader workers 8 -> ") for m in events)
    assert host["disturbed"] == any(m.startswith("measurement disturbed") for m in events)
