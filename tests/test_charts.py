import subprocess
import sys

import pytest

from optlab import charts, stats

CPU = "CPU: test processor (2 threads)"
GPU = "GPU: NVIDIA H100 80GB HBM3"


def row(label, ips, acc, mem, device=CPU, kind="host_rss"):
    return {"label": label, "train_images_per_s": ips, "test_accuracy": acc, "peak_memory_mb": mem,
            "memory_kind": kind, "device_label": device}


ROWS = [row("#1 fp32", 100.0, 0.90, 900), row("#2 bf16", 180.0, 0.89, 600), row("#3 bs=512", 150.0, 0.85, 1200),
        row("#4 compiled", 90.0, 0.92, 950)]


def test_pareto_front_on_a_known_set():
    points = [(1, 5), (2, 4), (3, 1), (2, 2), (1.5, 4.5), (0.5, 0.5), (3, 1)]
    # (2, 2) is beaten by (2, 4); (0.5, 0.5) by everything; the second (3, 1) repeats the first
    assert charts.pareto_front(points) == [0, 4, 1, 2]
    assert charts.pareto_front([]) == []
    assert charts.pareto_front([(1, 1)]) == [0]


def test_pareto_scatter_draws_runs_front_units_and_device():
    fig = charts.pareto_scatter(ROWS + [row("#5 no accuracy", 50.0, None, 100)])
    runs, front = fig.data
    assert list(runs.x) == [100.0, 180.0, 150.0, 90.0]            # the run without accuracy is left out
    assert list(runs.y) == pytest.approx([90.0, 89.0, 85.0, 92.0])   # accuracy shown in %
    assert list(runs.marker.size) == [900, 600, 1200, 950] and runs.marker.sizemode == "area"
    assert list(front.x) == [90.0, 100.0, 180.0] and list(front.y) == pytest.approx([92.0, 90.0, 89.0])
    assert fig.layout.xaxis.title.text.startswith("Training throughput (images/s")
    assert fig.layout.yaxis.title.text.startswith("Test accuracy (%)")
    assert fig.layout.title.subtitle.text == f"Measured on {CPU}"
    assert "Bubble area = peak memory (MB" in fig.layout.legend.title.text


def test_mixed_devices_are_named_and_drawn_apart():
    fig = charts.pareto_scatter(ROWS[:2] + [row("#9 gpu", 9000.0, 0.9, 300, GPU, "cuda_allocator")])
    assert "Mixed devices" in fig.layout.title.subtitle.text
    assert CPU in fig.layout.title.subtitle.text and GPU in fig.layout.title.subtitle.text
    assert sorted(t.name for t in fig.data[:2]) == [CPU, GPU]


def test_speedup_bars_divide_by_the_baseline():
    fig = charts.speedup_bars(ROWS, ROWS[0])
    bars = fig.data[0]
    assert list(bars.x) == ["#1 fp32", "#2 bf16", "#3 bs=512", "#4 compiled"]
    assert list(bars.y) == pytest.approx([1.0, 1.8, 1.5, 0.9])
    assert list(bars.text) == ["1.00×", "1.80×", "1.50×", "0.90×"]
    assert fig.layout.yaxis.title.text == "Speed-up (× the baseline's images/s)"
    assert fig.layout.shapes[0].y0 == 1                              # the baseline line
    assert CPU in fig.layout.title.subtitle.text


def test_memory_bars_keep_gpu_and_host_figures_apart():
    rows = ROWS[:2] + [row("#9 gpu", 9000.0, 0.9, 300, GPU, "cuda_allocator")]
    fig = charts.memory_bars(rows)
    by_name = {t.name: (list(t.x), list(t.y)) for t in fig.data}
    assert by_name == {"GPU peak allocated": (["#9 gpu"], [300]),
                       "process peak RSS (host, training)": (["#1 fp32", "#2 bf16"], [900, 600])}
    assert fig.layout.yaxis.title.text == "Peak memory (MB)"


def test_accuracy_curves_use_cumulative_training_time_and_percent():
    curves = [{"label": "#1", "device_label": CPU, "epochs": [
        {"cumulative_train_seconds": 2.0, "test_accuracy": 0.7},
        {"cumulative_train_seconds": 4.5, "test_accuracy": 0.8}]},
        {"label": "#2 empty", "device_label": GPU, "epochs": []}]
    fig = charts.accuracy_curves(curves, target=0.9)
    assert len(fig.data) == 1                                        # a run without epochs draws nothing
    assert list(fig.data[0].x) == [2.0, 4.5] and list(fig.data[0].y) == pytest.approx([70.0, 80.0])
    assert fig.layout.xaxis.title.text == "Training time (s, evaluation excluded)"
    assert fig.layout.yaxis.title.text == "Test accuracy (%)"
    assert fig.layout.shapes[0].y0 == pytest.approx(90.0)
    assert fig.layout.title.subtitle.text == f"Measured on {CPU}"    # only the drawn run's device


