"""Repeats: the same config run N times as real runs in one group, summarised with the spread;
repeats of a sweep queued interleaved."""
import pytest

from conftest import tiny_config
from optlab import repeats, stats, views
from optlab.advisor import Advice, try_advice
from optlab.cli import build_parser, config_from_args
from optlab.config import MAX_REPEATS, ConfigError, RunConfig
from optlab.device import DeviceInfo
from optlab.runner import execute
from optlab.store import Run
from optlab.sweeps import MAX_RUNS, expand, submit_sweep

CPU = DeviceInfo(kind="cpu", name="test CPU")


# -- the knob ----------------------------------------------------------------------------------------
def test_repeats_round_trip_through_json_the_form_and_the_cli():
    cfg = tiny_config(repeats=3)
    assert RunConfig.from_json(cfg.to_json()).repeats == 3
    assert views.config_from_form(views.form_values(cfg)) == cfg
    args = build_parser().parse_args(["run", "--device", "cpu", "--repeats", "4"])
    assert config_from_args(args).repeats == 4
    assert RunConfig.from_dict({"model": "speednet"}).repeats == 1     # configs stored before the knob


@pytest.mark.parametrize("value", [0, MAX_REPEATS + 1])
def test_repeats_outside_1_to_20_are_refused_with_what_is_allowed(value):
    with pytest.raises(ConfigError, match=f"repeats must be a whole number 1..{MAX_REPEATS}"):
        tiny_config(repeats=value).validate()


@pytest.mark.parametrize("value", ["3", 2.5, True])
def test_repeats_of_the_wrong_type_are_refused_with_what_it_was(value):
    with pytest.raises(ConfigError, match="repeats must be a whole number, not"):
        tiny_config(repeats=value).validate()


def test_repeats_is_not_a_knob_to_sweep_or_compare():
    with pytest.raises(ConfigError, match="cannot be swept"):
        expand(tiny_config(), {"repeats": [1, 2]})
    a, b = (Run(id=i, status="done", created_at=0.0, config=tiny_config(repeats=i).to_dict()) for i in (1, 3))
    assert views.varying_knobs([a, b]) == []


def test_a_sweep_counts_its_repeats_against_the_run_limit():
    with pytest.raises(ConfigError, match=r"\(2 combinations x 25 repeats\)"):
        expand(tiny_config(repeats=25), {"precision": ["fp32", "bf16"]})
    assert MAX_RUNS < 2 * 25


# -- queueing ----------------------------------------------------------------------------------------
def test_repeats_of_a_sweep_are_queued_interleaved_and_handed_out_in_that_order(store):
    combos = expand(tiny_config(repeats=3), {"precision": ["fp32", "bf16"]})
    sweep_id, ids = submit_sweep(store, combos, user="ada", device_for=lambda cfg: CPU)
    runs = [store.get(i) for i in ids]
    assert [(r.config["precision"], r.repeat_index) for r in runs] == [
        ("fp32", 1), ("bf16", 1), ("fp32", 2), ("bf16", 2), ("fp32", 3), ("bf16", 3)]
    fp32, bf16 = runs[0].repeat_group, runs[1].repeat_group
    assert fp32 != bf16 and [r.repeat_group for r in runs] == [fp32, bf16] * 3
    assert {r.sweep_id for r in runs} == {sweep_id}
    assert [r.id for r in store.fair_queue()] == ids                   # the scheduler's order: A B A B A B


def test_interleaving_holds_across_submitters(store):
    a = submit_sweep(store, expand(tiny_config(repeats=2), {"precision": ["fp32", "bf16"]}), user="ada")[1]
    b = repeats.submit(store, tiny_config(repeats=2), user="bob")
    # round-robin across people; each person's runs still alternate their settings
    assert [r.id for r in store.fair_queue()] == [a[0], b[0], a[1], b[1], a[2], a[3]]


def test_a_config_without_repeats_is_a_plain_run(store):
    [run_id] = repeats.submit(store, tiny_config())
    run = store.get(run_id)
    assert run.repeat_group is None and run.repeat_index is None
    assert repeats.members(store, run) == [run]


# -- summarising -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_repeats(tmp_path_factory):
    """One tiny config run three times for real on a Fashion-MNIST slice."""
    from optlab.store import Store
    store = Store(tmp_path_factory.mktemp("repeats"))
    # a target any trained model reaches, so every repeat has a time to accuracy
    ids = repeats.submit(store, tiny_config(limit_train=128, limit_test=64, batch_size=32, repeats=3,
                                            target_accuracy=0.01))
    for run_id in ids:
        execute(store, run_id)
    return store, [store.get(i) for i in ids]


