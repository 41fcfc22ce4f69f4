"""The worker process: it takes only runs that are its to run, and a failure outside the training
code still leaves the run failed with the reason."""
import os
import subprocess
import sys

from conftest import tiny_config
from optlab.worker import Worker, log_tail


def worker(run_id):
    return subprocess.run([sys.executable, "-m", "optlab.worker", str(run_id)], env=os.environ,
                          capture_output=True, text=True, timeout=60)


def test_a_broken_stored_config_fails_the_run_with_the_exception(store):
    run_id = store.submit(tiny_config())
    store.update(run_id, config={**tiny_config().to_dict(), "bogus": 1})   # e.g. written by a newer OptLab
    result = worker(run_id)
    assert result.returncode == 1
    run = store.get(run_id)
    assert run.status == "failed" and run.error.startswith("ConfigError: unknown setting(s) bogus")
    assert run.worker_pid and run.worker_pid != os.getpid() and run.finished_at


def test_a_worker_leaves_finished_runs_and_runs_held_by_another_worker_alone(store):
    done = store.submit(tiny_config())
    store.finish(done, "done", summary={"x": 1})
    held = store.submit(tiny_config())
    assert store.claim(held, worker_pid=os.getpid())   # another live worker holds it
    for run_id, status in ((done, "done"), (held, "running")):
        result = worker(run_id)
        assert result.returncode == 3 and f"is {status}" in result.stdout
        assert store.get(run_id).status == status
    assert store.get(held).worker_pid == os.getpid()
    assert worker(999).returncode == 2


def test_a_worker_takes_the_run_claimed_for_it_once(store):
    run_id = store.submit(tiny_config())
    assert store.claim(run_id)                      # the scheduler claims, then starts the worker
    me = Worker(store, run_id)
    assert me.take() and store.get(run_id).worker_pid == os.getpid()
    store.update(run_id, worker_pid=os.getpid() + 1)   # someone else's now
    assert not Worker(store, run_id).take()


def test_log_tail_keeps_the_last_lines(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = log_tail(log, lines=3)
    assert tail.splitlines() == ["line 997", "line 998", "line 999"]
    assert log_tail(tmp_path / "missing.log") is None


def test_a_worker_whose_store_is_gone_says_so_in_one_line(store):
    run_id = store.submit(tiny_config())
    for suffix in ("", "-wal", "-shm"):
        (store.home / f"optlab.db{suffix}").unlink(missing_ok=True)
    result = worker(run_id)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "optlab.db is gone" in result.stderr
    assert not store.path.exists()
