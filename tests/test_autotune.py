"""The accuracy-budget autotuner: Optuna's study in the store's own file, every trial an ordinary run,
the budget never broken by the winner, the winner confirmed against the runner-up on repeats; the
scheduler drives it, and the CLI and the Tune page start and show it."""
import json
import sqlite3

import pytest

from conftest import open_page, tiny_config
from optlab import autotune, charts
from optlab.cli import main
from optlab.config import ConfigError, RunConfig
from optlab.device import DeviceInfo
from optlab.runner import execute
from optlab.store import Store

CPU = DeviceInfo("cpu", "x86_64 (2 threads)")
H100 = DeviceInfo("cuda", "NVIDIA H100", capability=(9, 0), supports_bf16=True, supports_fp16=True)
REFERENCE = dict(limit_train=256, limit_test=128, batch_size=16, image_size=8)


def on_cpu(cfg):
    return CPU


def drive(store, tuning_id, limit=40):
    """The scheduler's part, in this process: advance the tuning, run what it queued, again."""
    for _ in range(limit):
        autotune.advance(store, tuning_id, device_for=on_cpu)
        queued = store.list(status="queued", newest_first=False)
        if not queued:
            assert autotune.get(store, tuning_id).state not in autotune.ACTIVE
            return
        for run in queued:
            execute(store, run.id)
    raise AssertionError("the tuning did not end")


# -- the search space (pure) ------------------------------------------------------------------------
def test_the_choices_follow_the_device_and_leave_steps_to_measure():
    ref = RunConfig(batch_size=128, limit_train=8192)
    assert autotune.KNOBS.get("precision").choices(ref, CPU) == ["fp32", "bf16"]
    assert autotune.KNOBS.get("precision").choices(ref, H100) == ["fp32", "tf32", "bf16"]
    assert autotune.KNOBS.get("batch_size").choices(ref, CPU) == [64, 128, 256, 512]
    assert autotune.KNOBS.get("batch_size").choices(RunConfig(batch_size=128, limit_train=4096), CPU) == [64, 128, 256]
    cpu_steps = autotune.KNOBS.get("compression").choices(ref, CPU)
    assert "none" in cpu_steps and "int8 dynamic" in cpu_steps and "fp16 weights" not in cpu_steps
    cfg = autotune.KNOBS.get("compression").apply(ref.replace(compress=[{"method": "benchmark", "repeats": 5}]),
                                                  "prune 50%")
    assert cfg.compress == [{"method": "benchmark", "repeats": 5}, {"method": "prune_unstructured", "sparsity": 0.5}]


def test_a_trial_over_the_budget_is_never_the_winner_however_fast():
    trials = [{"number": 0, "speed": 900.0, "within_budget": False},
              {"number": 1, "speed": 500.0, "within_budget": True},
              {"number": 2, "speed": 700.0, "within_budget": True},
              {"number": 3, "speed": None, "within_budget": None}]
    assert [t["number"] for t in autotune.ranking(trials, autotune.OBJECTIVES.get("training"))] == [2, 1]
    latency = [dict(t, speed=s) for t, s in zip(trials, (1.0, 3.0, 2.0, None))]
    assert [t["number"] for t in autotune.ranking(latency, autotune.OBJECTIVES.get("inference"))] == [2, 1]


@pytest.mark.parametrize("changes, message", [
    (dict(objective="fastest"), "objective 'fastest' is not one of: training, inference"),
    (dict(knobs=["colour"]), "unknown knob"),
    (dict(knobs=["precision", "compression"]), "compression steps do not change training throughput"),
    (dict(budget_points=-1), "accuracy budget is 0..100 points"),
    (dict(trials=0), "trials must be 1..40"),
    (dict(minutes=0), "minutes must be more than 0"),
    (dict(confirm=11), "confirmation runs must be 0..10"),
])
def test_a_bad_spec_is_refused_with_what_is_allowed(changes, message):
    with pytest.raises(ConfigError, match=message):
        autotune.Spec(**{"reference": 1, "budget_points": 1.0, **changes}).check()


