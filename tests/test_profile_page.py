"""The Profile page, headless, on a copy of the session's real profiled CPU run."""
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from optlab import advisor, profile_charts
from optlab.profiling import summarize_trace_file
from optlab.store import Store
from test_profiling import _gpu_trace, profiled  # noqa: F401  (the session's one profiled CPU run)

APP = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture
def page_home(profiled, tmp_path, monkeypatch):  # noqa: F811
    store, run = profiled
    home = tmp_path / "page-home"
    shutil.copytree(store.home, home)          # the page may queue runs: keep the shared run untouched
    monkeypatch.setenv("OPTLAB_HOME", str(home))
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")    # what the page queues stays queued
    return Store(home), run.id


def _open(run_id) -> AppTest:
    """The Profile page as a link to `run_id` opens it, inside the app's navigation."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["run"] = str(run_id)
    at.switch_page("app_pages/profile.py")
    return at.run()


def _text(at) -> str:
    return " ".join(str(m.value) for kind in ("markdown", "info", "caption", "warning", "success")
                    for m in getattr(at, kind))


def test_the_page_draws_the_profile_the_advice_and_the_downloads(page_home):
    store, run_id = page_home
    at = _open(run_id)
    assert not at.exception
    assert at.selectbox(key="profile_run").value == run_id
    assert len(at.get("plotly_chart")) == 4                    # categories, busy/idle, host vs device, memory
    assert len(at.dataframe) == 1                              # top CPU operators
    text = _text(at)
    assert "CPU" in text and "not a GPU figure" in text
    assert "These are CPU figures" in text                     # the advice
    downloads = [b.proto.label for b in at.get("download_button")]
    assert sorted(downloads) == ["Download inference trace", "Download report", "Download train trace"]
    assert "Open in TensorBoard" in [b.label for b in at.button]


def test_the_inference_window_can_be_shown(page_home):
    _, run_id = page_home
    at = _open(run_id)
    at.segmented_control(key="profile_window").set_value("Inference window").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 4


def test_try_it_queues_the_child_run(page_home, monkeypatch):
    store, run_id = page_home
    monkeypatch.setattr(advisor, "INPUT_WAIT_SHARE", 0.0)      # so a tryable rule speaks on this CPU run
    at = _open(run_id)
    try_buttons = [b for b in at.button if b.label.startswith("Try it")]
    assert try_buttons, [b.label for b in at.button]
    label = try_buttons[0].label
    try_buttons[0].click().run()
    assert not at.exception
    children = [r for r in store.list() if r.parent_id == run_id]
    assert len(children) == 1 and children[0].status == "queued"
    assert f"Tried as run #{children[0].id}" in _text(at)
    assert label not in [b.label for b in at.button]           # a second click has nothing to click


def test_trying_the_same_advice_twice_queues_one_run(page_home, monkeypatch):
    store, run_id = page_home
    monkeypatch.setattr(advisor, "INPUT_WAIT_SHARE", 0.0)
    run = store.get(run_id)
    [advice] = [a for a in advisor.advise(run.summary, run.config, run.device) if a.tryable][:1]
    first = advisor.try_advice(store, run, advice)
    assert advisor.try_advice(store, run, advice) == first      # a double click, or a second visitor
    assert [r.id for r in store.list() if r.parent_id == run_id] == [first]


def test_the_page_explains_data_loading_next_to_input_wait(page_home):
    _, run_id = page_home
    at = _open(run_id)
    [note] = [c.value for c in at.caption if "Data loading" in c.value]
    assert "profiled steps" in note and "Input wait" in note and "timed steps" in note


def test_an_unreadable_shared_trace_is_named_as_uploaded_not_by_a_server_path():
    from optlab.profiling import summarize_uploaded_trace
    for raw in (b"not json", b"\x1f\x8bbroken gzip", b'{"traceEvents": []}'):
        with pytest.raises(ValueError) as e:
            summarize_uploaded_trace("my trace.json.gz", raw)
        assert str(e.value).startswith("my trace.json.gz ") and "/tmp" not in str(e.value)


def test_a_tried_advice_shows_the_range_the_measured_interval_and_where_it_fell(page_home, monkeypatch):
    store, run_id = page_home
    monkeypatch.setattr(advisor, "INPUT_WAIT_SHARE", 0.0)
    at = _open(run_id)
    assert "Source: computed from this run" in _text(at)      # every prediction names its source
    next(b for b in at.button if b.label.startswith("Try it")).click().run()
    [child] = [r for r in store.list() if r.parent_id == run_id]
    parent = store.get(run_id).summary
    # The child's figures as its worker would write them, set to twice the top of the predicted range
    # with a tight interval, so the outcome must land above the range.
    top = store.metrics(child.id, "advice")[0]["expected_range"][1]
    speed = 2 * top * parent["train_images_per_s"]
    store.finish(child.id, "done", summary={**parent, "train_images_per_s": speed,
                                            "throughput": {**parent["throughput"], "ci95": (0.99 * speed, 1.01 * speed)}})
    outcome = advisor.advice_outcome(store, child.id)
    at = _open(run_id)
    assert not at.exception
    text = _text(at)
    assert outcome["position"] == "above" and "above" in text and "the predicted range" in text
    assert f"x{outcome['predicted_range'][1]:.2f}" in text.replace("\\", "")
    assert outcome["why"] in text


def test_try_it_refused_by_the_room_says_why(page_home, monkeypatch):
    store, run_id = page_home
    monkeypatch.setattr(advisor, "INPUT_WAIT_SHARE", 0.0)
    monkeypatch.setenv("OPTLAB_WORKSHOP", "1")                # a room, and nobody joined in this session
    at = _open(run_id)
    next(b for b in at.button if b.label.startswith("Try it")).click().run()
    assert not at.exception
    assert "Nothing was queued: join the workshop first" in at.error[0].value
    assert not [r for r in store.list() if r.parent_id == run_id]


def _subtitles(figures) -> list[str]:
    return [f.layout.title.subtitle.text for f in figures.values()]


def test_every_chart_says_what_was_timed_and_on_which_device(profiled, tmp_path):  # noqa: F811
    _, run = profiled
    cpu = profile_charts.profile_figures(run.summary["profile"], run.summary["device_label"])
    assert set(cpu) == {"categories", "busy", "host", "memory"}
    assert all("CPU" in text and run.summary["device_label"] in text for text in _subtitles(cpu))
    assert "Tensor Cores" not in profile_charts.top_rows(run.summary["profile"])[0]

    gpu_profile = summarize_trace_file(_gpu_trace(tmp_path / "gpu.pt.trace.json.gz"))
    gpu = profile_charts.profile_figures(gpu_profile, "GPU: NVIDIA H100 80GB HBM3")
    assert gpu["busy"].layout.title.text == "GPU busy vs idle"
    assert all("GPU: NVIDIA H100" in text for text in _subtitles(gpu))
    assert [bar for bar in gpu["host"].data[0].x] == ["step (wall)", "host busy", "host waits", "GPU busy"]
    assert profile_charts.top_rows(gpu_profile)[0]["Tensor Cores"] is True


def test_open_in_tensorboard_starts_it_and_names_the_run(page_home, monkeypatch):
    import socket

    from optlab import tensorboard
    store, run_id = page_home
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("OPTLAB_TB_PORT", str(s.getsockname()[1]))
    at = _open(run_id)
    try:
        next(b for b in at.button if b.label == "Open in TensorBoard").click().run()
        assert not at.exception
        text = _text(at)
        assert f"{run_id}/tb/run{run_id}" in text and "#pytorch_profiler" in text
        assert "internet" in text                             # its charts need it; this page does not
        assert tensorboard.running(store.home) is not None
    finally:
        tensorboard.stop(store.home)
