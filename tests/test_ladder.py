"""The ablation ladder: rung order per device, rung configs, a ladder of tiny CPU runs read back with
its speed-ups and verdicts, drawn on Compare, queued from the Runs page and the CLI."""
import json

import pytest

from conftest import open_page, tiny_config
from optlab import charts, ladder
from optlab.cli import main
from optlab.config import ConfigError, preset
from optlab.device import DeviceInfo
from optlab.store import Store

H100 = DeviceInfo("cuda", "NVIDIA H100", capability=(9, 0), supports_bf16=True, supports_fp16=True,
                  has_tensor_cores=True)
T4 = DeviceInfo("cuda", "Tesla T4", capability=(7, 5), supports_bf16=False, supports_fp16=True)
CPU = DeviceInfo("cpu", "x86_64 (2 threads)")


# -- planning (pure) ------------------------------------------------------------------------------------
def test_the_order_follows_the_device(monkeypatch):
    assert ladder.default_rungs(H100) == ["tf32", "bf16", "channels_last", "data_on_device", "compile", "auto_batch"]
    assert ladder.default_rungs(T4) == ["fp16", "channels_last", "data_on_device", "compile", "auto_batch"]
    monkeypatch.setattr(ladder, "cpu_has_native_bf16", lambda: False)
    assert ladder.default_rungs(CPU) == ["data_on_device", "channels_last", "compile", "auto_batch"]
    monkeypatch.setattr(ladder, "cpu_has_native_bf16", lambda: True)
    assert "bf16" in ladder.default_rungs(CPU)