def test_parallel_coordinates_map_knobs_to_categories_and_outcomes_with_units():
    rows = [dict(r, **{"knob:batch_size": bs, "knob:precision": p})
            for r, bs, p in zip(ROWS, [128, 64, 512, "auto"], ["fp32", "bf16", "fp32", "bf16"])]
    fig = charts.parallel_knobs(rows, [("knob:batch_size", "batch_size"), ("knob:precision", "precision")],
                                [("train_images_per_s", "throughput (images/s)"), ("test_accuracy", "accuracy (%)")])
    dims = fig.data[0].dimensions
    assert [d.label for d in dims] == ["batch_size", "precision", "throughput (images/s)", "accuracy (%)"]
    assert list(dims[0].ticktext) == ["64", "128", "512", "auto"]    # numbers in order, words last
    assert [dims[0].ticktext[v] for v in dims[0].values] == ["128", "64", "512", "auto"]
    assert list(dims[3].values) == pytest.approx([90.0, 89.0, 85.0, 92.0])
    assert CPU in fig.layout.title.subtitle.text


# -- intervals: error bars, verdict colours, repeats ---------------------------------------------------
def timed(label, ips, ci=None, values=None, thin=False, mem=900.0, mem_ci=None, rid=None):
    return dict(row(label, ips, 0.9, mem), id=rid, train_images_per_s_ci95=ci, train_images_per_s_values=values,
                peak_memory_mb_ci95=mem_ci, thin=thin, thin_why="6 steady steps (fewer than 10)" if thin else None)


def test_speedup_bars_carry_the_ratio_interval_and_are_coloured_by_the_verdict():
    base = timed("#1 base", 100.0, (95.0, 105.0), rid=1)
    same = timed("#2 same", 101.0, (96.0, 106.0), rid=2)
    fast = timed("#3 fast", 200.0, (190.0, 210.0), rid=3)
    old = timed("#4 old run", 150.0, None, rid=4)
    fig = charts.speedup_bars([base, same, fast, old], base)
    bars = fig.data[0]
    expected = [stats.ratio_interval(r["train_images_per_s"], r["train_images_per_s_ci95"], 100.0, (95.0, 105.0))
                for r in (same, fast)]
    plus, minus = list(bars.error_y.array), list(bars.error_y.arrayminus)
    assert plus[0] is None and plus[3] is None                        # the baseline itself; no interval
    for i, (ratio, lo, hi) in zip((1, 2), expected):
        assert bars.y[i] == pytest.approx(ratio)
        assert plus[i] == pytest.approx(hi - ratio) and minus[i] == pytest.approx(ratio - lo)
    assert list(bars.marker.color) == [charts.VERDICT_COLOURS[v] for v in
                                       ("baseline", "within noise", "better", "no interval")]
    assert [c[1] for c in bars.customdata] == ["the baseline", "within noise", "faster, beyond noise",
                                               "no interval: cannot tell"]


def test_an_unbounded_speedup_interval_runs_off_the_axis_instead_of_flattening_the_bars():
    base = timed("#1 base", 100.0, (0.0, 220.0), rid=1)             # two repeats far apart
    other = timed("#2", 120.0, (110.0, 130.0), rid=2)
    fig = charts.speedup_bars([base, other], base)
    bars = fig.data[0]
    assert bars.customdata[1][2] == "unbounded" and bars.customdata[1][1] == "within noise"
    top = fig.layout.yaxis.range[1]
    assert 1.2 <= top < 2 and bars.error_y.array[1] > top            # the axis follows the bars
    assert [t.name for t in fig.data[1:]] == ["within noise", "the baseline"]   # the colour key


def test_throughput_bars_draw_the_interval_each_repeat_and_hatch_thin_runs():
    rows = [timed("#1 (3 repeats)", 100.0, (80.0, 120.0), values=[90.0, 100.0, 110.0]),
            timed("#4", 150.0, (140.0, 160.0), thin=True)]
    fig = charts.throughput_bars(rows)
    bars, dots = fig.data
    assert list(bars.y) == [100.0, 150.0]
    assert list(bars.error_y.array) == pytest.approx([20.0, 10.0])
    assert list(bars.error_y.arrayminus) == pytest.approx([20.0, 10.0])
    assert list(dots.x) == ["#1 (3 repeats)"] * 3 and list(dots.y) == [90.0, 100.0, 110.0]
    assert list(bars.marker.pattern.shape) == ["", "/"]
    assert "thin: 6 steady steps" in bars.customdata[1][2]


