"""The pages, driven headlessly with AppTest against real stores.

The Runs and Compare pages are checked on runs that really trained (tiny CPU runs on a real
Fashion-MNIST slice), so their charts draw measured figures. The background scheduler is switched
off here (OPTLAB_SCHEDULER=0): these tests check what the pages queue and show; tests/test_browser.py
runs the whole loop with the scheduler on.
"""
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import tiny_config
from optlab import views
from optlab.config import RunConfig
from optlab.runner import execute
from optlab.store import Run, Store
from optlab.sweeps import expand, submit_sweep

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory):
    """A store holding a two-run precision sweep, one more run, and one run that failed."""
    home = tmp_path_factory.mktemp("trained")
    store = Store(home)
    # 8 px: bf16 has no native kernels on this kind of CPU (about 17x slower than fp32 at 28 px)
    base = tiny_config(limit_train=128, limit_test=128, batch_size=32, epochs=2, image_size=8)
    _, ids = submit_sweep(store, expand(base, {"precision": ["fp32", "bf16"]}), user="ada")
    quick_bench = {"method": "benchmark", "repeats": 3, "warmup": 1, "throughput_batch": 16,
                   "throughput_repeats": 1, "batch_sizes": [1]}
    ids.append(store.submit(base.replace(batch_size=64, epochs=1, compress=[
        quick_bench, {"method": "prune_unstructured", "sparsity": 0.5, "finetune_steps": 1}]), user="grace"))
    for run_id in ids:
        execute(store, run_id)
    # a data set that is not on this machine (and downloads are off): passes the checks at submit
    # time, fails at set-up with the reason
    ids.append(store.submit(base.replace(dataset="mnist"), user="grace"))
    execute(store, ids[-1])
    assert [store.get(i).status for i in ids] == ["done", "done", "done", "failed"]
    return home


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")

    def start(home=None):
        if home is not None:
            monkeypatch.setenv("OPTLAB_HOME", str(home))
        at = AppTest.from_file(APP, default_timeout=60)
        return at.run()
    return start


def plotly_charts(at):
    return [e for e in at.get("plotly_chart")]


def no_errors(at):
    assert not at.exception, [e.value for e in at.exception]


# -- Lab -------------------------------------------------------------------------------------------
def by_label(widgets, label):
    return next(w for w in widgets if w.label == label)


def knob(at, kind, name):
    """The Lab form's widget for one RunConfig setting (its key carries the form's generation)."""
    return next(w for w in getattr(at, kind) if re.fullmatch(f"lab_{name}_\\d+", w.key or ""))


def timed_here(cfg):
    """Wait for the Lab's estimate of `cfg` on this machine (a real calibration, as the page runs it)."""
    from optlab import estimate, fit
    from optlab.device import describe
    estimate.calibration(cfg, fit.data_facts(cfg), describe("cpu"), wait=None)


def test_lab_form_queues_a_run_with_the_chosen_values(app, store):
    # a small batch: bf16 has no native kernels on this kind of CPU, and the calibration times real steps
    timed_here(RunConfig(model="speednet", precision="bf16", batch_size=16, limit_train=300, channels_last=True))
    at = app()
    no_errors(at)
    at.sidebar.text_input(key="user").input("ada")
    knob(at, "selectbox", "model").select("speednet")
    knob(at, "button_group", "precision").set_value("bf16")
    knob(at, "text_input", "batch_size").input("16")
    knob(at, "text_input", "limit_train").input("300")
    knob(at, "number_input", "epochs").set_value(1)
    knob(at, "toggle", "channels_last").set_value(True)
    knob(at, "button_group", "device").set_value("cpu")
    by_label(at.button, "Launch run").click().run()
    no_errors(at)
    [run] = store.list()
    assert run.status == "queued" and run.user == "ada"
    assert (run.config["model"], run.config["precision"], run.config["batch_size"], run.config["limit_train"],
            run.config["epochs"], run.config["channels_last"], run.config["device"]) == (
        "speednet", "bf16", 16, 300, 1, True, "cpu")
    assert f"Run #{run.id} queued" in at.success[0].value
    assert "Expected to take about" in at.success[0].value           # the estimate it was queued with
    link = at.get("page_link")[0]
    assert link.proto.page.endswith("runs") or "runs" in link.proto.page