def test_native_bf16_is_read_from_the_cpu_flags():
    assert ladder.cpu_has_native_bf16("processor: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert not ladder.cpu_has_native_bf16("processor: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not ladder.cpu_has_native_bf16("")


def test_each_rung_adds_its_knob_on_top_of_the_ones_before_from_a_plain_baseline():
    start = preset("speedrun")             # bf16, channels_last, data on the GPU, bs 512, profiled
    steps = ladder.plan(start, ladder.default_rungs(H100), "cuda")
    assert [s.label for s in steps] == ["0 · fp32 baseline", "1 · + tf32", "2 · + bf16", "3 · + channels-last",
                                        "4 · + data on the GPU", "5 · + compiled", "6 · + bs=auto"]
    base = steps[0].config
    assert (base.precision, base.channels_last, base.pipeline, base.compile, base.batch_size) == \
        ("fp32", False, "cpu", False, 512)
    assert not base.profile and base.compress == [] and base.lr == start.lr and base.epochs == start.epochs
    assert [s.config.changes_from(prev.config) for prev, s in zip(steps, steps[1:])] == [
        {"precision": "tf32"}, {"precision": "bf16"}, {"channels_last": True}, {"pipeline": "gpu"},
        {"compile": True}, {"batch_size": "auto"}]


def test_the_cpu_ladder_names_its_rungs_for_the_cpu_and_takes_any_setting():
    steps = ladder.plan(preset("cpu-quick"), ["data_on_device", "num_workers=0", "batch-size=256"], "cpu")
    assert [s.label for s in steps] == ["0 · fp32 baseline", "1 · + data in memory", "2 · + 0 workers",
                                        "3 · + bs=256"]
    assert steps[-1].config.batch_size == 256 and steps[-1].config.num_workers == 0


@pytest.mark.parametrize("rungs, message", [
    ([], "at least one rung"),
    (["warp_speed"], "unknown rung 'warp_speed'; choose one of: tf32, bf16"),
    (["bf16", "bf16"], "rung bf16 is in the ladder twice"),
    (["precision=fp32"], "changes nothing"),
    (["colour=red"], "'colour' cannot be swept"),
    (["channels_last"] * 1 + [f"seed={i}" for i in range(10)], "at most 10 rungs"),
])
def test_a_ladder_that_cannot_be_climbed_is_refused_with_the_reason(rungs, message):
    with pytest.raises(ConfigError, match=message):
        ladder.plan(preset("cpu-quick"), rungs, "cpu")


def test_gpu_rungs_on_the_cpu_are_refused_before_anything_is_queued(store):
    steps = ladder.plan(tiny_config(), ["tf32"], "cpu")
    with pytest.raises(ConfigError, match="1 · \\+ tf32 \\(one of the sweep's runs\\): tf32 is a mode of NVIDIA GPU"):
        ladder.submit(store, steps, device_for=lambda c: CPU)
    assert store.list() == []


# -- a ladder that ran ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def climbed(tmp_path_factory):
    """A two-rung ladder of tiny CPU runs, two repeats a rung, every run trained here."""
    from optlab.runner import execute
    home = tmp_path_factory.mktemp("ladder-home")
    store = Store(home)
    start = tiny_config(limit_train=256, limit_test=128, batch_size=16, repeats=2, profile=True,
                        compress=[{"method": "int8_dynamic"}])
    steps = ladder.plan(start, ["data_on_device", "channels_last"], "cpu")
    ladder_id, ids = ladder.submit(store, steps, user="ada", device_for=lambda c: CPU)
    for run_id in ids:
        execute(store, run_id)
    return home, ladder_id, ids


def test_the_ladder_is_a_sweep_of_ordinary_runs_interleaved_by_repeat(climbed):
    home, ladder_id, ids = climbed
    store = Store(home)
    runs = [store.get(i) for i in ids]
    assert ladder.is_ladder(ladder_id) and {r.sweep_id for r in runs} == {ladder_id}
    assert [r.label for r in runs] == ["0 · fp32 baseline", "1 · + data in memory", "2 · + channels-last"] * 2
    assert [r.repeat_index for r in runs] == [1, 1, 1, 2, 2, 2]
    assert all(r.status == "done" and r.user == "ada" for r in runs), [r.error for r in runs]
    assert not any(r.config["profile"] or r.config["compress"] for r in runs)   # training only


def test_rows_carry_cumulative_and_per_rung_speed_ups_with_intervals_and_verdicts(climbed):
    home, ladder_id, _ = climbed
    rows = ladder.rows(Store(home).list(sweep_id=ladder_id))
    assert [r["rung"] for r in rows] == ["fp32 baseline", "+ data in memory", "+ channels-last"]
    assert rows[0]["cumulative"] is None and rows[0]["step"] is None and not rows[0]["measurable"]
    for prev, row in zip(rows, rows[1:]):
        assert row["repeats"] == 2 and row["train_images_per_s_basis"] == "between repeats"
        step = row["step"]
        assert step["ratio"] == pytest.approx(row["train_images_per_s"] / prev["train_images_per_s"])
        assert step["verdict"] in ("better", "worse", "within noise") and step["basis"] == "between repeats"
        assert row["measurable"] == (step["verdict"] != "within noise")
    assert rows[2]["cumulative"]["ratio"] == pytest.approx(rows[2]["train_images_per_s"] / rows[0]["train_images_per_s"])
    table = ladder.table(rows)
    assert [t["x baseline"] for t in table][0] == 1.0
    assert {t["this rung"] for t in table[1:]} <= {"faster", "slower", "nothing measurable"}
    lesson = ladder.lesson(rows)
    assert len(lesson) == 2 and lesson[0].startswith("+ data in memory: ") and "the baseline so far" in lesson[1]


def test_the_chart_draws_each_rung_coloured_by_what_it_added(climbed):
    home, ladder_id, _ = climbed
    rows = ladder.rows(Store(home).list(sweep_id=ladder_id))
    fig = charts.ladder_bars(rows)
    bars = fig.data[0]
    assert list(bars.x) == [r["label"] for r in rows] and bars.y[0] == 1.0
    assert list(bars.y[1:]) == pytest.approx([r["cumulative"]["ratio"] for r in rows[1:]])
    colours = list(bars.marker.color)
    assert colours[0] == charts.VERDICT_COLOURS["baseline"]
    assert colours[1:] == [charts.VERDICT_COLOURS[r["step"]["verdict"]] for r in rows[1:]]
    assert "CPU" in fig.layout.title.subtitle.text


def test_ladder_show_prints_the_rungs_and_the_lesson(climbed, monkeypatch, capsys):
    home, ladder_id, _ = climbed
    monkeypatch.setenv("OPTLAB_HOME", str(home))
    assert main(["ladder", "--show", ladder_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["done"] == 6 and [r["rung"] for r in shown["rungs"]][0] == "0 · fp32 baseline (2 repeats)"
    assert len(shown["lesson"]) == 2 and shown["devices"][0].startswith("CPU")
    assert main(["ladder", "--show", ladder_id]) == 0
    text = capsys.readouterr().out
    assert "2 · + channels-last (2 repeats)" in text and "x rung below" in text
    assert main(["ladder", "--show", "ladder-nope"]) == 2
    assert "there is no ladder 'ladder-nope'" in capsys.readouterr().err


def test_compare_draws_the_ladder_for_its_link(climbed, monkeypatch):
    home, ladder_id, _ = climbed
    at = open_page(monkeypatch, home, "compare", sweep=ladder_id)
    assert "Ablation ladder" in [h.value for h in at.subheader]
    assert [c.proto.id for c in at.get("plotly_chart")][:1] and any(
        "ladder" in (c.proto.id or "") for c in at.get("plotly_chart"))
    assert any(line.value.startswith("- \\+ data in memory: ") for line in at.markdown)   # escaped: text, not Markdown


def test_a_report_of_the_ladder_draws_it_as_compare_does(climbed, tmp_path):
    from optlab import report
    home, ladder_id, _ = climbed
    store = Store(home)
    made = report.write_report(store, report.select_runs(store, [], ladder_id), tmp_path / "ladder.html")
    assert made.figures[0] == "ladder"
    text = (tmp_path / "ladder.html").read_text()
    assert "<td>2 · + channels-last (2 repeats)</td>" in text and "<li>+ data in memory: " in text


# -- queueing ---------------------------------------------------------------------------------------------
def test_the_cli_queues_a_ladder_from_a_run_with_its_repeats(climbed, tmp_path, monkeypatch, capsys):
    import shutil
    home = tmp_path / "copy"
    shutil.copytree(climbed[0], home)
    monkeypatch.setenv("OPTLAB_HOME", str(home))
    first = climbed[2][0]
    assert main(["ladder", str(first), "--rungs", "channels_last,data_on_device", "--user", "bo"]) == 0
    out, err = capsys.readouterr()
    ladder_id = out.strip()
    runs = Store(home).list(sweep_id=ladder_id, newest_first=False)
    # the run was one of two repeats: each rung is repeated as often
    assert len(runs) == 6 and {r.status for r in runs} == {"queued"} and {r.user for r in runs} == {"bo"}
    assert [r.label for r in runs[:3]] == ["0 · fp32 baseline", "1 · + channels-last", "2 · + data in memory"]
    assert "3 rungs x 2 repeats = 6 runs" in err
    assert main(["ladder", "--preset", "cpu-quick", "--rungs", "channels_last"]) == 0
    assert "2 rungs x 3 repeats = 6 runs" in capsys.readouterr().err       # three by default
    assert main(["ladder", str(first), "--rungs", "tf32"]) == 2
    assert "tf32" in capsys.readouterr().err and len(Store(home).list()) == 6 + 6 + 6
    assert main(["ladder"]) == 2


def test_the_runs_page_queues_a_ladder_and_opens_it(climbed, tmp_path, monkeypatch):
    import shutil
    home = tmp_path / "copy"
    shutil.copytree(climbed[0], home)
    at = open_page(monkeypatch, home, "runs", run=climbed[2][0])
    key = f"run{climbed[2][0]}"
    at.multiselect(key=f"ladder_rungs_{key}").set_value(["channels_last"]).run()
    at.number_input(key=f"ladder_repeats_{key}").set_value(2).run()
    at.button(key=f"ladder_go_{key}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    new = [r for r in Store(home).list(newest_first=False) if r.sweep_id not in (None, climbed[1])]
    assert [r.label for r in new] == ["0 · fp32 baseline", "1 · + channels-last"] * 2
    assert "Ablation ladder" not in [h.value for h in at.subheader]   # nothing finished yet: progress only