def test_a_tuning_needs_a_finished_reference_and_records_nothing_otherwise(store):
    with pytest.raises(ConfigError, match="no run #7"):
        autotune.start(store, autotune.Spec(reference=7, budget_points=1.0), device_for=on_cpu)
    queued = store.submit(tiny_config())
    with pytest.raises(ConfigError, match=f"run #{queued} has not finished"):
        autotune.start(store, autotune.Spec(reference=queued, budget_points=1.0), device_for=on_cpu)
    assert autotune.tunings(store) == []


# -- a tuning that ran ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A finished reference run and a three-trial, two-knob tuning of it, confirmed twice each."""
    home = tmp_path_factory.mktemp("tune-home")
    store = Store(home)
    ref = store.submit(tiny_config(**REFERENCE), user="ada")
    execute(store, ref)
    spec = autotune.Spec(reference=ref, budget_points=50.0, knobs=["channels_last", "pipeline"], trials=3, confirm=2)
    tuning = autotune.start(store, spec, user="ada", device_for=on_cpu)
    drive(store, tuning.id)
    return home, ref, tuning.id


def test_every_trial_is_an_ordinary_run_of_the_tuning_and_optuna_lives_in_the_same_file(tuned):
    home, ref, tuning_id = tuned
    store = Store(home)
    runs = store.list(sweep_id=tuning_id, newest_first=False)
    assert [r.label.split(" · ")[0] for r in runs[:3]] == ["trial 1", "trial 2", "trial 3"]
    assert all(r.status == "done" and r.user == "ada" and r.config["limit_train"] == 256 for r in runs), \
        [(r.id, r.error) for r in runs]
    assert [r.label.split(" · ")[0] for r in runs[3:]] == ["confirm winner", "confirm runner-up"] * 2
    with sqlite3.connect(home / "optlab.db") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "tunings", "studies", "trials"} <= tables
    assert autotune.get(store, tuning_id).state == "done"


def test_the_result_has_the_winner_within_budget_the_front_and_a_verdict_on_repeats(tuned):
    import optuna
    home, ref, tuning_id = tuned
    store = Store(home)
    out = autotune.result(store, tuning_id)
    trials = out["trials"]
    assert len(trials) == 3 and all(t["state"] == "complete" for t in trials)
    floor = out["reference"]["accuracy"] - 0.5
    assert out["reference"]["floor"] == pytest.approx(floor)
    for t in trials:
        assert t["within_budget"] == (t["accuracy"] >= floor)
        assert t["speed"] == store.get(t["run_id"]).summary["train_images_per_s"]
    kept = [t for t in trials if t["within_budget"]]
    assert out["winner"]["speed"] == max(t["speed"] for t in kept)
    assert set(out["pareto"]) <= {t["number"] for t in trials} and out["pareto"]
    # Optuna was told each trial's accuracy shortfall as its constraint (<= 0: within the budget)
    study = optuna.load_study(study_name=tuning_id, storage=f"sqlite:///{home / 'optlab.db'}")
    for frozen, t in zip(study.trials, trials):
        assert frozen.constraints == {"accuracy_shortfall": pytest.approx(floor - t["accuracy"])}
    c = out["confidence"]
    assert c["basis"] == "between repeats" and c["repeats"] == [2, 2]
    assert c["verdict"] in ("better", "worse", "within noise") and c["text"].startswith(f"{c['ratio']:.2f}x (")


def test_the_chart_marks_the_budget_the_winner_and_the_reference(tuned):
    home, _, tuning_id = tuned
    out = autotune.result(Store(home), tuning_id)
    fig = charts.tuning_scatter(out)
    names = [trace.name for trace in fig.data]
    assert "within the budget" in names and f"reference: run #{out['reference']['run_id']}" in names
    assert any(n.startswith("winner: trial ") for n in names)
    assert any(shape.y0 == pytest.approx(100 * out["reference"]["floor"]) for shape in fig.layout.shapes)
    assert "CPU" in fig.layout.title.subtitle.text


