"""TensorBoard serves a real CPU run's trace: the torch-tb-profiler plugin loads it and agrees on the steps."""
import json
import shutil
import socket
import time
import urllib.parse
import urllib.request

import pytest

from optlab import profiling, tensorboard
from test_profiling import profiled  # noqa: F401  (the session's one profiled CPU run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(tb, route):
    with urllib.request.urlopen(tb.data_url(route), timeout=10) as r:
        return json.load(r)


def test_the_profiler_plugin_loads_the_trace_and_agrees_on_the_step_times(profiled, tmp_path, monkeypatch):  # noqa: F811
    store, run = profiled
    home = tmp_path / "home"                      # a copy: TensorBoard writes its pid file into the home
    shutil.copytree(store.home / "runs", home / "runs")
    monkeypatch.setenv("OPTLAB_HOME", str(home))
    monkeypatch.setenv("OPTLAB_TB_PORT", str(_free_port()))
    trace_dir = home / "runs" / str(run.id) / "tb" / f"run{run.id}"
    tb = tensorboard.start()
    try:
        name = tensorboard.run_name(trace_dir)
        assert name == f"{run.id}/tb/run{run.id}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = _get(tb, "runs")
            if name in runs["runs"]:
                break
            time.sleep(0.5)
        assert name in runs["runs"], runs
        quoted = urllib.parse.quote(name)
        assert "Overview" in _get(tb, f"views?run={quoted}")
        assert set(_get(tb, f"workers?run={quoted}&view=Overview")) == {"train", "inference"}
        span = _get(tb, f"spans?run={quoted}&worker=train")[0]
        overview = _get(tb, f"overview?run={quoted}&worker=train&span={urllib.parse.quote(str(span))}")
        assert {"title": "Device Type", "value": "CPU"} in overview["environments"]
        # Each row is [step, then (µs, tooltip) pairs per category]; the plugin's step totals are ours.
        totals = [sum(v for v in row[1:] if isinstance(v, (int, float))) / 1000 for row in overview["steps"]["rows"]]
        assert totals == pytest.approx(run.summary["profile"]["step_ms"], rel=1e-3)

        again = tensorboard.start()
        assert again.reused and again.pid == tb.pid
        link = tensorboard.run_link(again, trace_dir)
        assert link["run"] == name and link["url"].endswith("#pytorch_profiler") and "internet" in link["note"]
    finally:
        assert tensorboard.stop()
    assert tensorboard.running() is None


def test_a_bad_port_setting_is_a_clear_message(monkeypatch):
    monkeypatch.setenv("OPTLAB_TB_PORT", "sixty")
    with pytest.raises(tensorboard.TensorBoardError, match="1..65535"):
        tensorboard.start()


def test_the_trace_folder_is_named_as_the_plugin_names_runs(profiled):  # noqa: F811
    store, run = profiled
    assert tensorboard.run_name(profiling.run_trace_dir(store, run), store.home) == f"{run.id}/tb/run{run.id}"
