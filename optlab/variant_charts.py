"""The variants chart: test accuracy against measured batch-1 latency, one bubble per variant
(its area the size on disk), with the 95 % interval of the median latency as an error bar and
the Pareto front per device. A pure builder: variant records in, a Plotly figure out; Plotly is
imported only when a figure is built."""
from __future__ import annotations


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower latency (x) and higher accuracy (y),
    in order of latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def latency_error(v: dict) -> tuple[float, float] | None:
    """(below, above) the median batch-1 latency: its 95 % interval, None for records without one."""
    ci = v.get("latency_ms_ci95")
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return max(0.0, v["latency_ms_p50"] - ci[0]), max(0.0, ci[1] - v["latency_ms_p50"])


def _speed_line(v: dict) -> str | None:
    if not v.get("speedup_vs_baseline"):
        return None
    ci = v.get("speedup_ci95")
    interval = f" (95 % {ci[0]:.2f}x-{ci[1]:.2f}x)" if ci else ""
    return f"{v['speedup_vs_baseline']:.2f}x the baseline at batch 1{interval}: {v.get('speedup_verdict')}"


def _hover(v: dict) -> str:
    macs = f"{v['macs'] / 1e6:,.1f} M" if v.get("macs") else "n/a"
    spread = (f"p10-p90 {v['latency_ms_p10']:.3f}-{v['latency_ms_p90']:.3f} ms" if v.get("latency_ms_p10") is not None
              else f"p90 {v['latency_ms_p90']:.3f} ms")
    lines = [f"<b>{v['name']}</b>", f"accuracy {100 * v['test_accuracy']:.2f} %",
             f"batch-1 latency p50 {v['latency_ms_p50']:.3f} ms, {spread}",
             _speed_line(v),
             f"throughput {v['throughput_images_per_s']:,.0f} img/s at batch {v['throughput_batch']}",
             f"{v['size_mb']:.2f} MB on disk" if v.get("size_mb") is not None else "size n/a",
             f"params {v['params']:,} ({v['nonzero_params']:,} non-zero), MACs {macs}",
             f"layers: {v.get('layers_converted') or 'n/a'}", v["device_label"]]
    return "<br>".join(line for line in lines if line)


def variants_figure(variants: list[dict], title: str | None = None):
    """Accuracy vs measured latency; bubble area = size on disk; a dashed Pareto front per kind of
    hardware (the CPU or the GPU: a variant run by another runtime on the same hardware, such as
    ONNX Runtime or OpenVINO, competes on the same front). Variants without a measured latency or accuracy
    (refused, failed, random labels) are left out and listed under the chart. Every point says on
    which device it was measured; labels are placed where they overlap nothing."""
    import plotly.graph_objects as go

    from optlab import labels
    from optlab.charts import FONT_SIZE, LEGEND

    usable = [v for v in variants if not v.get("error") and v.get("latency_ms_p50") and v.get("test_accuracy") is not None]
    left_out = [v["name"] for v in variants if v not in usable]
    sizes = [v["size_mb"] or 0 for v in usable]
    largest = max(sizes, default=0) or 1
    sizeref = 2 * largest / 50 ** 2
    fig = go.Figure()
    for label in dict.fromkeys(v["device_label"] for v in usable):
        group = [v for v in usable if v["device_label"] == label]
        errors = [latency_error(v) or (0.0, 0.0) for v in group]
        fig.add_trace(go.Scatter(
            x=[v["latency_ms_p50"] for v in group], y=[100 * v["test_accuracy"] for v in group],
            mode="markers+text", name=label, text=[v["name"] for v in group], cliponaxis=False,
            error_x=dict(type="data", array=[e[1] for e in errors], arrayminus=[e[0] for e in errors],
                         symmetric=False, visible=any(latency_error(v) for v in group), thickness=1.5),
            marker=dict(size=[v["size_mb"] or 0 for v in group], sizemode="area", sizemin=6,
                        sizeref=sizeref, opacity=0.7, line=dict(width=1)),
            hovertext=[_hover(v) for v in group], hoverinfo="text"))
    for hardware in dict.fromkeys(_hardware(v) for v in usable):
        group = [v for v in usable if _hardware(v) == hardware]
        front = [group[i] for i in pareto_front([(v["latency_ms_p50"], v["test_accuracy"]) for v in group])]
        if len(front) > 1:
            fig.add_trace(go.Scatter(x=[v["latency_ms_p50"] for v in front], y=[100 * v["test_accuracy"] for v in front],
                                     mode="lines", line=dict(dash="dash", width=1), name=f"Pareto front ({hardware})",
                                     hoverinfo="skip"))
    subtitle = ("bubble area: size on disk<br>latency at batch 1: median with its 95 % interval, timed in "
                "interleaved rounds<br>with the baseline, on the device named in the legend")
    noise = [v["name"] for v in usable if v.get("speedup_verdict") == "within noise"]
    if noise:
        subtitle += f"<br>within noise of the baseline at batch 1: {', '.join(noise)}"
    if left_out:
        subtitle += f"<br>not shown (no measurement): {', '.join(left_out)}"
    fig.update_layout(
        title=dict(text=title or "Variants: accuracy vs latency",
                   subtitle=dict(text=subtitle, font=dict(size=13, color="#555"))),
        xaxis_title="latency at batch 1, median (ms)", yaxis_title="test accuracy (%)",
        legend=LEGEND, showlegend=True,   # the device, even for one
        template="plotly_white",
        font=dict(size=FONT_SIZE - 2), height=540, margin=dict(l=70, r=30, t=90 + 18 * (subtitle.count("<br>") + 1), b=60))
    fig.update_xaxes(range=labels.padded_range([v["latency_ms_p50"] for v in usable], 0.2, from_zero=True))
    fig.update_yaxes(range=labels.padded_range([100 * v["test_accuracy"] for v in usable], 0.2))
    labels.apply(fig)
    return fig


def _hardware(variant: dict) -> str:
    """The hardware a variant was timed on ('CPU' or 'GPU'), whatever runtime ran it."""
    return "GPU" if variant.get("device") == "cuda" else "CPU"