@pytest.mark.parametrize("widget, name, value, message", [
    ("text_input", "batch_size", "lots", "batch size must be a whole number or 'auto'"),
    ("text_input", "limit_train", "many", "Training images must be a whole number, or empty for all"),
    ("number_input", "epochs", 0, "epochs must be 1..1000"),
    ("text_input", "limit_train", "100000", "train limit 100000 is larger than fashion-mnist's 60000 training images"),
    ("text_input", "batch_size", "5000", "batch size 5000 is larger than the 4096 training images"),
])
def test_a_bad_value_is_named_before_launch_and_launch_queues_nothing(app, store, widget, name, value, message):
    at = app()
    element = knob(at, widget, name)
    element.input(value) if widget == "text_input" else element.set_value(value)
    at.run()
    assert any(message in e.value for e in at.error), [e.value for e in at.error]   # before any click
    by_label(at.button, "Launch run").click().run()
    no_errors(at)
    assert message in at.error[0].value and "Nothing was queued" in at.error[0].value
    assert store.list() == []


def test_gpu_only_choices_are_not_offered_on_this_cpu_and_say_why(app):
    at = app()
    assert knob(at, "button_group", "precision").options == ["fp32", "bf16"]
    assert knob(at, "button_group", "device").options == ["auto", "cpu"]
    notes = [c.value for c in at.caption]
    assert "Not offered: tf32, fp16: need an NVIDIA GPU, and this server has none" in notes
    assert "Not offered: cuda: needs an NVIDIA GPU, and this server has none" in notes
    # on the CPU the 'gpu' pipeline is a data set held in memory, and the control says so
    assert knob(at, "button_group", "pipeline").options == ["cpu: DataLoader", "gpu: data in memory"]


def test_the_image_folder_is_asked_for_only_with_the_imagefolder_data_set(app, store, tmp_path, monkeypatch):
    at = app()
    assert not [w for w in at.text_input if re.fullmatch(r"lab_data_path_\d+", w.key or "")]
    knob(at, "selectbox", "dataset").select("imagefolder").run()
    assert any("needs a folder" in e.value for e in at.error)        # said before Launch
    knob(at, "text_input", "data_path").input(str(tmp_path)).run()
    assert any("outside the folders this server allows" in e.value for e in at.error)
    by_label(at.button, "Launch run").click().run()
    assert "Nothing was queued" in at.error[0].value and store.list() == []


def test_too_few_steps_is_a_warning_with_a_batch_that_gives_enough(app):
    at = app()
    knob(at, "text_input", "batch_size").input("1024").run()         # 4,096 images, 1 epoch: 4 steps
    [warning] = [w.value for w in at.warning if "steps in all" in w.value]
    assert warning.startswith("only 4 steps in all") and "A batch of 81 or less gives 50+ steps" in warning


def test_the_lab_shows_how_long_the_run_takes_here_before_it_is_queued(app, store):
    at = app()
    [line] = [m.value for m in at.markdown if "Before you launch" in m.value]
    assert "64 steps in all" in line                                  # 4,096 images ÷ 64, 1 epoch
    timed_here(views.config_from_form(at.session_state["_lab_values"]))
    at.run()                                                          # the panel's timer, in the browser
    [line] = [m.value for m in at.markdown if "Before you launch" in m.value]
    assert re.search(r"About \d+ (s|min) on this CPU · 64 steps in all", line), line
    assert any(c.value.startswith("From timing") and "images/s" in c.value for c in at.caption)
    assert store.list() == []                                         # shown, not queued


def test_a_run_too_long_for_this_cpu_is_held_with_a_smaller_version_one_click_away(app, trained_home, tmp_path):
    import shutil
    home = tmp_path / "home-copy"
    shutil.copytree(trained_home, home)
    at = app(home)
    at.query_params["from_run"] = "1"                                 # "Re-run with changes" on run #1
    at.switch_page("app_pages/lab.py").run()
    knob(at, "text_input", "limit_train").input("").run()             # its settings on all 60,000 images,
    knob(at, "number_input", "epochs").set_value(20).run()            # for 20 epochs
    [line] = [m.value for m in at.markdown if "Before you launch" in m.value]
    assert "on this CPU · 37,500 steps in all" in line                # 20 epochs × 60,000 ÷ 32
    assert any(c.value.startswith("From run #1 on this device") for c in at.caption)
    by_label(at.button, "Launch run").click().run()
    no_errors(at)
    store = Store(home)
    assert [r.id for r in store.list(status="queued")] == []          # held, not queued
    assert any("Not queued yet. This run would take about" in w.value for w in at.warning)
    smaller = next(b for b in at.button if b.label.startswith("Queue a smaller version: "))
    smaller.click().run()
    [queued] = store.list(status="queued")
    assert queued.config["epochs"] == 1 and queued.config["limit_train"] < 60000
    assert queued.config["limit_train"] // queued.config["batch_size"] >= 50
    assert f"Run #{queued.id} queued. Expected to take about" in at.success[0].value