def test_memory_bars_draw_error_bars_only_where_a_spread_exists():
    rows = [timed("#1 (3 repeats)", 100.0, mem=900.0, mem_ci=(850.0, 950.0)), timed("#4", 100.0, mem=600.0)]
    bars = charts.memory_bars(rows).data[0]
    assert list(bars.error_y.array) == [pytest.approx(50.0), None] and bars.error_y.visible
    assert not charts.memory_bars([timed("#4", 100.0)]).data[0].error_y.visible


def test_pareto_scatter_draws_throughput_and_accuracy_intervals():
    r = dict(timed("#1", 100.0, (90.0, 115.0)), test_accuracy_ci95=(0.88, 0.92))
    points = charts.pareto_scatter([r]).data[0]
    assert list(points.error_x.array) == pytest.approx([15.0]) and list(points.error_x.arrayminus) == pytest.approx([10.0])
    assert list(points.error_y.array) == pytest.approx([2.0])       # accuracy in %


def test_parallel_coordinates_show_compression_steps_as_a_knob():
    from optlab import views
    from optlab.store import Run
    from conftest import tiny_config
    steps = [{"method": "prune_unstructured", "sparsity": 0.5}, {"method": "int8_static"}, {"method": "bf16"}]
    runs = [Run(id=i, status="done", created_at=0.0, config=tiny_config(compress=c).to_dict(),
                summary={"train_images_per_s": 100.0 + i, "test_accuracy": 0.8, "peak_memory_mb": 500.0})
            for i, c in ((1, []), (2, steps))]
    knobs = views.varying_knobs(runs)
    assert knobs == ["compress"]
    fig = charts.parallel_knobs(views.figure_rows(runs), [(f"knob:{k}", k) for k in knobs],
                                [("train_images_per_s", "throughput (images/s)")])
    axis = fig.data[0].dimensions[0]
    assert sorted(axis.ticktext) == ["no compression", "prune_unstructured+int8_static+bf16"]


def test_accuracy_curves_of_one_repeat_group_share_a_colour_and_a_legend_entry():
    epochs = [{"cumulative_train_seconds": 1.0, "test_accuracy": 0.5}]
    fig = charts.accuracy_curves([{"label": "#1", "group": "A (2 repeats)", "epochs": epochs},
                                  {"label": "#3", "group": "A (2 repeats)", "epochs": epochs},
                                  {"label": "#2", "epochs": epochs}])
    a1, a2, b = fig.data
    assert a1.line.color == a2.line.color != b.line.color
    assert (a1.showlegend, a2.showlegend, b.showlegend) == (True, False, True) and a1.name == "A (2 repeats)"


def test_live_progress_chart_has_loss_and_throughput_panels():
    fig = charts.training_progress([{"step": 1, "loss": 2.3, "images_per_s": None},
                                    {"step": 5, "loss": 1.9, "images_per_s": 800.0}], GPU)
    loss, speed = fig.data
    assert list(loss.x) == [1, 5] and list(speed.x) == [5]
    assert fig.layout.yaxis2.title.text == "images/s, live estimate" and fig.layout.xaxis.title.text == "Step"
    assert fig.layout.title.subtitle.text == f"Measured on {GPU}"


def test_telemetry_draws_each_series_present_with_its_unit():
    samples = [{"t": 100.0, "gpu_util_pct": 50, "mem_used_mb": 1000, "cpu_pct": 99.0},
               {"t": 101.5, "gpu_util_pct": 97, "cpu_pct": 101.0}]
    fig = charts.telemetry(samples, GPU)
    # no power sensor and no RSS in these rows: no panel for either
    assert [t.name for t in fig.data] == ["GPU utilisation", "GPU memory used, all processes", "Worker CPU"]
    assert list(fig.data[0].x) == [0.0, 1.5] and list(fig.data[1].x) == [0.0]
    assert [a.text for a in fig.layout.annotations] == [
        "GPU utilisation (%)", "GPU memory used, all processes (MB)", "Worker CPU (% of one core)"]
    assert fig.layout.title.subtitle.text == f"Measured on {GPU}"