def test_each_repeat_is_a_real_run_and_the_group_summary_carries_every_repeat(three_repeats):
    store, runs = three_repeats
    assert [r.status for r in runs] == ["done"] * 3, [r.error for r in runs]
    assert len({r.repeat_group for r in runs}) == 1 and [r.repeat_index for r in runs] == [1, 2, 3]
    assert repeats.members(store, runs[1]) == runs
    summary = repeats.group_summary(runs)
    assert summary["planned"] == summary["done"] == 3 and summary["ids"] == [r.id for r in runs]
    for key in ("train_images_per_s", "step_ms_p50", "peak_memory_mb", "test_accuracy", "time_to_target_s"):
        per_run = [r.summary[key] for r in runs]
        expected = stats.summarize_repeats(per_run)
        figure = summary["figures"][key]
        assert figure["values"] == per_run, key
        assert figure["value"] == pytest.approx(expected["mean"]) and figure["basis"] == repeats.BETWEEN
        assert figure["ci95"] == pytest.approx(expected["ci95"])


def test_a_single_run_has_only_its_within_run_throughput_interval(three_repeats):
    _, runs = three_repeats
    one = repeats.unit_figures([runs[0]])["figures"]
    assert one["train_images_per_s"]["basis"] == repeats.WITHIN
    assert one["train_images_per_s"]["ci95"] == pytest.approx(runs[0].summary["throughput"]["ci95"])
    assert one["peak_memory_mb"]["ci95"] is None and one["peak_memory_mb"]["basis"] == repeats.NONE


def done_run(run_id, group="rep-x", **summary):
    return Run(id=run_id, status="done", created_at=0.0, config=tiny_config(repeats=5).to_dict(),
               summary=summary, repeat_group=group, repeat_index=run_id)


def test_time_to_accuracy_from_five_repeats_is_the_mlperf_mean():
    times = [10.0, 11.0, 12.0, 13.0, 40.0]          # one repeat was disturbed
    unit = repeats.unit_figures([done_run(i + 1, time_to_target_s=t) for i, t in enumerate(times)])
    figure = unit["figures"]["time_to_target_s"]
    assert figure["mlperf"] and figure["value"] == pytest.approx(12.0)   # fastest and slowest left out
    four = repeats.unit_figures([done_run(i + 1, time_to_target_s=t) for i, t in enumerate(times[:4])])
    assert not four["figures"]["time_to_target_s"]["mlperf"]
    assert four["figures"]["time_to_target_s"]["value"] == pytest.approx(11.5)


def test_repeats_that_never_reached_the_target_are_kept_as_missing():
    unit = repeats.unit_figures([done_run(1, time_to_target_s=10.0), done_run(2, time_to_target_s=None),
                                 done_run(3, time_to_target_s=12.0)])
    figure = unit["figures"]["time_to_target_s"]
    assert figure["values"] == [10.0, None, 12.0] and figure["n"] == 2 and figure["value"] == pytest.approx(11.0)


def test_an_old_run_without_step_times_has_no_interval_and_says_why():
    old = Run(id=4, status="done", created_at=0.0, config=tiny_config().to_dict(),
              summary={"train_images_per_s": 300.0, "steps": 40, "steady_steps": 30})
    unit = repeats.unit_figures([old])
    figure = unit["figures"]["train_images_per_s"]
    assert figure["ci95"] is None and figure["why_none"] == repeats.OLD_RUN and unit["quality"] == "unknown"
    new = repeats.unit_figures([done_run(5, group=None, train_images_per_s=400.0,
                                         throughput={"ci95": (390.0, 410.0), "quality": "solid"})])
    assert repeats.verdict(new, unit)["verdict"] == "no interval"


def test_a_thin_repeat_marks_its_group_thin():
    thin = {"quality": "thin", "why": "4 steady steps (fewer than 10)", "ci95": None}
    unit = repeats.unit_figures([done_run(1, train_images_per_s=100.0, throughput={"quality": "solid"}),
                                 done_run(2, train_images_per_s=110.0, throughput=thin)])
    assert unit["quality"] == "thin" and unit["thin"] == [(2, thin["why"])]


# -- the advisor keeps the parent's repeats --------------------------------------------------------------
def test_try_it_queues_as_many_repeats_as_the_parent_had(store):
    [parent_id, *_] = repeats.submit(store, tiny_config(repeats=2))
    store.finish(parent_id, "done", summary={"train_images_per_s": 100.0, "device": "cpu"})
    advice = Advice("input_bound", "Feed the model faster", "why", {}, {"pipeline": "gpu"}, "up to x1.5", 1.5,
                    "train_images_per_s", "computed from this run")
    assert advice.expected_range == (1.0, 1.5)
    first = try_advice(store, store.get(parent_id), advice)
    children = repeats.members(store, store.get(first))
    assert len(children) == 2 and {c.config["pipeline"] for c in children} == {"gpu"}
    assert all(c.parent_id == parent_id and store.metrics(c.id, "advice") for c in children)


def test_single_runs_never_call_a_difference_beyond_noise_on_within_run_intervals_alone():
    def single(run_id, value, ci):
        return done_run(run_id, group=None, train_images_per_s=value, throughput={"ci95": ci, "quality": "solid"})
    rows = views.figure_rows([single(1, 100.0, (98.0, 102.0)), single(2, 150.0, (147.0, 153.0))])
    [v] = views.speed_verdicts(rows, rows[0])
    assert v["verdict"] == "better" and v["basis"] == repeats.WITHIN
    assert "run-to-run noise was not measured" in v["text"] and "beyond noise" not in v["text"]