def test_tune_show_prints_the_trials_and_the_verdict(tuned, monkeypatch, capsys):
    home, _, tuning_id = tuned
    monkeypatch.setenv("OPTLAB_HOME", str(home))
    assert main(["tune", "--show", tuning_id]) == 0
    text = capsys.readouterr().out
    assert "winner: trial" in text and "against the runner-up:" in text and "(between repeats)" in text
    assert main(["tune", "--show", tuning_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tuning"]["state"] == "done"
    assert main(["tune", "--list"]) == 0 and tuning_id in capsys.readouterr().out
    assert main(["tune", "--show", "tune-nope"]) == 2


def test_the_tune_page_draws_a_finished_tuning(tuned, monkeypatch):
    home, _, tuning_id = tuned
    at = open_page(monkeypatch, home, "tune", tune=tuning_id)
    assert any("Winner: trial" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 1


# -- queueing -----------------------------------------------------------------------------------------------
def test_the_cli_starts_a_tuning_that_queues_its_first_trial_and_stops_it(tuned, tmp_path, monkeypatch, capsys):
    import shutil
    home = tmp_path / "copy"
    shutil.copytree(tuned[0], home)
    monkeypatch.setenv("OPTLAB_HOME", str(home))
    assert main(["tune", str(tuned[1]), "--budget", "1", "--knobs", "channels_last", "--trials", "2",
                 "--user", "bo"]) == 0
    tuning_id = capsys.readouterr().out.strip()
    store = Store(home)
    (trial,) = store.list(sweep_id=tuning_id)
    assert trial.status == "queued" and trial.user == "bo" and trial.label.startswith("trial 1 · ")
    assert main(["tune", "--stop", tuning_id]) == 0
    assert store.get(trial.id).status == "cancelled" and autotune.get(store, tuning_id).state == "stopped"
    assert main(["tune", str(tuned[1]), "--budget", "1", "--knobs", "colour"]) == 2
    assert "unknown knob(s) colour" in capsys.readouterr().err
    assert main(["tune", "--budget", "1"]) == 2


def test_the_scheduler_asks_for_the_next_trial_until_the_space_is_exhausted(tmp_path):
    from optlab.scheduler import Scheduler
    store = Store(tmp_path / "sched")
    ref = store.submit(tiny_config(**REFERENCE))
    execute(store, ref)
    tuning = autotune.start(store, autotune.Spec(reference=ref, budget_points=100.0, knobs=["channels_last"],
                                                 trials=3, confirm=0), device_for=on_cpu)
    assert len(store.list(sweep_id=tuning.id)) == 1            # one at a time (parallel=1)
    assert Scheduler(store, slots=1, poll_s=0.2).run_until_idle(timeout_s=240)
    runs = store.list(sweep_id=tuning.id, newest_first=False)
    # channels_last has two settings: each is run once, a setting proposed again is not run again
    assert [r.status for r in runs] == ["done", "done"], [r.error for r in runs]
    assert sorted(r.config["channels_last"] for r in runs) == [False, True]
    assert [t["index"] for t in autotune.result(store, tuning.id)["trials"]] == [1, 2]
    done = autotune.get(store, tuning.id)
    assert done.state == "done" and done.note == "no confirmation runs were asked for"
    assert autotune.result(store, tuning.id)["winner"] is not None


def test_the_reference_is_the_unmodified_model_for_inference_and_the_run_for_training():
    from types import SimpleNamespace
    run = SimpleNamespace(summary={"train_images_per_s": 300.0, "test_accuracy": 0.8, "throughput": {"ci95": [290, 310]},
                                   "variants": [{"name": "baseline", "latency_ms_p50": 2.0, "test_accuracy": 0.8},
                                                {"name": "int8 dynamic", "latency_ms_p50": 1.0, "test_accuracy": 0.7}]})
    training = autotune.reference(run, autotune.Spec(reference=1, budget_points=1.0))
    assert (training["speed"], training["accuracy"], training["floor"]) == (300.0, 0.8, pytest.approx(0.79))
    inference = autotune.reference(run, autotune.Spec(reference=1, budget_points=1.0, objective="inference"))
    assert (inference["speed"], inference["accuracy"]) == (2.0, 0.8)          # not the int8 variant
    plain = SimpleNamespace(summary={"test_accuracy": 0.8})                    # trained without a compression phase
    assert autotune.reference(plain, autotune.Spec(reference=1, budget_points=2.0, objective="inference"))["floor"] \
        == pytest.approx(0.78)