def test_lab_sweep_queues_one_run_per_combination(app, store):
    at = app()
    at.selectbox(key="sweep_knob_1").select("precision")
    at.text_input(key="sweep_values_1").input("fp32, bf16")
    at.selectbox(key="sweep_knob_2").select("batch_size")
    at.text_input(key="sweep_values_2").input("32, 64")
    by_label(at.button, "Launch sweep").click().run()
    no_errors(at)
    runs = store.list(newest_first=False)
    assert [(r.config["precision"], r.config["batch_size"]) for r in runs] == [
        ("fp32", 32), ("fp32", 64), ("bf16", 32), ("bf16", 64)]
    assert len({r.sweep_id for r in runs}) == 1 and runs[0].sweep_id
    assert "4 runs" in at.success[0].value


def test_lab_queues_repeats_as_one_group_and_a_sweeps_repeats_interleaved(app, store):
    at = app()
    knob(at, "number_input", "repeats").set_value(3)
    by_label(at.button, "Launch run").click().run()
    no_errors(at)
    runs = store.list(newest_first=False)
    assert [r.repeat_index for r in runs] == [1, 2, 3] and len({r.repeat_group for r in runs}) == 1
    assert "the same settings 3 times" in at.success[0].value
    at.selectbox(key="sweep_knob_1").select("precision")
    at.text_input(key="sweep_values_1").input("fp32, bf16")
    by_label(at.button, "Launch sweep").click().run()
    no_errors(at)
    sweep = store.list(sweep_id=store.list()[0].sweep_id, newest_first=False)
    assert [(r.config["precision"], r.repeat_index) for r in sweep] == [
        ("fp32", 1), ("bf16", 1), ("fp32", 2), ("bf16", 2), ("fp32", 3), ("bf16", 3)]
    assert "2 settings × 3 repeats, interleaved" in at.success[0].value


def test_repeats_outside_the_limit_are_refused_in_the_form(app, store):
    at = app()
    knob(at, "number_input", "repeats").set_value(21)
    by_label(at.button, "Launch run").click().run()
    assert "repeats must be a whole number 1..20" in at.error[0].value and store.list() == []
def test_a_sweep_this_server_would_refuse_is_named_before_launch(app, store):
    at = app()
    at.selectbox(key="sweep_knob_1").select("precision")
    at.text_input(key="sweep_values_1").input("fp32, fp16").run()
    assert any(e.value.startswith("Launch sweep would queue nothing: fp16 (one of the sweep's runs): fp16 needs a GPU")
               for e in at.error), [e.value for e in at.error]
    at.text_input(key="sweep_values_1").input("fp32, bf16").run()
    assert any(m.value.startswith(":material/grid_view: **Launch sweep:** 2 runs") for m in at.markdown)
    assert store.list() == []


def test_a_preset_fills_the_form_with_its_version_for_this_cpu(app):
    at = app()
    at.selectbox(key="lab_preset").select("speedrun").run()
    no_errors(at)
    # the lesson's knobs as the preset has them ...
    assert knob(at, "button_group", "precision").value == "bf16"
    assert knob(at, "toggle", "channels_last").value is True
    assert knob(at, "text_input", "lr").value == "0.2"
    # ... in a run this machine (no GPU) finishes: fewer images and epochs, and it says so
    assert knob(at, "text_input", "limit_train").value == "8192"
    assert knob(at, "number_input", "epochs").value == 2
    assert knob(at, "text_input", "batch_size").value == "128"
    assert any(i.value.startswith("CPU version of speedrun: same knobs, a smaller run") and "12 epochs → 2 epochs"
               in i.value for i in at.info)


