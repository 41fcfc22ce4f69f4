"""The queue on a Ray cluster: a cluster on this machine, started once for the file, takes queued
runs from the scheduler (OPTLAB_RAY_ADDRESS), runs them to completion, obeys a cancel, and ends
them interrupted when their scheduler stops; a cluster that cannot be reached is one line and the
queue waits. Real worker processes train real Fashion-MNIST slices at 8 px on the CPU.
"""
import importlib.util
import os
import re
import secrets
import signal
import socket
import subprocess
import sys

import pytest

from conftest import attached, pid_gone, tiny_config, training, wait_for
from optlab import storeservice
from optlab.scheduler import Scheduler, cancel

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (make ray installs it)")

TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=1, image_size=8)
LONG = dict(limit_train=4096, limit_test=128, batch_size=64, epochs=3, image_size=8)   # long enough to stop

# The head, in a process of its own so that the scheduler connects to an address as it would to a
# real head; ray.shutdown() there stops exactly the processes it started.
HEAD = """
import sys, ray
context = ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-CPU Ray cluster on this machine. Token authentication with a token
    made here, in the environment of the head and of this process (nothing is written to ~/.ray)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=os.environ)
        try:
            gcs = head.stdout.readline().strip()
            assert gcs, "the Ray head did not start"
            yield "127.0.0.1:" + gcs.rsplit(":", 1)[1]
        finally:
            import ray
            ray.shutdown()      # this process's connection, made by the schedulers under test
            head.stdin.close()
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()


@pytest.fixture
def on_ray(cluster, monkeypatch):
    """A scheduler for this test's store that hands runs to the cluster; stopped afterwards."""
    monkeypatch.setenv("OPTLAB_RAY_ADDRESS", cluster)
    made = []
    yield made
    for scheduler in made:
        scheduler.stop(kill=True)
    storeservice.close_all()


@needs_ray
def test_two_queued_runs_finish_done_on_the_ray_cluster_with_their_figures_in_the_store(store, cluster, on_ray):
    """One run on the store's host (the worker opens the store), one on "another host" (it writes
    through the store service from a scratch folder, and its folder is shipped back)."""
    ids = [store.submit(tiny_config(**TINY, seed=i), user=user) for i, user in enumerate(["ann", "bob"])]
    scheduler = Scheduler(store, poll_s=0.1)
    on_ray.append(scheduler)
    wait_for(lambda: scheduler.ray.ready(), 60, "the scheduler to connect")
    submit, here, node_home = scheduler.ray.submit, scheduler.ray.host, store.home.parent / "node"

    def second_elsewhere(run_id, config, env, *args):   # as if Ray placed the second run on another machine
        scheduler.ray.host = "another host" if run_id == ids[1] else here
        return submit(run_id, config, {**env, "OPTLAB_NODE_HOME": str(node_home)}, *args)
    scheduler.ray.submit = second_elsewhere
    assert scheduler.run_until_idle(timeout_s=180), scheduler.message
    assert scheduler._active_message().endswith(f"to the Ray cluster at {cluster} (2 CPU(s), no GPU; at most 2 run(s) "
                                                "at a time)")
    service = scheduler.ray.service.url
    for run in (store.get(i) for i in ids):
        assert run.status == "done", (run.error, run.log_tail)
        assert run.cluster == cluster and run.summary["train_images_per_s"] > 0
        assert run.summary["test_accuracy"] is not None and store.metrics(run.id, "telemetry")
        assert store.metrics(run.id, "epoch") and store.metrics(run.id, "step_times")
        events = [e["message"] for e in store.events(run.id)]
        assert f"asked the Ray cluster at {cluster} for 1 CPU" in events[0]
        assert any(m.startswith(f"handed to Ray cluster at {cluster}, node ") for m in events), events
        assert f"run #{run.id} done" in run.log_tail and "starts the worker" in run.log_tail   # through the heartbeats
        folder = store.artifacts_dir(run.id)
        assert run.summary["weights_path"] == str(folder / "model.pt") and (folder / "model.pt").stat().st_size > 0
        log = (folder / "worker.log").read_text()
        through = any("it writes through the store service, scratch " + str(node_home / "scratch") in m for m in events)
        shipped = any(m.startswith("run folder shipped ") and m.endswith(f" to {service}") for m in events)
        elsewhere = f"; store service {service}, scratch {node_home / 'scratch'}" in log
        assert through == shipped == elsewhere == (run.id == ids[1]), (events, log)
    assert list((node_home / "scratch").iterdir()) == []   # the scratch folder went once its folder came back


@needs_ray
def test_a_cancel_reaches_a_run_on_ray_and_a_killed_ray_worker_fails_its_run(store, on_ray):
    cancelled, lost = store.submit(tiny_config(**LONG)), store.submit(tiny_config(**LONG, seed=1))
    scheduler = Scheduler(store, poll_s=0.2).start()
    on_ray.append(scheduler)
    for run_id in (cancelled, lost):
        wait_for(lambda: training(store, run_id), 90, f"run #{run_id} to train on Ray")
    assert cancel(store, cancelled) == "cancelled"
    task = next(int(m.group(1)) for e in store.events(lost) if (m := re.search(r"Ray task pid (\d+)", e["message"])))
    os.kill(task, signal.SIGKILL)      # the Ray worker process that runs the task, as the kernel's OOM killer would
    wait_for(lambda: store.get(cancelled).finished, 30, "the cancelled run to end")
    # its worker may see its task gone before Ray tells the scheduler (it stops: interrupted), and
    # the scheduler then fails the run with Ray's reason
    wait_for(lambda: store.get(lost).status == "failed", 60, "the run whose Ray worker was killed to fail")
    run = store.get(cancelled)
    assert run.status == "cancelled" and "cancel" in run.error
    run = store.get(lost)
    assert run.status == "failed" and run.error.startswith("its Ray worker was lost: WorkerCrashedError"), run.error
    wait_for(lambda: not scheduler.jobs, 10, "the scheduler to let its tasks go")
    assert pid_gone(store.get(cancelled).worker_pid)   # the test cluster is this machine: its pids can be checked here
    wait_for(lambda: pid_gone(run.worker_pid), 15, "the orphaned worker to stop")
    assert "the Ray task that started it (pid %d) is gone" % task in (store.artifacts_dir(lost) / "worker.log").read_text()
    assert store.get(lost).status == "failed"          # the worker's own "interrupted" does not hide why


