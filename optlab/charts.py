"""Plotly figure builders: data in, `plotly.graph_objects.Figure` out.

The dashboard and the exported report draw the same charts from these functions. Plotly is
imported inside each builder so the engine imports without it. Rows are plain dicts that use the
run summary's own keys (`train_images_per_s`, `test_accuracy` as a fraction, `peak_memory_mb`,
`memory_kind`, `device_label`) plus a display `label`; a row missing a figure is left out of the
chart that needs it, never drawn as zero.

Every figure carries its device in the subtitle, and says so when the runs mix devices, because a
CPU figure must never pass for a GPU figure.

Intervals: a row may carry `<key>_ci95` (a 95 % interval, or None) and `<key>_values` (each
repeat's value) beside a figure (optlab.views.figure_rows); the builders draw them as error bars
and dots, and draw nothing where a row has none (a single run's memory, an older run). A row with
`thin` set was measured on too few steps or too little time: its throughput is drawn hatched.
"""
from __future__ import annotations

import math

from optlab import labels

FONT_SIZE = 15          # readable on a workshop projector
PALETTE = ("#3B7DD8", "#E8743B", "#19A979", "#ED4A7B", "#945ECF", "#13A4B4", "#525DF4", "#BF399E",
           "#6C8893", "#EE6868", "#2F6497", "#F6AB2F")
# The legend at the foot of the figure, not a share of the plot's height below it: a legend that
# wraps onto several rows in a narrow column then pushes the plot up instead of covering the axis title.
LEGEND = dict(orientation="h", yref="container", y=0, yanchor="bottom")
MEMORY_KINDS = {"cuda_allocator": "GPU peak allocated", "host_rss": "process peak RSS (host, training)"}

# Telemetry series (optlab.telemetry's row keys) the live chart draws when present: (key, title,
# unit). NVML fields are read one by one, so a GPU without a power sensor still gets the others;
# the worker process's own CPU and memory are sampled on every machine.
TELEMETRY_SERIES = (
    ("gpu_util_pct", "GPU utilisation", "%"),
    ("mem_used_mb", "GPU memory used, all processes", "MB"),
    ("power_w", "GPU power draw", "W"),
    ("cpu_pct", "Worker CPU", "% of one core"),
    ("rss_mb", "Worker + loaders memory (RSS)", "MB"),
)


# -- shared pieces -------------------------------------------------------------------------------
def device_note(labels) -> str:
    """'Measured on GPU: X', or a warning naming every device when there is more than one."""
    distinct = sorted({label for label in labels if label})
    if not distinct:
        return "Device not recorded"
    if len(distinct) == 1:
        return f"Measured on {distinct[0]}"
    return "Mixed devices, compare with care:<br>" + "<br>".join(distinct)   # one a line: half-width charts


def _finish(fig, title: str, devices, *, height: int = 460, top: int = 100, legend_on_top: bool = False,
            note: str | None = None):
    """Title, device subtitle (after `note`, a line saying what the title has no room for) and the
    shared look; `top` leaves room for panel titles or axis labels. Titles stay short: half-width
    charts have about 40 characters of room. `legend_on_top` puts the legend above the plot, clear
    of long rotated run labels."""
    legend = (dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0) if legend_on_top
              else LEGEND)
    subtitle = (note + "<br>" if note else "") + device_note(devices)
    top += 16 * max(0, subtitle.count("<br>") - 1)    # room for a subtitle of more than two lines
    fig.update_layout(
        title=dict(text=title, subtitle=dict(text=subtitle, font=dict(size=13, color="#555")),
                   y=0.98, yanchor="top"),
        template="plotly_white", font=dict(size=FONT_SIZE), height=height,
        margin=dict(t=top + (30 if legend_on_top else 0), l=70, r=30, b=60), legend=legend,
        colorway=list(PALETTE),
    )
    return fig


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _have(row: dict, *keys) -> bool:
    return all(isinstance(row.get(k), (int, float)) and math.isfinite(row[k]) for k in keys)