def test_the_form_keeps_its_values_across_pages(app):
    at = app()
    knob(at, "number_input", "epochs").set_value(3)
    knob(at, "button_group", "precision").set_value("bf16").run()
    at.switch_page("app_pages/runs.py").run()
    at.switch_page("app_pages/lab.py").run()
    assert knob(at, "number_input", "epochs").value == 3
    assert knob(at, "button_group", "precision").value == "bf16"


def test_the_form_offers_every_knob_and_the_registries_choices(app):
    from optlab.data import DATASETS
    from optlab.models import MODELS
    at = app()
    kinds = ("selectbox", "button_group", "text_input", "number_input", "toggle", "multiselect", "text_area")
    knob(at, "selectbox", "dataset").select("imagefolder").run()          # its folder field shows then
    widgets = {re.sub(r"_\d+$", "", w.key): w for kind in kinds for w in getattr(at, kind)
               if re.fullmatch(r"lab_\w+_\d+", w.key or "")}
    names = [f.name for f in fields(RunConfig) if f.name != "compress"] + ["compress_methods"]
    assert {f"lab_{n}" for n in names} | {"lab_compress_json"} == set(widgets)
    assert all(widgets[f"lab_{n}"].help for n in names)             # every knob says what it does
    assert knob(at, "selectbox", "model").options == MODELS.names()
    assert knob(at, "selectbox", "dataset").options == DATASETS.names()
    assert any("No GPU on this server" in i.value for i in at.info)   # this machine has no GPU


# -- Runs ------------------------------------------------------------------------------------------
def test_runs_page_shows_history_figures_and_charts(app, trained_home):
    at = app(trained_home)
    at.sidebar.text_input(key="user").input("grace")
    at.switch_page("app_pages/runs.py").run()
    no_errors(at)
    history = at.dataframe[0].value
    assert list(history["id"]) == [4, 3, 2, 1]
    assert list(history["user"]) == ["grace", "grace", "ada", "ada"]
    assert history["images/s"].iloc[1] > 0 and history["status"].iloc[0].endswith("failed")
    assert at.subheader[0].value == "History · 4 runs"
    # grace's newest run (the failed one) is opened: its reason is on the page, and in the address
    assert any("mnist was not found" in e.value for e in at.error)
    assert at.query_params["run"] == "4"
    at.selectbox(key="runs_selected").set_value(1).run()
    no_errors(at)
    assert at.query_params["run"] == "1"                            # a reload opens run #1 again
    assert len(plotly_charts(at)) == 1                              # loss and throughput per epoch
    figures = at.dataframe[1].value
    assert "CPU:" in " ".join(map(str, figures["value"]))


def test_history_names_runs_by_what_differs_from_their_neighbours(app, trained_home):
    at = app(trained_home)
    at.switch_page("app_pages/runs.py").run()
    names = list(at.dataframe[0].value["name"])
    # each name adds what it changed from the default where it differs from the runs next to it
    assert names == ["speednet fp32 bs=32 · mnist", "speednet fp32 bs=64 · 1 epoch · pruned 50%",
                     "speednet bf16 bs=32", "speednet fp32 bs=32"]


def test_without_a_link_the_runs_page_opens_only_the_visitors_own_run(app, trained_home):
    at = app(trained_home)
    at.switch_page("app_pages/runs.py").run()                       # no name: no run of theirs
    assert at.selectbox(key="runs_selected").value is None
    assert not at.button and not plotly_charts(at)
    at.sidebar.text_input(key="user").input("ada").run()
    assert at.selectbox(key="runs_selected").value == 2             # ada's newest


def test_a_link_opens_that_run(app, trained_home):
    at = app(trained_home)
    at.query_params["run"] = "3"
    at.switch_page("app_pages/runs.py").run()
    assert at.selectbox(key="runs_selected").value == 3


@pytest.mark.parametrize("page, link, message", [
    ("runs", {"run": "999"}, "There is no run 999 in this store"),
    ("runs", {"run": "abc"}, "There is no run abc in this store"),
    ("profile", {"run": "999"}, "There is no run 999 in this store"),
    ("profile", {"run": "4"}, "Run #4 has no profile: it failed: mnist was not found"),
    ("compare", {"sweep": "nope"}, "There is no sweep nope in this store"),
])
def test_a_link_to_something_missing_says_so_and_shows_nothing_else(app, trained_home, page, link, message):
    at = app(trained_home)
    for k, v in link.items():
        at.query_params[k] = v
    at.switch_page(f"app_pages/{page}.py").run()
    no_errors(at)
    said = [e.value for e in [*at.error, *at.warning]]
    assert len(said) == 1 and message in said[0], said
    assert not plotly_charts(at) and not at.dataframe and not at.selectbox and not at.button


