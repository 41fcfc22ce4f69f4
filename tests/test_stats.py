"""Spread and noise arithmetic on constructed step-time lists: a real difference is called a
difference, two draws from one distribution are called noise, and thin measurements say so."""
import random

import pytest

from optlab import stats

IMAGES = 64          # images per step
STEPS = 40           # steady steps per run


def draw_steps(rng: random.Random, median_ms: float, n: int = STEPS, spread: float = 0.15,
               slow_share: float = 0.1) -> list[float]:
    """Step times as a shared machine gives them: log-normal around a median, plus a few steps
    slowed 3-6x by someone else's work."""
    steps = [rng.lognormvariate(0, spread) * median_ms for _ in range(n)]
    return [ms * rng.uniform(3, 6) if rng.random() < slow_share else ms for ms in steps]


def figures(steps):
    return stats.throughput_figures(steps, [IMAGES] * len(steps))


def test_a_true_2x_difference_is_called_a_difference_every_time():
    for seed in range(30):
        rng = random.Random(seed)
        slow, fast = figures(draw_steps(rng, 40.0)), figures(draw_steps(rng, 20.0))
        result = stats.compare(fast, slow)
        assert result["verdict"] == "better", (seed, result)
        lo, hi = result["ci95"]
        assert lo > 1 and 1.6 < result["ratio"] < 2.5
        assert stats.compare(slow, fast)["verdict"] == "worse"


def test_two_draws_from_one_distribution_are_called_noise():
    calls = []
    for seed in range(60):
        rng = random.Random(1000 + seed)
        a, b = figures(draw_steps(rng, 30.0)), figures(draw_steps(rng, 30.0))
        calls.append(stats.compare(a, b)["verdict"])
    # a 95 % interval of the ratio plus the 3 % dead band: false alarms must be rare
    assert calls.count("within noise") >= 0.9 * len(calls), calls


def test_a_few_slow_steps_do_not_swing_the_headline_but_do_swing_the_mean_rate():
    steady = [20.0] * 30
    disturbed = steady[:27] + [200.0] * 3
    clean, hit = figures(steady), figures(disturbed)
    assert hit["value"] == pytest.approx(clean["value"])                  # the median per-step rate
    assert hit["mean_rate"] < 0.6 * clean["mean_rate"]                    # images over summed time
    assert hit["p10"] < hit["value"] and hit["ci95"][0] <= hit["value"] <= hit["ci95"][1]


@pytest.mark.parametrize("steps, why", [
    ([100.0] * (stats.MIN_STEADY_STEPS - 1), "fewer than 10"),
    ([20.0] * 20, "less than 0.5 s"),                                     # 20 steps of 20 ms = 0.4 s
])
def test_too_few_steps_or_too_little_time_is_thin_and_says_why(steps, why):
    f = figures(steps)
    assert f["quality"] == "thin" and why in f["why"]


def test_enough_steps_and_time_is_solid():
    f = figures([50.0] * stats.MIN_STEADY_STEPS)                          # 10 steps, 0.5 s
    assert f["quality"] == "solid" and f["why"] is None


def test_no_steady_steps_gives_no_figure():
    f = figures([])
    assert f["value"] is None and f["quality"] == "thin" and "no steady steps" in f["why"]
    assert stats.compare(f, figures([20.0] * 30))["verdict"] == "no figure"


def test_repeats_give_a_t_interval_and_from_five_the_mlperf_mean():
    three = stats.summarize_repeats([10.0, 12.0, 14.0])
    assert three["value"] == pytest.approx(12.0) and three["n"] == 3
    half = 4.303 * 2.0 / 3 ** 0.5                                         # t(2) * sd / sqrt(n)
    assert three["ci95"] == pytest.approx((12.0 - half, 12.0 + half))
    five = stats.summarize_repeats([10.0, 11.0, 12.0, 13.0, 30.0])
    assert five["mlperf_mean"] == pytest.approx(12.0) and five["value"] == pytest.approx(12.0)
    assert five["mean"] == pytest.approx(15.2)
    partial = stats.summarize_repeats([10.0, None, 14.0])                 # a repeat that never reached it
    assert partial["n"] == 2 and partial["values"] == [10.0, None, 14.0]


def test_repeated_runs_separate_a_real_effect_and_not_noise():
    rng = random.Random(7)

    def runs(median_ms):      # five repeats; each run's own pace wanders by a few percent
        return [figures(draw_steps(rng, median_ms * rng.uniform(0.95, 1.05)))["value"] for _ in range(5)]
    base, same, faster = (stats.summarize_repeats(runs(m)) for m in (30.0, 30.0, 20.0))
    assert stats.compare(same, base)["verdict"] == "within noise"
    assert stats.compare(faster, base)["verdict"] == "better"


def test_the_verdict_sentence_names_the_other_side():
    a = {"value": 100.0, "ci95": (90.0, 110.0)}
    b = {"value": 101.0, "ci95": (91.0, 111.0)}
    text = stats.compare(a, b, against="run #4")["text"]
    assert "not distinguishable from run #4 at this spread" in text
    assert "no interval" in stats.compare({"value": 100.0, "ci95": None}, b)["text"]


def test_ratios_inside_the_dead_band_are_never_a_difference():
    # perfectly pinned figures 2 % apart: real, but below MIN_EFFECT
    assert stats.verdict(1.02, 1.019, 1.021) == "within noise"
    assert stats.verdict(1.05, 1.04, 1.06) == "better"
    assert stats.verdict(0.95, 0.94, 0.96, higher_is_better=False) == "better"
    assert stats.verdict(1.5, None, None) == "no interval"


def test_a_side_whose_interval_reaches_zero_bounds_no_ratio():
    # two wildly different repeats: the t interval of their mean starts at zero images/s
    wide = stats.summarize_repeats([5.0, 50.0])
    assert wide["ci95"][0] == 0.0
    result = stats.compare({"value": 30.0, "ci95": (29.0, 31.0)}, wide)
    assert result["ci95"] == (0.0, float("inf")) and result["verdict"] == "within noise"
    assert "unbounded" in result["text"]