def _pct(value):
    return None if value is None else 100 * value


def _error(rows: list[dict], key: str, scale: float = 1.0) -> dict:
    """Asymmetric error bars from each row's `key_ci95` around its `key` (none where a row has no
    interval)."""
    plus, minus = [], []
    for r in rows:
        ci = r.get(f"{key}_ci95")
        ok = ci and ci[0] is not None and ci[1] is not None and _have(r, key)
        plus.append(scale * (ci[1] - r[key]) if ok else None)
        minus.append(scale * (r[key] - ci[0]) if ok else None)
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, visible=any(p is not None for p in plus),
                color="#333", thickness=2, width=8)


def _bar_labels(fig, xs: list, texts: list[str]) -> None:
    """Each bar's value written at its foot on a white box, so an error bar crossing the bar never
    covers the number (the bars keep the same text in their data, undrawn, for hover and reports)."""
    for x, text in zip(xs, texts):
        fig.add_annotation(x=x, y=0, yanchor="bottom", text=text, showarrow=False, font=dict(color="#222"),
                           bgcolor="rgba(255,255,255,0.85)", borderpad=2)


def _interval_text(ci, fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(ci[0])}–{fmt.format(ci[1])}" if ci else "none"


LARGEST_BUBBLE_PX = 60   # the Pareto chart's biggest memory bubble, across
THIN_PATTERN = dict(shape="/", fgcolor="#444", size=8, solidity=0.3)
# Speed-up bars coloured by the noise verdict (optlab.stats.verdict), not by which side of 1 they fall
VERDICT_COLOURS = {"better": PALETTE[2], "worse": PALETTE[1], "within noise": "#A0A7B0",
                   "no interval": "#C9CED6", "baseline": "#6C8893"}
VERDICT_WORDS = {"better": "faster, beyond noise", "worse": "slower, beyond noise",
                 "within noise": "within noise", "no interval": "no interval: cannot tell", "baseline": "the baseline"}