def test_a_cancelled_run_says_it_never_started_not_that_it_ran_in_process(app, store):
    queued = store.submit(tiny_config(), user="ada")
    store.request_cancel(queued)
    at = app()
    at.query_params["run"] = str(queued)
    at.switch_page("app_pages/runs.py").run()
    assert "No telemetry was recorded for this run: it never started (cancelled before it started)." in [
        c.value for c in at.caption]


def test_cancel_and_delete_from_the_runs_page(app, store):
    queued = store.submit(tiny_config(), user="ada")
    at = app()
    at.sidebar.text_input(key="user").input("ada")
    at.switch_page("app_pages/runs.py").run()
    by_label(at.button, "Cancel").click().run()
    no_errors(at)
    assert store.get(queued).status == "cancelled"
    by_label(at.button, "Delete for good").click().run()
    no_errors(at)
    assert store.get(queued) is None


def test_the_runs_page_shows_a_runs_variants(app, trained_home):
    at = app(trained_home)
    at.query_params["run"] = "3"
    at.switch_page("app_pages/runs.py").run()
    assert any("Compressed variants" in c.proto.spec for c in plotly_charts(at))


def test_a_finished_run_is_compressed_from_the_runs_page(app, trained_home, tmp_path):
    import shutil
    import time

    from optlab.compress.background import state
    home = tmp_path / "home-copy"
    shutil.copytree(trained_home, home)                              # the shared runs stay as they are
    at = app(home)
    at.query_params["run"] = "3"                                     # compressed before, with a quick benchmark
    at.switch_page("app_pages/runs.py").run()
    at.multiselect(key="compress_3").set_value(["int8_dynamic"]).run()
    by_label(at.button, "Compress now").click().run()
    no_errors(at)
    store = Store(home)
    deadline = time.monotonic() + 240
    while state(store, 3).running and time.monotonic() < deadline:
        time.sleep(1)
    variants = store.get(3).summary["variants"]
    assert [v["name"] for v in variants][-2:] == ["baseline", "int8 dynamic (Linear)"], state(store, 3).log_tail
    assert any("compress finished: 2 variants" in e["message"] for e in store.events(3))
    # timed with the benchmark settings the run was first compressed with, like its earlier variants
    assert {v["latency_repeats"] for v in variants} == {3}


# -- Compare ---------------------------------------------------------------------------------------
def test_compare_page_draws_every_chart_for_the_sweep(app, trained_home):
    at = app(trained_home)
    at.switch_page("app_pages/compare.py").run()
    no_errors(at)
    assert at.radio(key="compare_mode").value == "A sweep"
    assert len(plotly_charts(at)) == 6          # pareto, throughput, speed-up, memory, curves, parallel
    assert any("CPU figures" in i.value for i in at.info)
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["trained model", "trained model"] and table["accuracy %"].notna().all()
    csv = at.get("download_button")[0]
    assert csv.proto.label == "Download CSV"


def test_compare_picked_runs_keeps_the_choice(app, trained_home):
    at = app(trained_home)
    at.switch_page("app_pages/compare.py").run()
    at.radio(key="compare_mode").set_value("Runs I pick").run()
    at.multiselect(key="compare_ids").set_value([1, 3]).run()
    no_errors(at)
    # labels name only what differs between the chosen runs
    assert list(at.dataframe[0].value["run"])[0] == "#1 bs=32"
    assert "#3 bs=64 1 epoch" in list(at.dataframe[0].value["run"])
    at.switch_page("app_pages/lab.py").run()
    at.switch_page("app_pages/compare.py").run()
    assert at.multiselect(key="compare_ids").value == [1, 3]


