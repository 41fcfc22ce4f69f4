"""The queue and the scheduler: fair order, atomic claims, cancel, faults, restart, the jobs CLI.

Real worker processes train real Fashion-MNIST slices on the CPU; the selection logic and the
100-submission test run without workers (claims only) to keep the suite fast.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import attached, pid_gone, tiny_config, training, wait_for
from optlab.scheduler import Scheduler, SchedulerBusy, cancel, default_slots, describe_exit
from optlab.store import StoreMissing

TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=1, profile=False)
LONG = dict(limit_train=4096, limit_test=128, batch_size=64, epochs=3, profile=False)  # a minute on the CPU


@pytest.fixture
def schedulers():
    """Schedulers made by a test; stopped (workers killed) afterwards, whatever happened."""
    made = []
    yield made
    for s in made:
        s.stop(kill=True)


# -- selection: fair order, atomic claims (no workers) ---------------------------------------------------
def claim_next(store):
    """The head of the fair queue, claimed, as the scheduler's _fill claims it; None when none is queued."""
    for run in store.fair_queue():
        if store.claim(run.id):
            return store.get(run.id)
    return None


def test_runs_are_handed_out_fifo_per_user_and_round_robin_across_users(store):
    ids = {(u, i): store.submit(tiny_config(seed=i), user=u)
           for u, n in (("ann", 3), ("bob", 2), ("cy", 1)) for i in range(n)}
    order = []
    while (run := claim_next(store)) is not None:
        order.append((run.user, run.config["seed"]))
    assert order == [("ann", 0), ("bob", 0), ("cy", 0), ("ann", 1), ("bob", 1), ("ann", 2)]
    assert all(store.get(i).status == "running" for i in ids.values())


def test_a_newcomer_goes_before_the_next_run_of_a_user_already_served(store):
    first = store.submit(tiny_config(), user="ann")
    store.submit(tiny_config(), user="ann")
    assert claim_next(store).id == first
    late = store.submit(tiny_config(), user="bob")
    assert [r.user for r in store.fair_queue()] == ["bob", "ann"]
    assert claim_next(store).id == late