def test_engine_modules_import_without_plotly_or_streamlit():
    code = ("import sys, optlab.charts, optlab.views, optlab.sweeps; "
            "assert 'plotly' not in sys.modules and 'streamlit' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- labels that can be read -------------------------------------------------------------------------
def crowd(n=7):
    """Runs whose points sit close together, as a sweep over a knob that changes little does."""
    return [row(f"#{i} bs={32 * (i + 1)} 0 workers", 100.0 + 3 * i, 0.90 - 0.002 * (i % 3), 900 + 10 * i)
            for i in range(n)]


@pytest.mark.parametrize("width", [540, 800, 1100])
def test_speed_vs_accuracy_labels_never_overlap_from_five_runs_on(width):
    from optlab import labels
    for n in (5, 7, 10):
        fig = charts.pareto_scatter(crowd(n))
        assert labels.overlaps(fig, width) == 0
        assert labels.overlaps(fig, width, squeeze=120) == 0       # the plot area less a legend's room
        runs = fig.data[0]
        drawn = [t for t in runs.text if t]
        # a label with no room is shortened to its run id, or left to the hover, and the chart says so
        assert all(t.startswith("#") for t in drawn)
        hidden = n - len(drawn)
        notes = [a.text for a in fig.layout.annotations]
        assert (f"{hidden} crowded label" in " ".join(notes)) if hidden else not notes
        assert [c[2] for c in runs.customdata] == [r["label"] for r in crowd(n)]   # every name in the hover


def test_the_overlap_count_sees_labels_drawn_on_top_of_each_other():
    from optlab import labels
    fig = charts.pareto_scatter(crowd(7))
    for trace in fig.data[:1]:
        trace.textposition = ["top center"] * len(trace.x)
        trace.text = [r["label"] for r in crowd(7)]
    assert labels.overlaps(fig, 800) > 0


def test_speedup_title_fits_a_half_width_chart_and_names_the_baseline_below():
    fig = charts.speedup_bars(ROWS, dict(ROWS[0], label="#1 bs=32 epochs=2 pruned 50% + ONNX"))
    assert fig.layout.title.text == "Training speed-up" and len(fig.layout.title.text) <= 40
    assert fig.layout.title.subtitle.text.startswith("1.0 = baseline #1 bs=32 epochs=2 pruned 50% + ONNX")


def variant(name, latency, accuracy, device_label, device="cpu", size=4.5):
    return {"name": name, "latency_ms_p50": latency, "latency_ms_p90": latency * 1.1, "test_accuracy": accuracy,
            "size_mb": size, "device": device, "device_label": device_label, "throughput_images_per_s": 100.0,
            "throughput_batch": 256, "params": 10, "nonzero_params": 10, "macs": None}


def test_the_variants_front_includes_a_faster_runtime_on_the_same_hardware():
    from optlab.variant_charts import variants_figure
    onnx = variant("ONNX Runtime (CPU)", 2.0, 0.209, CPU + " via ONNX Runtime CPUExecutionProvider")
    fig = variants_figure([variant("baseline", 13.5, 0.209, CPU), variant("unstructured 50%", 46.8, 0.732, CPU),
                           onnx, variant("int8 dynamic (Linear)", 85.1, 0.211, CPU)])
    [front] = [t for t in fig.data if t.name.startswith("Pareto front")]
    assert front.name == "Pareto front (CPU)" and list(front.x) == [2.0, 46.8]   # ONNX beats the baseline


def test_variant_labels_at_the_same_point_are_placed_apart_and_inside_the_plot():
    from optlab import labels
    from optlab.variant_charts import variants_figure
    fig = variants_figure([variant("baseline", 13.5, 0.90, CPU), variant("unstructured 50%", 13.5, 0.90, CPU),
                           variant("ONNX Runtime (CPU)", 30.0, 0.90, CPU)])
    for width in (540, 800, 1100):
        assert labels.overlaps(fig, width) == 0
    assert all(fig.data[0].text)                                      # each one drawn


def test_bar_charts_put_long_run_names_on_short_level_lines():
    long = dict(ROWS[0], label="#6 0 workers pruned 50% + int8 dynamic")
    for fig in (charts.speedup_bars([long] + ROWS[1:], long), charts.memory_bars([long] + ROWS[1:])):
        ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext))
        assert ticks["#6 0 workers pruned 50% + int8 dynamic"] == "#6 0 workers<br>pruned 50% +<br>int8 dynamic"
        assert all(len(line) <= 14 for t in ticks.values() for line in t.split("<br>"))