def test_a_linked_sweep_shows_its_progress_and_only_its_finished_runs(app, trained_home, tmp_path):
    import shutil
    home = tmp_path / "home-copy"
    shutil.copytree(trained_home, home)
    store = Store(home)
    sweep_id, ids = submit_sweep(store, expand(tiny_config(limit_train=128, limit_test=128, batch_size=32),
                                               {"num_workers": [0, 1]}))
    at = app(home)
    at.query_params["sweep"] = sweep_id
    at.switch_page("app_pages/compare.py").run()
    no_errors(at)
    # nothing of this sweep has finished: its progress, and no other sweep's charts
    assert any(f"Sweep {sweep_id}: 0 of 2 runs done" in i.value for i in at.info)
    assert len(at.get("progress")) == 2 and not plotly_charts(at)
    execute(store, ids[0])
    at.run()                    # what the page's own timer does in the browser every 2 s
    assert any("1 of 2 runs done" in i.value for i in at.info)
    pareto = next(c for c in plotly_charts(at) if "Speed vs accuracy" in c.proto.spec)
    drawn = [p for trace in json.loads(pareto.proto.spec)["data"] if trace.get("mode") == "markers+text"
             for p in trace["x"]]
    assert len(drawn) == 1                                          # this sweep's one finished run
    assert at.selectbox(key="compare_sweep").value == sweep_id


def test_every_page_renders_on_an_empty_store(app):
    at = app()
    for page in ("app_pages/runs.py", "app_pages/compare.py", "app_pages/lab.py"):
        at.switch_page(page).run()
        no_errors(at)


# -- the helpers the pages use -----------------------------------------------------------------------
def test_every_runconfig_setting_has_a_knob_with_help():
    assert list(views.KNOBS) == [f.name for f in fields(RunConfig)] or set(views.KNOBS) == {
        f.name for f in fields(RunConfig)}
    assert all(k.help and k.group in views.GROUPS for k in views.KNOBS.values())


def test_form_values_round_trip_a_config():
    cfg = tiny_config(lr=0.05, optimizer=None, batch_size="auto", compress=[{"method": "x", "sparsity": 0.5}])
    assert views.config_from_form(views.form_values(cfg)) == cfg


def test_comparison_table_lists_variants_under_their_run():
    summary = {"device_label": "CPU: test", "train_images_per_s": 100.0, "test_accuracy": 0.9, "variants": [
        {"name": "pruned 50%", "test_accuracy": 0.88, "latency_ms_p50": 1.5, "latency_ms_p90": 2.0,
         "throughput_images_per_s": 900.0, "size_mb": 2.0, "params": 10, "nonzero_params": 5, "device": "CPU: test"}]}
    run = Run(id=7, status="done", created_at=0.0, config=tiny_config().to_dict(), summary=summary)
    parent, child = views.table_rows([run])
    assert parent["run"] == child["run"] == "#7" and parent["variant"] == "trained model"
    assert child["variant"].endswith("pruned 50%") and child["accuracy %"] == pytest.approx(88.0)
    assert (child["latency ms p50"], child["inference images/s"], child["nonzero params"]) == (1.5, 900.0, 5)
    assert "pruned 50%" in views.to_csv([parent, child])


def test_compare_draws_the_variants_of_a_compressed_run(app, trained_home):
    at = app(trained_home)
    at.switch_page("app_pages/compare.py").run()
    at.radio(key="compare_mode").set_value("Runs I pick").run()
    at.multiselect(key="compare_ids").set_value([3]).run()
    no_errors(at)
    titles = [c.proto.spec for c in plotly_charts(at)]
    assert any("Variants of #3: accuracy vs latency" in t for t in titles)
    variants = list(at.dataframe[0].value["variant"])
    assert variants[0] == "trained model" and any("unstructured 50%" in v for v in variants[1:]), variants


def test_lab_offers_only_compression_that_can_run_here_by_name(app):
    at = app()
    at.switch_page("app_pages/lab.py").run()
    offered = next(m for m in at.multiselect if m.label == views.KNOBS["compress"].label).options
    assert "unstructured pruning" in offered and "int8 static quantization" in offered
    assert "benchmark" not in offered and "2:4 sparsity" not in offered     # settings step; needs a GPU
    assert any(m.value.startswith("- **2:4 sparsity**: 2\\:4 semi") for m in at.markdown)   # and why not


# -- Compare with repeated runs ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def repeated_home(tmp_path_factory):
    """A sweep of two settings that train the same way (only the accuracy target differs), each
    repeated twice and interleaved, plus one run whose summary is stripped to what OptLab stored
    before it kept per-step times."""
    home = tmp_path_factory.mktemp("repeated")
    store = Store(home)
    base = tiny_config(limit_train=128, limit_test=64, batch_size=32, repeats=2)
    sweep_id, ids = submit_sweep(store, expand(base, {"target_accuracy": [0.5, 0.6]}), user="ada")
    old = store.submit(base.replace(repeats=1), user="ada")
    for run_id in ids + [old]:
        execute(store, run_id)
    summary = store.get(old).summary
    for key in ("throughput", "train_images_per_s_mean"):
        summary.pop(key)
    store.update(old, summary=summary)
    assert [store.get(i).status for i in ids + [old]] == ["done"] * 5
    return home, sweep_id, ids, old


