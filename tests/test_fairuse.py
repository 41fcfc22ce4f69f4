"""Fair use of one device: limits per person, estimates from the store's history, queue places,
the instructor's pause, and a running run stopped when it overruns the budget."""
import shutil
import time

import pytest

from conftest import tiny_config
from optlab import fairuse
from optlab.fairuse import Limits, Refused
from optlab.scheduler import Scheduler
from optlab.store import Store


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A store with one real finished tiny CPU run (speednet, Fashion-MNIST, 512 images)."""
    from optlab.runner import execute
    home = tmp_path_factory.mktemp("history")
    store = Store(home)
    run_id = store.submit(tiny_config(), user="ada")
    execute(store, run_id)
    assert store.get(run_id).status == "done"
    return home


@pytest.fixture
def done_store(history, tmp_path):
    shutil.copytree(history, tmp_path / "h")
    return Store(tmp_path / "h")


def test_without_history_there_is_no_estimate_and_it_says_so(store):
    est = fairuse.estimate(store, tiny_config())
    assert est.seconds is None and "no finished run of speednet" in est.basis


def test_the_estimate_comes_from_finished_runs_of_the_same_model_size_and_device(done_store):
    [run] = done_store.list()
    wall = run.finished_at - run.started_at
    same = fairuse.estimate(done_store, tiny_config())
    assert same.seconds == pytest.approx(wall, rel=1e-6) and "from 1 finished run(s)" in same.basis
    assert fairuse.estimate(done_store, tiny_config(limit_train=1024)).seconds > same.seconds
    assert fairuse.estimate(done_store, tiny_config(model="resnet18")).seconds is None
    assert fairuse.estimate(done_store, tiny_config(image_size=32)).seconds is None


def test_a_run_over_the_budget_is_refused_with_the_reason_and_a_smaller_version(done_store):
    big = tiny_config(limit_train=None, epochs=3)          # the whole training split, three times
    est = fairuse.estimate(done_store, big)
    budget = est.overhead_s + est.per_image_s * 60000 * 0.5
    with pytest.raises(Refused, match="over the room's budget") as refused:
        fairuse.admit(done_store, big, "ada", Limits(budget_s=budget))
    smaller = refused.value.smaller
    assert smaller is not None and smaller.limit_train < 60000
    assert fairuse.estimate(done_store, smaller).seconds <= budget
    fairuse.admit(done_store, smaller, "ada", Limits(budget_s=budget))   # and it is let in


def test_store_submit_refuses_a_run_over_the_per_person_queue_limit(store, monkeypatch):
    monkeypatch.setenv("OPTLAB_MAX_QUEUED", "2")
    store.submit(tiny_config(), user="ada")
    store.submit(tiny_config(), user="ada")
    with pytest.raises(Refused, match="ada has 2 run\\(s\\) waiting and the room allows 2 per person"):
        store.submit(tiny_config(), user="ada")
    store.submit(tiny_config(), user="grace")               # others are not held back by ada
    assert len(store.list(user="ada")) == 2


def test_in_a_workshop_a_run_needs_an_owner(store, monkeypatch):
    monkeypatch.setenv("OPTLAB_WORKSHOP", "1")
    with pytest.raises(Refused, match="join the workshop"):
        store.submit(tiny_config(), user="")


def test_bad_limits_are_a_message(monkeypatch):
    monkeypatch.setenv("OPTLAB_RUN_BUDGET_S", "ten")
    with pytest.raises(fairuse.ConfigError, match="OPTLAB_RUN_BUDGET_S must be a number"):
        Limits.from_env()


def test_queue_places_give_expected_starts_only_where_they_are_known(done_store):
    now = time.time()
    a = done_store.submit(tiny_config(), user="ada")                   # ada was served before
    b = done_store.submit(tiny_config(), user="grace")
    c = done_store.submit(tiny_config(), user="ada")
    d = done_store.submit(tiny_config(model="resnet18"), user="grace")  # no history: unknown length
    places = fairuse.queue_places(done_store, slots=1, now=now)
    assert [p["run"].id for p in places] == [b, a, d, c]   # round-robin, who waited longest first
    est = fairuse.estimate(done_store, tiny_config()).seconds
    assert places[0]["expected_start"] == now
    assert places[1]["expected_start"] == pytest.approx(now + est)
    assert places[2]["expected_start"] == pytest.approx(now + 2 * est)
    assert places[3]["expected_start"] is None             # behind a run of unknown length


def test_a_data_parallel_run_starts_when_all_its_slots_are_free_and_the_runs_behind_it_wait(done_store, monkeypatch):
    now = time.time()
    one = done_store.submit(tiny_config(), user="ada")
    wide = done_store.submit(tiny_config(gpus=2), user="ada")      # every slot on a CPU-only machine
    after = done_store.submit(tiny_config(), user="ada")
    est = fairuse.estimate(done_store, tiny_config()).seconds
    wide_est = fairuse.estimate(done_store, tiny_config(gpus=2)).seconds
    assert est and wide_est
    places = fairuse.queue_places(done_store, slots=2, now=now, on_gpus=False)
    assert [p["run"].id for p in places] == [one, wide, after]
    starts = [p["expected_start"] for p in places]
    assert starts[0] == now                                   # a slot is free now
    assert starts[1] == pytest.approx(now + est)              # both slots: once the first run is done
    assert starts[2] == pytest.approx(now + est + wide_est)   # no overtaking on the slot left free
    on_gpus = fairuse.queue_places(done_store, slots=4, now=now, on_gpus=True)   # 2 of 4 GPUs: all at once
    assert [p["expected_start"] for p in on_gpus] == [now, now, now]
    assert fairuse.queue_places(done_store, slots=1, now=now, on_gpus=True)[1]["expected_start"] is None  # never fits
    monkeypatch.setenv("OPTLAB_RAY_ADDRESS", "head:6379")     # Ray places the runs: no start is known here
    assert [p["expected_start"] for p in fairuse.queue_places(done_store, slots=2, now=now)] == [None] * 3


def test_the_paused_queue_hands_out_nothing_and_has_no_expected_starts(store):
    fairuse.set_paused(store, True, by="Lin")
    run_id = store.submit(tiny_config(), user="ada")
    scheduler = Scheduler(store, slots=1, poll_s=0.05)
    try:
        scheduler.tick()
        assert store.get(run_id).status == "queued" and not scheduler.jobs
        assert fairuse.queue_places(store)[0]["expected_start"] is None
        assert fairuse.paused(store).endswith("Lin")
        fairuse.set_paused(store, False)
        assert fairuse.paused(store) is None
    finally:
        scheduler.stop(kill=True)
    store.request_cancel(run_id)


def test_a_running_run_over_its_budget_is_stopped_with_the_reason(store, monkeypatch):
    monkeypatch.setenv("OPTLAB_RUN_BUDGET_S", "1")
    run_id = store.submit(tiny_config(epochs=50), user="ada")
    scheduler = Scheduler(store, slots=1, poll_s=0.1, grace_s=5)
    try:
        assert scheduler.run_until_idle(timeout_s=90)
    finally:
        scheduler.stop(kill=True)
    run = store.get(run_id)
    assert run.status == "cancelled"
    assert "over this room's budget of 1 s per run" in run.error
    assert any("budget" in e["message"] for e in store.events(run_id))