@needs_ray
def test_stopping_the_scheduler_cancels_its_ray_tasks_and_their_runs_end_interrupted(store, on_ray):
    run_id = store.submit(tiny_config(**LONG))
    scheduler = Scheduler(store, poll_s=0.2, grace_s=5).start()
    on_ray.append(scheduler)
    run = wait_for(lambda: attached(store, run_id), 90, "the worker on Ray to take its run")
    scheduler.stop(kill=True)          # ray.cancel: the task SIGTERMs the worker's group (still loading torch)
    run = store.get(run_id)
    assert run.status == "interrupted", (run.status, run.error)
    assert not scheduler.jobs
    wait_for(lambda: pid_gone(run.worker_pid), 10, "the worker to be gone")


@needs_ray
def test_a_run_on_another_host_that_cannot_reach_the_store_service_fails_with_the_reason(store, on_ray):
    with socket.socket() as s:          # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{s.getsockname()[1]}"
    run_id = store.submit(tiny_config(**TINY))
    scheduler = Scheduler(store, poll_s=0.1)
    on_ray.append(scheduler)
    scheduler.ray.host = "another host"
    wait_for(lambda: scheduler.ray.ready(), 60, "the scheduler to connect")
    scheduler.ray.service.url = nowhere     # as if a firewall stood between the node and the scheduler
    assert scheduler.run_until_idle(timeout_s=60), scheduler.message
    run = store.get(run_id)
    assert run.status == "failed" and run.worker_pid is None, run.error
    assert "another host than the store's, and the store service at " + nowhere in run.error
    assert "cannot be reached from there" in run.error


def test_a_ray_cluster_that_cannot_be_reached_is_one_line_and_the_queue_waits(store, monkeypatch):
    with socket.socket() as s:          # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPTLAB_RAY_ADDRESS", f"127.0.0.1:{port}")
    run_id = store.submit(tiny_config())
    scheduler = Scheduler(store, poll_s=0.05)
    try:
        expected = "cannot be reached" if HAVE_RAY else "Ray is not installed"
        wait_for(lambda: scheduler.tick() or expected in scheduler.message, 30, "the scheduler to say why")
        scheduler.tick()
        assert f"127.0.0.1:{port}" in scheduler.message or not HAVE_RAY
        assert "\n" not in scheduler.message and store.get(run_id).status == "queued" and not scheduler.jobs
    finally:
        scheduler.stop()


def test_a_task_asks_for_its_gpus_with_the_cpus_that_come_with_them():
    from optlab.raycluster import NodeShape, task_resources
    shape = NodeShape.of([{"CPU": 16.0, "GPU": 1.0}, {"CPU": 64.0, "GPU": 8.0}, {"CPU": 4.0}])
    assert shape == NodeShape(gpus=8, cpus=64, cpus_per_gpu=8)    # the leaner GPU node sets the share
    assert task_resources({"gpus": 2, "device": "auto"}, True, shape) == {"num_gpus": 2, "num_cpus": 16}
    assert task_resources({"gpus": 1, "device": "cpu"}, True, shape) == {"num_cpus": 1}
    assert task_resources({"gpus": 2, "device": "cpu"}, False, NodeShape.of([{"CPU": 2.0}])) == {"num_cpus": 2}
    assert NodeShape.of([{"CPU": 2.0, "GPU": 4.0}]).cpus_per_gpu == 1 and NodeShape.of([]) == NodeShape(0, 0, 1)


@needs_ray
def test_a_run_ray_cannot_place_fails_after_the_timeout_with_what_it_asked_for(store, on_ray, monkeypatch):
    from optlab import raycluster
    monkeypatch.setenv("OPTLAB_RAY_PLACE_TIMEOUT_S", "2")
    monkeypatch.setattr(raycluster, "task_resources", lambda *a: {"num_cpus": 1, "resources": {"held-elsewhere": 1}})
    run_id = store.submit(tiny_config(**TINY))
    scheduler = Scheduler(store, poll_s=0.1)
    on_ray.append(scheduler)
    assert scheduler.run_until_idle(timeout_s=60), scheduler.message
    run = store.get(run_id)
    assert run.status == "failed" and run.worker_pid is None
    assert run.error.startswith(f"the Ray cluster at {scheduler.ray.address} did not place it within 2 s (it asked "
                                "for 1 CPU; other work holds them)"), run.error
    monkeypatch.setenv("OPTLAB_RAY_PLACE_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="OPTLAB_RAY_PLACE_TIMEOUT_S must be a number of seconds > 0, not 'soon'"):
        Scheduler(store)