def markdown_text(at):
    return " ".join(m.value for m in at.markdown)


def test_compare_pools_repeats_and_says_in_words_whether_a_difference_is_noise(app, repeated_home):
    home, sweep_id, ids, _ = repeated_home
    at = app(home)
    at.query_params["sweep"] = sweep_id
    at.switch_page("app_pages/compare.py").run()
    no_errors(at)
    store = Store(home)
    rows = views.figure_rows(sorted(store.list(sweep_id=sweep_id), key=lambda r: r.id))
    assert [r["ids"] for r in rows] == [[ids[0], ids[2]], [ids[1], ids[3]]]     # one row per repeat group
    [verdict] = views.speed_verdicts(rows, rows[0])
    # the same training twice over two repeats each: t's wide interval cannot call it a difference
    assert verdict["verdict"] == "within noise" and verdict["basis"] == "between repeats"
    assert f"not distinguishable from {rows[0]['label']} at this spread" in verdict["text"]
    assert verdict["text"] in markdown_text(at).replace("\\", "")
    assert "between repeats" in " ".join(c.value for c in at.caption)
    specs = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec) for c in plotly_charts(at)}
    assert {"Speed vs accuracy", "Training throughput", "Training speed-up",
            "Peak memory", "Accuracy against training time", "From knobs to outcomes"} == set(specs)
    speedup = specs["Training speed-up"]["data"][0]
    assert speedup["error_y"]["array"][1] is not None                 # the non-baseline bar has its interval
    assert specs["Training throughput"]["data"][0]["error_y"]["visible"]
    table = at.dataframe[0].value
    assert list(table["repeat"]) == ["1 of 2", "2 of 2", "mean of 2", "1 of 2", "2 of 2", "mean of 2"]
    assert list(table["interval"])[2] == "between repeats" and list(table["interval"])[0] == "within run"
    quality = {r.id: r.summary["throughput"]["quality"] for r in store.list(sweep_id=sweep_id)}
    for run_id, text in zip([ids[0], ids[2], ids[1], ids[3]], list(table["throughput quality"])[:2] + list(
            table["throughput quality"])[3:5]):
        assert text.startswith("thin") == (quality[run_id] == "thin")
    if "thin" in quality.values():
        assert any("Thin measurement" in w.value for w in at.warning)


def test_compare_renders_a_run_recorded_before_intervals_and_says_it_has_none(app, repeated_home):
    home, _, ids, old = repeated_home
    at = app(home)
    at.switch_page("app_pages/compare.py").run()
    at.radio(key="compare_mode").set_value("Runs I pick").run()
    at.multiselect(key="compare_ids").set_value([ids[0], old]).run()
    no_errors(at)
    assert "cannot tell whether this is a difference" in markdown_text(at).replace("\\", "")
    assert any("No interval for" in c.value and "per-step times" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert list(table["throughput quality"])[1].startswith("no interval")


def test_runs_page_shows_a_repeat_with_its_group_and_marks_thin_figures(app, repeated_home):
    home, _, ids, old = repeated_home
    at = app(home)
    at.switch_page("app_pages/runs.py").run()
    at.selectbox(key="runs_selected").set_value(ids[2]).run()
    no_errors(at)
    history = at.dataframe[0].value
    run = Store(home).get(ids[2])
    row = history[history["id"] == ids[2]].iloc[0]
    assert row["repeat"] == "2 of 2" and row["throughput"] == views.quality_text(run.summary)
    assert history[history["id"] == old].iloc[0]["throughput"].startswith("no interval")
    assert any(f"Repeat 2 of 2" in m.value for m in at.markdown)
    [group] = [d.value for d in at.dataframe if "figure" in d.value.columns]
    assert "training throughput (images/s)" in list(group["figure"]) and set(group["n"]) == {2}
    assert any("within-run interval" in c.value for c in at.caption)
    if run.summary["throughput"]["quality"] == "thin":
        assert any("Thin measurement" in w.value for w in at.warning)
