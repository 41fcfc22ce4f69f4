"""measurement_warnings: one sentence per reason to doubt a run's figures, none without a reason."""
from optlab.caveats import measurement_warnings

SOLID = {"throughput": {"quality": "solid", "why": None}}


def test_a_clean_run_and_an_old_run_have_no_warnings():
    assert measurement_warnings(SOLID) == []
    assert measurement_warnings({"train_images_per_s": 300.0}) == []   # stored before these figures existed
    assert measurement_warnings(None) == []


def test_a_disturbed_host_is_a_warning_with_its_reason():
    summary = {**SOLID, "host": {"disturbed": True, "reason": "other processes took 40 % of the 2 core(s)"}}
    (warning,) = measurement_warnings(summary)
    assert warning.startswith("CPU disturbed") and "40 %" in warning


def test_gpu_clocks_that_moved_or_were_held_down_are_a_warning():
    clocks = {"sm_clock_mhz_min": 1410, "sm_clock_mhz_max": 1980, "slowdown_reasons": ["software power cap"],
              "clock_moved": True, "disturbed": True}
    (warning,) = measurement_warnings({**SOLID, "gpu_clocks": clocks})
    assert "software power cap" in warning and "1,410" in warning and "1,980" in warning
    steady = dict(clocks, slowdown_reasons=[], clock_moved=False, disturbed=False)
    assert measurement_warnings({**SOLID, "gpu_clocks": steady}) == []


def test_a_thin_throughput_is_a_warning_that_says_why():
    thin = {"throughput": {"quality": "thin", "why": "6 steady steps (fewer than 10)"}}
    (warning,) = measurement_warnings(thin)
    assert warning.startswith("thin measurement") and "6 steady steps" in warning


def test_every_reason_is_listed():
    summary = {"throughput": {"quality": "thin", "why": "x"}, "host": {"disturbed": True, "reason": "y"},
               "gpu_clocks": {"disturbed": True, "slowdown_reasons": ["hardware slowdown"], "clock_moved": False}}
    assert len(measurement_warnings(summary)) == 3