def test_hundred_concurrent_submissions_leave_hundred_runs_each_claimed_once(store):
    code = ("import sys; from optlab.store import Store; from optlab.config import RunConfig; s = Store(); "
            "[s.submit(RunConfig(device='cpu', seed=i), user='user' + sys.argv[1]) for i in range(10)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], env=os.environ) for n in range(10)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 10
    assert len(store.list(status="queued")) == 100

    claimed, lock = [], threading.Lock()

    def claimer():
        while (run := claim_next(store)) is not None:
            with lock:
                claimed.append(run.id)

    threads = [threading.Thread(target=claimer) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(claimed) == 100 and len(set(claimed)) == 100
    assert len(store.list()) == 100 and not store.list(status="queued")


def test_cancelling_a_queued_run_cancels_it_at_once_and_it_is_never_handed_out(store):
    run_id = store.submit(tiny_config())
    assert cancel(store, run_id) == "cancelled"
    assert store.get(run_id).status == "cancelled" and store.get(run_id).finished_at
    assert claim_next(store) is None
    assert cancel(store, run_id) == "cancelled"   # already finished: unchanged
    with pytest.raises(LookupError, match="no run #999"):
        cancel(store, 999)


def test_one_slot_per_visible_gpu_and_one_without_a_gpu():
    import torch
    assert default_slots() == max(1, torch.cuda.device_count())


def test_exit_codes_are_described_with_the_signal_name():
    assert describe_exit(-signal.SIGKILL).startswith("was killed by SIGKILL")
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(3) == "exited with code 3"


def test_a_second_scheduler_on_the_same_home_hands_out_nothing_and_says_so(store, schedulers):
    first = Scheduler(store)
    schedulers.append(first)
    first.tick()
    assert first.active
    run_id = store.submit(tiny_config())
    second = Scheduler(store)
    second.tick()
    assert not second.active and f"pid {os.getpid()}" in second.message and "hands out nothing" in second.message
    assert store.get(run_id).status == "queued"
    with pytest.raises(SchedulerBusy):
        second.run_until_idle(timeout_s=1)
    cancel(store, run_id)
    first.stop()
    second.tick()
    assert second.active   # the lock is free once the first one stops
    second.stop()


def test_restart_marks_runs_of_dead_workers_interrupted_and_adopts_live_ones(store, schedulers):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = store.submit(tiny_config())
    assert store.claim(run_id, worker_pid=dead.pid)
    live = store.submit(tiny_config(), status="running", worker_pid=os.getpid())   # a foreground `optlab run`
    unknown = store.submit(tiny_config(), status="running")    # written by an OptLab without heartbeats
    scheduler = Scheduler(store)
    schedulers.append(scheduler)
    scheduler.tick()
    run = store.get(run_id)
    assert run.status == "interrupted" and f"pid {dead.pid}) was gone" in run.error
    assert store.get(live).status == "running" and live in scheduler.jobs
    assert store.get(unknown).status == "interrupted" and "no process was recorded" in store.get(unknown).error


# -- real workers ------------------------------------------------------------------------------------
def test_three_submitted_runs_all_finish_done_with_results_and_telemetry(store, schedulers):
    ids = [store.submit(tiny_config(**TINY, seed=i), user=user) for i, user in enumerate(["ann", "ann", "bob"])]
    scheduler = Scheduler(store, slots=3, poll_s=0.2)   # three slots: the workers' start-up overlaps
    schedulers.append(scheduler)
    assert scheduler.run_until_idle(timeout_s=150)
    runs = [store.get(i) for i in ids]
    assert [r.status for r in runs] == ["done"] * 3, [r.error for r in runs]
    for run in runs:
        s = run.summary
        assert s["train_images_per_s"] > 0 and s["test_accuracy"] is not None and s["device"] == "cpu"
        assert s["telemetry_source"] == "process" and "energy_j" not in s   # no NVML here: no energy figure
        assert s["pid"] != os.getpid()   # trained in a worker process
        telemetry = store.metrics(run.id, "telemetry")
        assert len(telemetry) >= 3 and {row["source"] for row in telemetry} == {"process"}
        assert max(row["cpu_pct"] for row in telemetry) > 0 and telemetry[-1]["rss_mb"] > 50
        assert f"run #{run.id} done" in run.log_tail
        assert (store.artifacts_dir(run.id) / "worker.log").exists()
        assert run.progress["phase"] == "train" and run.progress["step"] == run.progress["steps_total"]
    started = sorted(runs, key=lambda r: r.started_at)
    assert [r.user for r in started] == ["ann", "bob", "ann"]   # round-robin across submitters


def test_cancelling_a_running_run_ends_it_cancelled_and_its_process_is_gone(store, schedulers):
    run_id = store.submit(tiny_config(**LONG))
    scheduler = Scheduler(store, poll_s=0.2).start()
    schedulers.append(scheduler)
    run = wait_for(lambda: training(store, run_id), 60, "training to start")
    p = run.progress
    assert {"epoch", "step", "loss", "images_per_s", "eta_s"} <= set(p) and time.time() - run.heartbeat_at < 3
    history = wait_for(lambda: (h := store.metrics(run_id, "progress")) and len(h) >= 2 and h, 30,
                       "two progress samples in the history")
    steps = [row["step"] for row in history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and history[-1]["images_per_s"] > 0
    assert cancel(store, run_id) == "cancelled"
    run = wait_for(lambda: (r := store.get(run_id)).finished and r, 20, "the run to end")
    assert run.status == "cancelled" and "cancel" in run.error
    wait_for(lambda: pid_gone(run.worker_pid), 10, "the worker process to exit")
    wait_for(lambda: not scheduler.jobs, 5, "the scheduler to free the slot")


def test_a_worker_killed_by_sigkill_fails_with_the_signal_named_and_the_next_run_completes(store, schedulers):
    doomed = store.submit(tiny_config(**LONG), user="ann")
    after = store.submit(tiny_config(**TINY), user="ann")
    scheduler = Scheduler(store, slots=1, poll_s=0.2).start()
    schedulers.append(scheduler)
    run = wait_for(lambda: training(store, doomed), 60, "training to start")
    os.kill(run.worker_pid, signal.SIGKILL)
    run = wait_for(lambda: (r := store.get(doomed)).finished and r, 5, "the killed run to be marked")
    assert run.status == "failed" and "killed by SIGKILL" in run.error and "last log lines" in run.error
    assert "train: epoch 1/3" in run.log_tail
    done = wait_for(lambda: (r := store.get(after)).finished and r, 60, "the next run")
    assert done.status == "done" and done.summary["train_images_per_s"] > 0


def test_restarting_the_queue_interrupts_the_run_in_flight_and_completes_the_queued_ones(store):
    long_run = store.submit(tiny_config(**LONG))
    queued = store.submit(tiny_config(**TINY))
    queue = [sys.executable, "-m", "optlab", "queue", "--poll", "0.2"]
    first = subprocess.Popen(queue, env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = wait_for(lambda: training(store, long_run), 60, "training to start")
        first.kill()      # the scheduler dies without a chance to clean up
        first.wait()
        assert Scheduler(store, poll_s=0.2).run_until_idle(timeout_s=90)   # the restarted scheduler
    finally:
        first.kill()
    interrupted = store.get(long_run)
    assert interrupted.status == "interrupted" and "scheduler" in interrupted.error
    assert pid_gone(run.worker_pid)
    assert store.get(queued).status == "done"
    assert not store.list(status=("queued", "running"))


# -- the jobs CLI -----------------------------------------------------------------------------------
def run_cli(*argv):
    from optlab.cli import main
    return main(list(argv))


CLI_RUN = ["--model", "speednet", "--device", "cpu", "--limit-train", "256", "--limit-test", "128",
           "--batch-size", "64", "--epochs", "1", "--workers", "0", "--no-profile"]


def test_submit_prints_the_new_run_id_and_queues_it_for_the_user(store, capsys):
    assert run_cli("submit", *CLI_RUN, "--user", "ann") == 0
    run_id = int(capsys.readouterr().out.strip())
    run = store.get(run_id)
    assert run.status == "queued" and run.user == "ann" and run.config["limit_train"] == 256


def test_submit_refuses_a_value_this_machine_cannot_run_and_queues_nothing(store, capsys):
    assert run_cli("submit", *CLI_RUN, "--precision", "fp16") == 2
    assert "fp16 needs a GPU" in capsys.readouterr().err
    assert run_cli("submit", *CLI_RUN, "--model", "nope") == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert store.list() == []


def test_status_json_and_cancel_from_the_command_line(store, capsys):
    run_cli("submit", *CLI_RUN, "--user", "bob")
    run_id = int(capsys.readouterr().out.strip())
    assert run_cli("status", str(run_id), "--json") == 0
    view = json.loads(capsys.readouterr().out)
    assert view["status"] == "queued" and view["queue_position"] == 1 and view["user"] == "bob"
    assert run_cli("cancel", str(run_id)) == 0
    assert "cancelled" in capsys.readouterr().out
    assert store.get(run_id).status == "cancelled"
    assert run_cli("cancel", str(run_id)) == 1
    assert run_cli("status", "999") == 2


def test_queue_command_refuses_when_another_scheduler_holds_the_store(store, schedulers, capsys):
    holder = Scheduler(store)
    schedulers.append(holder)
    holder.tick()
    assert run_cli("queue", "--exit-when-idle") == 1
    assert "another scheduler" in capsys.readouterr().err


# -- faults: stopped processes, the lock, a vanished store, foreground runs ----------------------------
def test_a_started_worker_that_stops_beating_is_ended_and_its_run_failed_with_the_reason(store, schedulers):
    run_id = store.submit(tiny_config(**LONG))
    scheduler = Scheduler(store, poll_s=0.2, stale_s=10).start()
    schedulers.append(scheduler)
    run = wait_for(lambda: attached(store, run_id), 60, "the worker to start beating")
    os.kill(run.worker_pid, signal.SIGSTOP)
    run = wait_for(lambda: (r := store.get(run_id)).finished and r, 30, "the stopped worker's run to end")
    assert run.status == "failed" and f"pid {run.worker_pid}) sent no heartbeat" in run.error
    assert "stopped" in run.error
    wait_for(lambda: pid_gone(run.worker_pid), 10, "the stopped worker to be gone")
    wait_for(lambda: not scheduler.jobs, 5, "the scheduler to free the slot")


HOLD_THE_LOCK = """
import os, signal, sqlite3, sys
from optlab.store import Store
store = Store()
run_id = int(sys.argv[1])
assert store.claim(run_id, worker_pid=os.getpid())     # takes its run like a worker
db = sqlite3.connect(str(store.path), isolation_level=None)
db.execute("BEGIN IMMEDIATE")                           # ... and is stopped in the middle of a write
db.execute("UPDATE runs SET progress = '{}' WHERE id = ?", (run_id,))
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_a_process_stopped_holding_the_store_lock_is_ended_so_submit_and_cancel_go_on(store, schedulers):
    stuck = store.submit(tiny_config())
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(stuck)], stdout=subprocess.PIPE, text=True,
                              env=os.environ)
    try:
        assert holder.stdout.readline().strip() == "holding"
        wait_for(lambda: open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T", 10,
                 "the holder to stop")
        scheduler = Scheduler(store, poll_s=0.2, stale_s=60).start()
        schedulers.append(scheduler)
        started = time.monotonic()
        other = store.submit(tiny_config())                  # waits for the lock, does not fail
        waited = time.monotonic() - started
        assert cancel(store, other) == "cancelled"
        assert waited < 20, f"submit waited {waited:.0f} s"
        run = wait_for(lambda: (r := store.get(stuck)).finished and r, 10, "the stuck run to end")
        assert run.status == "failed" and f"pid {holder.pid}" in run.error and "store locked" in run.error
        wait_for(lambda: pid_gone(holder.pid), 10, "the holder to be gone")
    finally:
        holder.kill()
        holder.wait()


def test_deleting_the_lock_file_does_not_let_a_second_scheduler_in(store, schedulers):
    first, second = Scheduler(store), Scheduler(store)
    schedulers.extend([first, second])
    first.tick()
    assert first.active
    (store.home / "scheduler.lock").unlink()
    second.tick()
    assert not second.active and "another scheduler" in second.message
    first.stop()
    second.tick()
    assert second.active


def test_a_store_deleted_under_the_scheduler_is_said_once_and_never_recreated(store, schedulers, caplog):
    store.submit(tiny_config(), status="cancelled")
    scheduler = Scheduler(store, poll_s=0.05)
    schedulers.append(scheduler)
    scheduler.tick()
    for suffix in ("", "-wal", "-shm"):
        (store.home / f"optlab.db{suffix}").unlink(missing_ok=True)
    caplog.clear()
    for _ in range(10):
        scheduler.tick()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and not errors[0].exc_info and str(store.path) in errors[0].getMessage()
    assert str(store.path) in scheduler.message and not store.path.exists()
    with pytest.raises(StoreMissing):
        scheduler.run_until_idle(timeout_s=1)


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_foreground_run_whose_process_dies_is_failed_by_the_running_scheduler(store, schedulers):
    scheduler = Scheduler(store, poll_s=0.2)
    schedulers.append(scheduler)
    scheduler.tick()
    pid = dead_pid()
    run_id = store.submit(tiny_config(), status="running", worker_pid=pid)   # its `optlab run` was killed
    scheduler.tick()
    run = store.get(run_id)
    assert run.status == "failed" and f"its process (pid {pid}) was gone" in run.error


def test_cancelling_a_run_whose_process_is_gone_cancels_it_at_once(store, capsys):
    pid = dead_pid()
    run_id = store.submit(tiny_config(), status="running", worker_pid=pid)
    assert run_cli("cancel", str(run_id)) == 0
    assert f"run #{run_id} cancelled" in capsys.readouterr().out
    run = store.get(run_id)
    assert run.status == "cancelled" and f"pid {pid}) was gone" in run.error
    store.delete(run_id)   # a finished run can be deleted
    assert store.get(run_id) is None


def test_a_foreground_run_heartbeats_and_stops_when_cancelled(store):
    argv = [sys.executable, "-m", "optlab", "run", *CLI_RUN[:-1], "--limit-train", "4096", "--epochs", "3"]
    foreground = subprocess.Popen(argv, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run = wait_for(lambda: (runs := store.list()) and training(store, runs[0].id), 90, "training to start")
        assert run.worker_pid == foreground.pid and time.time() - run.heartbeat_at < 3
        assert cancel(store, run.id) == "cancelled"
        out, err = foreground.communicate(timeout=60)
    finally:
        foreground.kill()
    assert foreground.returncode == 1 and "Traceback" not in err, err[-2000:]
    run = store.get(run.id)
    assert run.status == "cancelled" and run.error == "cancelled on request"


# -- slots for data-parallel runs (no workers: the spawn is recorded) ---------------------------------------
def recording(scheduler):
    """The scheduler with its spawn replaced by a note of the run and its slots: no worker starts."""
    from optlab.scheduler import Job
    started = []

    def spawn(run, slots):
        started.append((run.id, slots))
        scheduler.jobs[run.id] = Job(run.id, None, slots, needs=len(slots))

    scheduler._spawn = spawn
    return started


def cores() -> int:
    return len(os.sched_getaffinity(0))


def test_a_data_parallel_run_gets_the_gpus_of_all_its_slots_in_one_worker_environment(store, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    scheduler = Scheduler(store, slots=2)
    scheduler.gpus = ["0", "1"]
    assert scheduler.slots_needed({"gpus": 2}) == 2 and scheduler.slots_needed({}) == 1   # no knob stored: one
    both, one = scheduler.worker_env((0, 1)), scheduler.worker_env((1,))
    assert both["CUDA_VISIBLE_DEVICES"] == "0,1" and one["CUDA_VISIBLE_DEVICES"] == "1"
    assert int(both["OMP_NUM_THREADS"]) == max(1, cores()) and int(one["OMP_NUM_THREADS"]) == max(1, cores() // 2)


def test_on_a_cpu_only_machine_a_multi_rank_run_takes_every_slot_and_all_the_cores(store, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    scheduler = Scheduler(store, slots=3)
    scheduler.gpus = []
    assert scheduler.slots_needed({"gpus": 2}) == 3 and scheduler.slots_needed({"gpus": 1}) == 1
    env = scheduler.worker_env((0, 1, 2))
    assert env["OMP_NUM_THREADS"] == str(cores())   # its ranks divide them between themselves


def test_the_head_of_the_queue_waits_for_all_its_slots_and_the_runs_behind_it_wait_too(store):
    scheduler = Scheduler(store, slots=2)
    scheduler.gpus = ["0", "1"]
    started = recording(scheduler)
    small = store.submit(tiny_config(), user="ann")
    big = store.submit(tiny_config(gpus=2), user="bob")
    behind = store.submit(tiny_config(), user="cy")
    scheduler._fill()
    assert started == [(small, (0,))]     # one slot free, but the head (big) needs two: nobody jumps ahead
    assert store.get(big).status == "queued" and store.get(behind).status == "queued"
    scheduler._fill()
    assert len(started) == 1
    scheduler.jobs.pop(small)
    store.finish(small, "done")
    scheduler._fill()
    assert started[1] == (big, (0, 1)) and store.get(behind).status == "queued"   # all its slots at once


def test_two_slots_on_one_gpu_are_not_two_gpus_for_a_data_parallel_run(store):
    scheduler = Scheduler(store, slots=2)
    scheduler.gpus = ["0"]            # two runs share the one GPU; a 2-rank run needs two GPUs
    started = recording(scheduler)
    never = store.submit(tiny_config(gpus=2), user="ann")
    after = store.submit(tiny_config(), user="bob")
    scheduler._fill()
    run = store.get(never)
    assert run.status == "failed" and run.started_at is None
    assert "needs 2 slots" in run.error and "has 1" in run.error and "could never start" in run.error
    assert started == [(after, (0,))]  # and the queue went on


def test_a_run_needing_more_slots_than_the_scheduler_has_fails_at_once_and_the_queue_goes_on(store):
    scheduler = Scheduler(store, slots=1)
    scheduler.gpus = ["0", "1"]
    started = recording(scheduler)
    never = store.submit(tiny_config(gpus=2), user="ann")
    after = store.submit(tiny_config(), user="ann")
    scheduler._fill()
    run = store.get(never)
    assert run.status == "failed" and "needs 2 slots" in run.error and "has 1" in run.error
    assert [e["message"] for e in store.events(never)] == [run.error]
    assert started == [(after, (0,))]


def test_an_adopted_data_parallel_run_takes_the_slots_its_config_needs(store, schedulers):
    running = store.submit(tiny_config(gpus=2), status="running", worker_pid=os.getpid())   # a foreground run
    queued = store.submit(tiny_config())
    scheduler = Scheduler(store, slots=2)
    schedulers.append(scheduler)
    scheduler.gpus = ["0", "1"]
    started = recording(scheduler)
    scheduler.tick()
    assert scheduler.jobs[running].slots == (0, 1) and started == []
    assert store.get(queued).status == "queued"
    cancel(store, queued)


# -- runs on a Ray cluster are judged by their heartbeat, not by a pid here ----------------------------------
def test_a_run_on_a_ray_cluster_is_judged_by_its_heartbeat_not_by_a_local_pid(store, schedulers):
    from optlab.scheduler import gone_reason
    remote = store.submit(tiny_config(), status="running", worker_pid=dead_pid())   # a pid on another node
    store.update(remote, cluster="10.0.0.1:6379")
    assert gone_reason(store.get(remote)) is None
    scheduler = Scheduler(store, slots=1)
    schedulers.append(scheduler)
    started = recording(scheduler)
    scheduler.tick()
    assert store.get(remote).status == "running" and scheduler.jobs[remote].on_ray   # adopted, by its heartbeat
    assert cancel(store, remote) == "cancelled" and store.get(remote).status == "running"   # asked, not forced
    store.update(remote, heartbeat_at=time.time() - 60)
    assert "sent no heartbeat for 60 s" in gone_reason(store.get(remote))
    scheduler.tick()
    run = store.get(remote)
    assert run.status == "cancelled" and "its worker on the Ray cluster at 10.0.0.1:6379 sent no heartbeat" in run.error
    assert remote not in scheduler.jobs and started == []
