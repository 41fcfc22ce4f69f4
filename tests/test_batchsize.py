import pytest

from optlab.batchsize import (CPU_CAP, MIN_STEPS, BatchSizeError, batch_cap, choose_by_throughput, data_cap,
                              search_batch_size, search_by_throughput)


def fits_below(limit):
    def fits(n):
        return float(n) if n <= limit else None
    return fits


def test_search_finds_the_largest_fit_and_keeps_headroom():
    s = search_batch_size(fits_below(700), start=16, cap=4096, headroom=0.9)
    assert 692 <= s.largest_fit <= 700
    assert s.first_failure is not None and s.first_failure > s.largest_fit
    assert s.chosen <= 0.9 * s.largest_fit and s.chosen % 8 == 0
    assert any(not t["fits"] for t in s.trials)


def test_cap_is_honoured_without_headroom_when_nothing_failed():
    s = search_batch_size(fits_below(10**9), start=16, cap=1000)
    assert s.chosen == 1000 and s.first_failure is None
    assert max(t["batch_size"] for t in s.trials) == 1000


def test_start_that_does_not_fit_is_halved():
    s = search_batch_size(fits_below(5), start=16, cap=64)
    assert s.largest_fit == 5 and s.chosen >= 1


def test_nothing_fits_is_an_error():
    with pytest.raises(BatchSizeError):
        search_batch_size(fits_below(0), start=4)


# -- the cap: what the data allows -----------------------------------------------------------------
@pytest.mark.parametrize("images,epochs", [(4096, 1), (4096, 2), (1000, 3), (60000, 1), (800, 7)])
def test_the_data_cap_is_the_largest_batch_that_keeps_enough_steps(images, epochs):
    cap = data_cap(images, epochs)
    assert epochs * (images // cap) >= MIN_STEPS
    assert epochs * (images // (cap + 1)) < MIN_STEPS


def test_a_4096_image_run_is_capped_by_its_data_and_says_so():
    cap, why = batch_cap(4096, 1, 4096, on_gpu=False)
    assert cap == 81 and why == ["4,096 images x 1 epoch(s) keep 50 steps only up to batch 81"]
    assert batch_cap(60000, 2, 4096, on_gpu=False)[0] == CPU_CAP
    assert batch_cap(60000, 2, 4096, on_gpu=True)[0] == 2400


# -- the CPU rule: choose by measured throughput ------------------------------------------------------
def table(rates, fits=None):
    return [{"batch_size": n, "fits": (fits or {}).get(n, True), "peak_memory_mb": float(n), "images_per_s": r}
            for n, r in rates.items()]


def test_the_smallest_batch_within_tolerance_of_the_fastest_is_chosen():
    chosen, why = choose_by_throughput(table({16: 900.0, 32: 1150.0, 64: 1180.0, 128: 1170.0, 256: 1000.0}))
    assert chosen == 32                          # 1150 is within 5 % of 1180, with twice the steps of 64
    assert "within 5%" in why and "batch 64" in why


def test_a_clearly_faster_larger_batch_is_chosen():
    chosen, why = choose_by_throughput(table({16: 400.0, 32: 700.0, 64: 1000.0}))
    assert chosen == 64 and why.startswith("fastest")


def test_batches_that_do_not_fit_are_never_chosen():
    chosen, _ = choose_by_throughput(table({16: 500.0, 32: 900.0, 64: 2000.0}, fits={64: False}))
    assert chosen == 32


def measured(rates):
    calls = []

    def trial(n):
        calls.append(n)
        rate = rates.get(n)
        return None if rate is None else {"peak_memory_mb": float(n), "images_per_s": rate}
    return trial, calls


def test_growing_stops_once_throughput_falls_clearly():
    trial, calls = measured({16: 800.0, 32: 1000.0, 64: 850.0, 128: 1500.0})
    s = search_by_throughput(trial, start=16, cap=1024)
    assert calls == [16, 32, 64]                 # 64 is 15 % slower than 32: larger sizes are not tried
    assert s.chosen == 32 and s.rule == "throughput" and "fastest" in s.reason
    assert [t["images_per_s"] for t in s.trials] == [800.0, 1000.0, 850.0]


def test_growing_stops_at_the_cap_and_at_the_first_size_that_does_not_fit():
    trial, calls = measured({16: 100.0, 32: 200.0, 64: 300.0})
    s = search_by_throughput(trial, start=16, cap=81)
    assert calls == [16, 32, 64] and s.chosen == 64 and s.first_failure is None
    trial, calls = measured({16: 100.0, 32: 200.0})
    s = search_by_throughput(trial, start=16, cap=1024)
    assert calls == [16, 32, 64] and s.chosen == 32 and s.first_failure == 64


def test_a_cap_below_the_start_is_tried_alone():
    trial, calls = measured({5: 50.0})
    assert search_by_throughput(trial, start=16, cap=5).chosen == 5 and calls == [5]


# -- one real run -------------------------------------------------------------------------------------
def test_a_4096_image_cpu_run_keeps_enough_steps_and_records_why(store):
    from conftest import tiny_config
    from optlab.runner import execute
    rid = store.submit(tiny_config(batch_size="auto", limit_train=4096, limit_test=256, pipeline="gpu", image_size=8))
    execute(store, rid)
    run = store.get(rid)
    assert run.status == "done", run.error
    s, search = run.summary, run.summary["batch_size_search"]
    assert search["rule"] == "throughput" and search["cap"] == 81 and search["confirmed"]
    assert s["steps"] >= MIN_STEPS and s["batch_size"] == search["chosen"] <= 81
    assert [t["batch_size"] for t in search["trials"]][:2] == [16, 32]
    assert all(t["fits"] and t["peak_memory_mb"] > 0 and t["images_per_s"] > 0 for t in search["trials"])
    assert search["chosen"] == choose_by_throughput(search["trials"])[0]
    assert s["memory"]["process_peak_method"].startswith("VmHWM")     # reset after the search
    (event,) = [e["message"] for e in store.events(rid) if e["message"].startswith("automatic batch size")]
    assert f"automatic batch size: {search['chosen']} by throughput" in event and "Trials: 16: fits" in event
