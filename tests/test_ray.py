"""The queue on a Ray cluster: a cluster on this machine, started once for the file, takes queued
runs from the scheduler (OPTLAB_RAY_ADDRESS), runs them to completion, obeys a cancel, and ends
them interrupted when their scheduler stops; a cluster that cannot be reached is one line and the
queue waits. Real worker processes train real Fashion-MNIST slices at 8 px on the CPU.
"""
import importlib.util
import os
import secrets
import socket
import subprocess
import sys

import pytest

from conftest import attached, pid_gone, tiny_config, training, wait_for
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


@needs_ray
def test_two_queued_runs_finish_done_on_the_ray_cluster_with_their_figures_in_the_store(store, cluster, on_ray):
    ids = [store.submit(tiny_config(**TINY, seed=i), user=user) for i, user in enumerate(["ann", "bob"])]
    scheduler = Scheduler(store, poll_s=0.2)
    on_ray.append(scheduler)
    assert scheduler.run_until_idle(timeout_s=180), scheduler.message
    assert scheduler._active_message().endswith(f"to the Ray cluster at {cluster} (2 CPU(s), no GPU; at most 2 run(s) "
                                                "at a time)")
    for run in (store.get(i) for i in ids):
        assert run.status == "done", run.error
        assert run.cluster == cluster and run.summary["train_images_per_s"] > 0
        assert run.summary["test_accuracy"] is not None and store.metrics(run.id, "telemetry")
        events = [e["message"] for e in store.events(run.id)]
        assert f"asked the Ray cluster at {cluster} for 1 CPU" in events[0]
        assert any(m.startswith(f"handed to Ray cluster at {cluster}, node ") for m in events), events
        assert f"run #{run.id} done" in run.log_tail and "starts the worker" in run.log_tail
        assert (store.artifacts_dir(run.id) / "worker.log").exists()


@needs_ray
def test_a_cancel_reaches_a_run_on_ray_and_ends_it_cancelled(store, on_ray):
    run_id = store.submit(tiny_config(**LONG))
    scheduler = Scheduler(store, poll_s=0.2).start()
    on_ray.append(scheduler)
    run = wait_for(lambda: training(store, run_id), 90, "training to start on Ray")
    assert cancel(store, run_id) == "cancelled"
    run = wait_for(lambda: (r := store.get(run_id)).finished and r, 30, "the run to end")
    assert run.status == "cancelled" and "cancel" in run.error
    wait_for(lambda: not scheduler.jobs, 10, "the scheduler to let its task go")
    assert pid_gone(run.worker_pid)   # the test cluster is this machine: its pid can be checked here


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
def test_a_run_ray_places_on_another_host_than_the_store_fails_with_the_reason_and_starts_no_worker(store, on_ray):
    run_id = store.submit(tiny_config(**TINY))
    scheduler = Scheduler(store, poll_s=0.1)
    on_ray.append(scheduler)
    scheduler.ray.host = "another host"     # as if the store were on another machine than the node
    assert scheduler.run_until_idle(timeout_s=60), scheduler.message
    run = store.get(run_id)
    assert run.status == "failed" and "another host than the scheduler's" in run.error and "WAL" in run.error
    assert run.worker_pid is None and not store.metrics(run_id, "telemetry")


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