# -- the Pareto front ----------------------------------------------------------------------------
def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (larger is better on both),
    ordered by x. A point equal to another on both axes is kept once (the first)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((xj >= x and yj >= y) and ((xj, yj) != (x, y) or j < i)
                        for j, (xj, yj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_scatter(rows: list[dict]):
    """Throughput vs accuracy, bubble area = peak memory, the Pareto front drawn as a line."""
    import plotly.graph_objects as go

    usable = [r for r in rows if _have(r, "train_images_per_s", "test_accuracy")]
    fig = go.Figure()
    memories = [r["peak_memory_mb"] for r in usable if _have(r, "peak_memory_mb")]
    # sizeref for sizemode="area": plotly.js draws a bubble sqrt(size / 2 / sizeref) px across
    sizeref = 2.0 * max(memories) / LARGEST_BUBBLE_PX ** 2 if memories else 1
    for n, device in enumerate(sorted({r.get("device_label") or "?" for r in usable})):
        group = [r for r in usable if (r.get("device_label") or "?") == device]
        fig.add_trace(go.Scatter(
            x=[r["train_images_per_s"] for r in group], y=[_pct(r["test_accuracy"]) for r in group],
            error_x=_error(group, "train_images_per_s"), error_y=_error(group, "test_accuracy", 100),
            mode="markers+text", name=device, text=[r.get("label", "") for r in group], cliponaxis=False,
            marker=dict(size=[r.get("peak_memory_mb") or 0 for r in group], sizemode="area", sizeref=sizeref,
                        sizemin=8, color=PALETTE[n % len(PALETTE)], opacity=0.75,
                        line=dict(width=1, color="white")),
            customdata=[[r.get("peak_memory_mb"), MEMORY_KINDS.get(r.get("memory_kind"), ""), r.get("label", "")]
                        for r in group],
            hovertemplate="<b>%{customdata[2]}</b><br>%{x:,.0f} images/s<br>%{y:.2f} % accuracy"
                          "<br>peak memory %{customdata[0]:,.0f} MB (%{customdata[1]})<extra></extra>"))
    front = pareto_front([(r["train_images_per_s"], r["test_accuracy"]) for r in usable])
    if len(front) >= 1:
        fig.add_trace(go.Scatter(
            x=[usable[i]["train_images_per_s"] for i in front], y=[_pct(usable[i]["test_accuracy"]) for i in front],
            mode="lines+markers", name="Pareto front (best trade-offs)", line=dict(color="#444", dash="dash", width=2),
            marker=dict(symbol="circle-open", size=14, color="#444", line=dict(width=2)),
            line_shape="hv", hoverinfo="skip"))
    fig.update_xaxes(title_text="Training throughput (images/s, steady state)",
                     range=labels.padded_range([r["train_images_per_s"] for r in usable], from_zero=True))
    fig.update_yaxes(title_text="Test accuracy (%)", range=labels.padded_range([_pct(r["test_accuracy"]) for r in usable]))
    fig.update_layout(legend=dict(title=dict(
        text="Up and to the right is better.<br>Bubble area = peak memory (MB).", side="top")))
    _finish(fig, "Speed vs accuracy", [r.get("device_label") for r in usable], height=520)
    _place_labels(fig)
    return fig


def tuning_scatter(result: dict):
    """An autotuning (optlab.autotune.result): each trial's speed against its accuracy, the trials
    over the accuracy budget crossed out, the budget's floor, the reference run, the winner and the
    Pareto front of everything tried. The x axis is the objective's speed figure (images/s, or ms of
    latency where lower is better: then the axis is reversed, so right is still faster)."""
    import plotly.graph_objects as go

    objective, ref = result["objective"], result["reference"]
    measured = [t for t in result["trials"] if t["speed"] is not None and t["accuracy"] is not None]
    fig = go.Figure()
    for kept, name, colour, symbol in ((True, "within the budget", PALETTE[0], "circle"),
                                       (False, "over the budget (never the winner)", PALETTE[1], "x")):
        group = [t for t in measured if bool(t["within_budget"]) == kept]
        if group:
            fig.add_trace(go.Scatter(
                x=[t["speed"] for t in group], y=[_pct(t["accuracy"]) for t in group], mode="markers+text",
                name=name, text=[f"trial {t['index']}" for t in group], textposition="top center",
                cliponaxis=False, marker=dict(size=12, color=colour, symbol=symbol, line=dict(width=1, color="white")),
                customdata=[[t["run_id"], ", ".join(f"{k}={v}" for k, v in t["params"].items())] for t in group],
                hovertemplate="<b>%{text}</b> (run #%{customdata[0]})<br>%{customdata[1]}<br>%{x:,.2f} "
                              + objective["unit"] + "<br>%{y:.2f} % accuracy<extra></extra>"))
    front = [t for t in measured if t["number"] in result["pareto"]]
    if front:
        front.sort(key=lambda t: t["speed"])
        fig.add_trace(go.Scatter(x=[t["speed"] for t in front], y=[_pct(t["accuracy"]) for t in front],
                                 mode="lines", name="Pareto front of everything tried", hoverinfo="skip",
                                 line=dict(color="#444", dash="dash", width=2),
                                 line_shape="hv" if objective["higher_is_better"] else "vh"))
    winner = result["winner"]
    if winner:
        fig.add_trace(go.Scatter(x=[winner["speed"]], y=[_pct(winner["accuracy"])], mode="markers",
                                 name=f"winner: trial {winner['index']}", hoverinfo="skip",
                                 marker=dict(symbol="star", size=24, color=PALETTE[2], line=dict(width=1, color="#222"))))
    if ref["speed"] is not None and ref["accuracy"] is not None:
        fig.add_trace(go.Scatter(x=[ref["speed"]], y=[_pct(ref["accuracy"])], mode="markers",
                                 name=f"reference: run #{ref['run_id']}",
                                 marker=dict(symbol="diamond", size=14, color="#222"),
                                 hovertemplate=f"run #{ref['run_id']}<br>%{{x:,.2f}} {objective['unit']}"
                                               "<br>%{y:.2f} %<extra></extra>"))
    if ref["floor"] is not None:
        fig.add_hline(y=_pct(ref["floor"]), line_dash="dot", line_color=PALETTE[1],
                      annotation_text="accuracy budget", annotation_position="bottom right")
    speeds = [t["speed"] for t in measured] + ([ref["speed"]] if ref["speed"] is not None else [])
    accuracies = [_pct(t["accuracy"]) for t in measured] + [_pct(v) for v in (ref["accuracy"], ref["floor"]) if v is not None]
    span = labels.padded_range(speeds, from_zero=True)
    if span and not objective["higher_is_better"]:
        span = [span[1], span[0]]          # lower latency is faster: reversed, so right is still better
    fig.update_xaxes(title_text=f"{objective['title'][:1].upper()}{objective['title'][1:]} ({objective['unit']})",
                     range=span)
    fig.update_yaxes(title_text="Test accuracy (%)", range=labels.padded_range(accuracies))
    devices = [t.get("device_label") for t in measured]
    return _finish(fig, "Autotuning: speed vs accuracy", devices, height=520,
                   note="right is faster" + ("" if objective["higher_is_better"] else " (lower latency)"))


def _place_labels(fig) -> None:
    """Point labels where they overlap nothing (optlab.labels); where none fits, the name is left
    to the hover and a note says so."""
    hidden = labels.apply(fig, shorter=lambda text: text.split(" ", 1)[0])   # '#12 bf16 bs=64' -> '#12'
    if hidden:
        fig.add_annotation(text=f"{hidden} crowded label{'s' if hidden > 1 else ''} left out: hover a point for its name",
                           xref="paper", yref="paper", x=1, y=1, xanchor="right", yanchor="bottom",
                           showarrow=False, font=dict(size=12, color="#555"))


# -- bars ------------------------------------------------------------------------------------------
def speedup_ratios(rows: list[dict], baseline: dict) -> list[dict]:
    """Each row's throughput over the baseline's with the ratio's 95 % interval from both sides'
    intervals, and the noise verdict: [{"row", "ratio", "lo", "hi", "verdict"}] for rows with a figure."""
    from optlab.stats import ratio_interval, verdict

    base = baseline.get("train_images_per_s")
    out = []
    for r in rows if base else []:
        if not _have(r, "train_images_per_s"):
            continue
        if r is baseline or (r.get("id") is not None and r.get("id") == baseline.get("id")):
            out.append({"row": r, "ratio": r["train_images_per_s"] / base, "lo": None, "hi": None, "verdict": "baseline"})
            continue
        ratio, lo, hi = ratio_interval(r["train_images_per_s"], r.get("train_images_per_s_ci95"),
                                       base, baseline.get("train_images_per_s_ci95"))
        out.append({"row": r, "ratio": ratio, "lo": lo, "hi": hi, "verdict": verdict(ratio, lo, hi)})
    return out


def _ratio_bars(names: list[str], bars: list[dict], thin: list[bool], *, customdata: list, hovertemplate: str,
                texts: list[str], legend=lambda call: VERDICT_WORDS[call], headroom: float = 1.2):
    """Ratio bars (1.0 = the baseline) coloured by verdict, the ratio's 95 % interval as an error
    bar, thin measurements hatched, each bar's text at its foot, one legend entry per colour shown.
    `bars`: {"ratio", "lo", "hi", "verdict"}. The y axis stops a little above the bars and their
    bounded intervals: an interval that is unbounded, or several times taller than every bar, runs
    off the top instead of flattening the bars (the hover gives the real bounds)."""
    import plotly.graph_objects as go

    tallest = max([b["ratio"] for b in bars] + [1.0])
    top = headroom * max([tallest] + [b["hi"] for b in bars if b["hi"] is not None and b["hi"] <= 3 * tallest])
    fig = go.Figure(go.Bar(
        x=names, y=[b["ratio"] for b in bars], text=texts, textposition="none", showlegend=False,
        error_y=_error([{"v": b["ratio"], "v_ci95": (b["lo"], min(b["hi"], 10 * top)) if b["lo"] is not None else None}
                        for b in bars], "v"),
        marker=dict(color=[VERDICT_COLOURS[b["verdict"]] for b in bars],
                    pattern=dict(shape=["/" if t else "" for t in thin], fgcolor="#333", solidity=0.3)),
        customdata=customdata, hovertemplate=hovertemplate))
    for call in [v for v in VERDICT_COLOURS if v in {b["verdict"] for b in bars}]:   # the colour key
        fig.add_trace(go.Bar(x=[None], y=[None], name=legend(call), marker_color=VERDICT_COLOURS[call]))
    _bar_labels(fig, names, texts)
    fig.add_hline(y=1, line_dash="dash", line_color="#444")   # the baseline; the title names it
    fig.update_yaxes(title_text="Speed-up (× the baseline's images/s)", range=[0, top])
    return fig


def speedup_bars(rows: list[dict], baseline: dict):
    """Training throughput of each run divided by the baseline's (1.0 = as fast as the baseline),
    with the ratio's 95 % interval as an error bar and the bar coloured by the noise verdict."""
    bars = speedup_ratios(rows, baseline)
    usable = [b["row"] for b in bars]
    names = [r.get("label", "") for r in usable]
    fig = _ratio_bars(
        names, bars, [bool(r.get("thin")) for r in usable], texts=[f"{b['ratio']:.2f}×" for b in bars],
        customdata=[[r["train_images_per_s"], VERDICT_WORDS[b["verdict"]], _ratio_interval_text(b)]
                    for r, b in zip(usable, bars)],
        hovertemplate="<b>%{x}</b><br>%{y:.2f}× the baseline (95 % interval %{customdata[2]})"
                      "<br>%{customdata[1]}<br>%{customdata[0]:,.0f} images/s<extra></extra>")
    _run_ticks(fig, names, "Run · error bar: 95 % interval of the ratio")
    return _finish(fig, "Training speed-up", [r.get("device_label") for r in usable + [baseline]],
                   legend_on_top=True, note=f"1.0 = baseline {_clip(baseline.get('label', ''), 40)}")


def ladder_bars(rows: list[dict]):
    """The ablation ladder (optlab.ladder.rows): each rung's cumulative speed-up over the baseline,
    error bar its 95 % interval, the bar coloured by what *this rung* added against the rung below
    (grey: nothing measurable at this spread), and the per-rung ratio written under each bar."""
    drawn = [r for r in rows if r["index"] == 0 or (r["cumulative"] and r["cumulative"]["ratio"])]
    bars = []
    for r in drawn:
        if r["index"] == 0:
            bars.append(dict(ratio=1.0, lo=None, hi=None, verdict="baseline", step=None))
            continue
        ci = r["cumulative"]["ci95"]
        step = r["step"] if r["step"] and r["step"]["ratio"] else None
        bars.append(dict(ratio=r["cumulative"]["ratio"], lo=ci[0] if ci else None, hi=ci[1] if ci else None,
                         verdict=step["verdict"] if step else "no interval", step=step))
    names = [r["label"] for r in drawn]
    fig = _ratio_bars(
        names, bars, [bool(r.get("thin")) for r in drawn], headroom=1.25,
        texts=[f"{b['ratio']:.2f}×" + (f" (step {b['step']['ratio']:.2f}×)" if b["step"] else "") for b in bars],
        legend=lambda call: VERDICT_WORDS[call] if call == "baseline" else "this rung: " + VERDICT_WORDS[call],
        customdata=[[_ratio_interval_text(b), (f"{b['step']['ratio']:.2f}× the rung below: "
                                               + VERDICT_WORDS[b["step"]["verdict"]]) if b["step"] else "",
                     r.get("train_images_per_s") or 0] for r, b in zip(drawn, bars)],
        hovertemplate="<b>%{x}</b><br>%{y:.2f}× the baseline (95 % interval %{customdata[0]})"
                      "<br>%{customdata[1]}<br>%{customdata[2]:,.0f} images/s<extra></extra>")
    _run_ticks(fig, names, "Rung, each on top of the ones before · error bar: 95 % interval")
    return _finish(fig, "Ablation ladder", [r.get("device_label") for r in drawn], legend_on_top=True,
                   note="bar: cumulative speed-up; colour: what the rung itself added", height=500)


def _ratio_interval_text(bar: dict) -> str:
    if bar["lo"] is None:
        return "none"
    if math.isinf(bar["hi"]):
        return "unbounded"
    return f"{bar['lo']:.2f}× to {bar['hi']:.2f}×"


def throughput_bars(rows: list[dict]):
    """Training throughput per run or repeat group: the bar is the figure (a run's median per-step
    throughput, a group's central value), the error bar its 95 % interval, the dots each repeat."""
    import plotly.graph_objects as go

    usable = [r for r in rows if _have(r, "train_images_per_s")]
    fig = go.Figure(go.Bar(
        x=[r.get("label", "") for r in usable], y=[r["train_images_per_s"] for r in usable], name="throughput",
        error_y=_error(usable, "train_images_per_s"), marker_color=PALETTE[0],
        marker_pattern=dict(shape=["/" if r.get("thin") else "" for r in usable], fgcolor="#333", solidity=0.3),
        customdata=[[_interval_text(r.get("train_images_per_s_ci95")), r.get("train_images_per_s_basis") or "",
                     "thin: " + r["thin_why"] if r.get("thin") and r.get("thin_why") else ""] for r in usable],
        hovertemplate="<b>%{x}</b><br>%{y:,.0f} images/s<br>95 % interval %{customdata[0]} (%{customdata[1]})"
                      "<br>%{customdata[2]}<extra></extra>"))
    dots = [(r.get("label", ""), v) for r in usable for v in r.get("train_images_per_s_values") or []
            if len(r.get("train_images_per_s_values") or []) > 1 and v is not None]
    if dots:
        fig.add_trace(go.Scatter(x=[x for x, _ in dots], y=[y for _, y in dots], mode="markers", name="each repeat",
                                 marker=dict(color="#222", size=9, symbol="circle-open", line=dict(width=2)),
                                 hovertemplate="<b>%{x}</b><br>one repeat: %{y:,.0f} images/s<extra></extra>"))
    fig.update_yaxes(title_text="Training throughput (images/s, steady state)", rangemode="tozero")
    _run_ticks(fig, [r.get("label", "") for r in usable], "Run · error bar: 95 % interval · hatched: thin")
    return _finish(fig, "Training throughput", [r.get("device_label") for r in usable], legend_on_top=True)


def memory_bars(rows: list[dict]):
    """Peak memory per run, one colour per kind of memory figure (GPU allocator or host RSS), with
    the interval between repeats as an error bar where a row has one."""
    import plotly.graph_objects as go

    usable = [r for r in rows if _have(r, "peak_memory_mb")]
    fig = go.Figure()
    for n, kind in enumerate(sorted({r.get("memory_kind") or "" for r in usable})):
        group = [r for r in usable if (r.get("memory_kind") or "") == kind]
        fig.add_trace(go.Bar(
            x=[r.get("label", "") for r in group], y=[r["peak_memory_mb"] for r in group],
            name=MEMORY_KINDS.get(kind, kind or "peak memory"), marker_color=PALETTE[(n + 4) % len(PALETTE)],
            error_y=_error(group, "peak_memory_mb"),
            text=[f"{r['peak_memory_mb']:,.0f}" for r in group], textposition="none",
            hovertemplate="<b>%{x}</b><br>%{y:,.0f} MB<extra></extra>"))
    _bar_labels(fig, [r.get("label", "") for r in usable], [f"{r['peak_memory_mb']:,.0f}" for r in usable])
    # one kind of figure per run: overlay keeps every bar centred on its run (and on its label)
    fig.update_layout(barmode="overlay")
    fig.update_yaxes(title_text="Peak memory (MB)", rangemode="tozero")
    _run_ticks(fig, [r.get("label", "") for r in usable])
    return _finish(fig, "Peak memory", [r.get("device_label") for r in usable], note="during training")


def _run_ticks(fig, names: list[str], title: str = "Run") -> None:
    """Run names under bars as a few short lines, level, instead of long names turned on their side
    that squeeze the bars into a strip."""
    fig.update_xaxes(title_text=title, tickmode="array", tickvals=names, ticktext=[labels.wrap(n) for n in names],
                     tickfont=dict(size=FONT_SIZE - 3))


# -- curves ----------------------------------------------------------------------------------------
def accuracy_curves(curves: list[dict], target: float | None = None):
    """Test accuracy after each epoch against cumulative training time (evaluation excluded).

    Each curve: {"label", "device_label", "epochs": [{"cumulative_train_seconds", "test_accuracy"}, ...]}
    and optionally "group": curves of one group (the repeats of one config) share a colour and one
    legend entry, so their spread shows as a bundle of lines.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    drawn = []
    colours: dict[str, str] = {}
    for n, curve in enumerate(curves):
        points = [e for e in curve.get("epochs", []) if _have(e, "cumulative_train_seconds", "test_accuracy")]
        if not points:
            continue
        drawn.append(curve)
        group = curve.get("group") or f"curve {n}"
        first = group not in colours
        colours.setdefault(group, PALETTE[len(colours) % len(PALETTE)])
        fig.add_trace(go.Scatter(
            x=[e["cumulative_train_seconds"] for e in points], y=[_pct(e["test_accuracy"]) for e in points],
            mode="lines+markers", name=curve.get("group") or curve.get("label", ""), legendgroup=group,
            showlegend=first, line=dict(color=colours[group], width=3),
            marker=dict(size=10),
            hovertemplate="<b>" + curve.get("label", "") + "</b><br>%{x:.1f} s of training<br>"
                          "%{y:.2f} % accuracy<extra></extra>"))
    if target is not None:
        fig.add_hline(y=100 * target, line_dash="dot", line_color="#888",
                      annotation_text=f"target {100 * target:.0f} %", annotation_position="bottom right")
    fig.update_xaxes(title_text="Training time (s, evaluation excluded)", rangemode="tozero")
    fig.update_yaxes(title_text="Test accuracy (%)")
    return _finish(fig, "Accuracy against training time", [c.get("device_label") for c in drawn])


def parallel_knobs(rows: list[dict], knobs: list[tuple[str, str]], outcomes: list[tuple[str, str]]):
    """Parallel coordinates from knobs (left) to outcomes (right), coloured by the first outcome.

    `knobs` and `outcomes` are (row key, axis label); outcome labels carry their unit, and a
    fraction key ending in `accuracy` is shown in %. Knob values are drawn as categories.
    """
    import plotly.graph_objects as go

    usable = [r for r in rows if all(_have(r, key) for key, _ in outcomes)]
    dimensions = []
    for key, label in knobs:
        values = ["default" if r.get(key) is None else str(r.get(key)) for r in usable]
        categories = sorted(set(values), key=_natural)
        index = {c: i for i, c in enumerate(categories)}
        dimensions.append(dict(label=label, values=[index[v] for v in values],
                               tickvals=list(range(len(categories))), ticktext=categories,
                               range=[-0.25, max(len(categories) - 1, 0) + 0.25]))
    for key, label in outcomes:
        scale = 100 if key.endswith("accuracy") else 1
        dimensions.append(dict(label=label, values=[scale * r[key] for r in usable], tickformat=",.4~r"))
    color = [r[outcomes[0][0]] for r in usable] if outcomes else None
    many = len(dimensions) >= 5     # axis names turn a little so that neighbours do not run together
    fig = go.Figure(go.Parcoords(
        dimensions=dimensions, labelangle=-20 if many else 0, labelside="top",
        line=dict(color=color, colorscale="Viridis", showscale=True,
                  colorbar=dict(title=dict(text=outcomes[0][1] if outcomes else "")))))
    _finish(fig, "From knobs to outcomes", [r.get("device_label") for r in usable], height=520,
            top=185 if many else 150)
    fig.update_layout(margin=dict(l=90, r=60, b=40))
    return fig


def _natural(text: str):
    """Sort '64' < '128' < 'auto' and 'False' < 'True' the way people expect."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


# -- live charts -----------------------------------------------------------------------------------
def training_progress(rows: list[dict], device_label: str | None):
    """Loss and throughput against training step while a run trains.

    Rows: {"step", "loss", "images_per_s"} (either figure may be missing from a row).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Throughput"), horizontal_spacing=0.18)
    losses = [r for r in rows if _have(r, "step", "loss")]
    speeds = [r for r in rows if _have(r, "step", "images_per_s")]
    fig.add_trace(go.Scatter(x=[r["step"] for r in losses], y=[r["loss"] for r in losses], mode="lines+markers",
                             name="loss", line=dict(color=PALETTE[0], width=3)), row=1, col=1)
    fig.add_trace(go.Scatter(x=[r["step"] for r in speeds], y=[r["images_per_s"] for r in speeds],
                             mode="lines+markers", name="images/s", line=dict(color=PALETTE[2], width=3)),
                  row=1, col=2)
    fig.update_xaxes(title_text="Step")
    fig.update_yaxes(title_text="Loss (cross-entropy)", row=1, col=1)
    # The live figure is the host clock since the epoch began; the run's reported throughput
    # (steady-state, device timeline) is computed when the epoch ends.
    fig.update_yaxes(title_text="images/s, live estimate", rangemode="tozero", row=1, col=2)
    _finish(fig, "Training progress", [device_label], height=380, top=125)
    fig.update_layout(showlegend=False)
    return fig


def telemetry(rows: list[dict], device_label: str | None):
    """Device telemetry over time: one panel per series present in `rows` (utilisation, memory, power).

    Rows: {"t": unix seconds, <series key>: value, ...}; time is shown from the first sample.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    present = [s for s in TELEMETRY_SERIES if any(_have(r, s[0]) for r in rows)]
    fig = make_subplots(rows=max(1, len(present)), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[f"{title} ({unit})" for _, title, unit in present] or ["No samples"])
    start = min((r["t"] for r in rows if _have(r, "t")), default=0)
    for n, (key, title, unit) in enumerate(present, start=1):
        points = [r for r in rows if _have(r, "t", key)]
        fig.add_trace(go.Scatter(x=[r["t"] - start for r in points], y=[r[key] for r in points], mode="lines",
                                 name=title, line=dict(color=PALETTE[(n + 2) % len(PALETTE)], width=3),
                                 hovertemplate=f"%{{x:.1f}} s<br>%{{y:,.1f}} {unit}<extra>{title}</extra>"),
                      row=n, col=1)
        fig.update_yaxes(title_text=unit, rangemode="tozero", row=n, col=1)
    fig.update_xaxes(title_text="Time since the first sample (s)", row=max(1, len(present)), col=1)
    _finish(fig, "Device telemetry", [device_label], height=200 + 150 * max(1, len(present)), top=125)
    fig.update_layout(showlegend=False)
    return fig
