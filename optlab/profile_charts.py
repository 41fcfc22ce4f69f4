"""Figures of a profile summary (optlab.profiling.summarize_*): data in, Plotly figure out.

Plotly is imported inside each builder so the engine imports without it. Every title says what
was timed (GPU kernels or CPU operators) and the subtitle names the device, because a CPU profile
must never pass for a GPU profile.
"""
from __future__ import annotations

from optlab.charts import FONT_SIZE, LEGEND, PALETTE

CATEGORY_COLOURS = {"convolution": PALETTE[0], "matmul": PALETTE[1], "normalisation": PALETTE[2],
                    "elementwise": PALETTE[3], "memory copies": PALETTE[4], "optimizer": PALETTE[5],
                    "data loading": PALETTE[6], "other": PALETTE[8]}
NAME_CHARS = 60   # kernel names run to hundreds of characters of C++ templates


def short_name(name: str, limit: int = NAME_CHARS) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


def on_gpu(profile: dict) -> bool:
    return profile.get("device") == "cuda" and bool(profile.get("gpu_kernels_recorded"))


def what_was_timed(profile: dict) -> str:
    return "GPU kernels" if on_gpu(profile) else "CPU operators"


def _finish(fig, title: str, detail: str, device_label: str | None, *, height: int = 400):
    """Short title (columns are narrow); the subtitle says what was timed and on which device."""
    device = f"Measured on {device_label}" if device_label else "Device not recorded"
    fig.update_layout(title=dict(text=title, subtitle=dict(text=f"{detail}<br>{device}")), template="plotly_white",
                      font=dict(size=FONT_SIZE), height=height, margin=dict(t=110, l=70, r=30, b=60),
                      legend=LEGEND, colorway=list(PALETTE))
    return fig


def category_bars(profile: dict, device_label: str | None = None):
    """Time by category (ms over the profiled window), largest first."""
    import plotly.graph_objects as go

    rows = list(reversed(profile.get("categories") or []))   # largest on top
    fig = go.Figure(go.Bar(
        x=[r["ms"] for r in rows], y=[r["category"] for r in rows], orientation="h",
        marker_color=[CATEGORY_COLOURS.get(r["category"], PALETTE[8]) for r in rows],
        text=[f"{100 * r['share']:.0f} %" for r in rows], textposition="auto",
        hovertemplate="%{y}: %{x:,.1f} ms<extra></extra>"))
    fig.update_xaxes(title_text=f"ms over {profile.get('steps', '?')} profiled steps")
    basis = "kernel time" if on_gpu(profile) else "self time"
    return _finish(fig, "Where the time goes", f"{what_was_timed(profile)}, {basis}", device_label,
                   height=150 + 38 * max(3, len(rows)))


def busy_idle_bar(profile: dict, device_label: str | None = None):
    """One stacked bar: busy vs idle over the profiled window."""
    import plotly.graph_objects as go

    u = profile.get("utilisation") or {}
    gpu = u.get("basis") == "gpu"
    busy_name = "GPU busy" if gpu else "inside operators"
    idle_name = "GPU idle" if gpu else "outside operators (Python, framework)"
    fig = go.Figure()
    for name, key, share, colour in ((busy_name, "busy_ms", "busy_share", PALETTE[2]),
                                     (idle_name, "idle_ms", "idle_share", "#BBBBBB")):
        value = u.get(key)
        if value is None:
            continue
        fig.add_trace(go.Bar(x=[value], y=["window"], orientation="h", name=name, marker_color=colour,
                             text=[f"{100 * (u.get(share) or 0):.0f} %"], textposition="inside",
                             hovertemplate=f"{name}: %{{x:,.1f}} ms<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(showticklabels=False)
    fig.update_xaxes(title_text="ms of the profiled window")
    title, detail = (("GPU busy vs idle", "GPU kernels, copies and memsets") if gpu else
                     ("Inside vs outside operators", "CPU time of the profiled steps"))
    return _finish(fig, title, detail, device_label, height=300)


def host_device_bars(profile: dict, device_label: str | None = None):
    """Per step (ms): wall time, host busy, host waiting and GPU busy on a GPU; wall time, inside
    and outside operators on the CPU."""
    import plotly.graph_objects as go

    h = profile.get("host") or {}
    gpu = h.get("basis") == "gpu"
    if gpu:
        bars = [("step (wall)", h.get("step_ms"), "#888888"), ("host busy", h.get("host_ms"), PALETTE[1]),
                ("host waits", h.get("host_wait_ms"), "#BBBBBB"), ("GPU busy", h.get("device_ms"), PALETTE[0])]
    else:   # on the CPU the host is the device: split the step into inside and outside operators
        have = h.get("step_ms") is not None and h.get("device_ms") is not None
        outside = h["step_ms"] - h["device_ms"] if have else None
        bars = [("step (wall)", h.get("step_ms"), "#888888"), ("inside ops", h.get("device_ms"), PALETTE[0]),
                ("outside ops", outside, PALETTE[1])]
    bars = [b for b in bars if b[1] is not None]
    fig = go.Figure(go.Bar(x=[b[0] for b in bars], y=[b[1] for b in bars], marker_color=[b[2] for b in bars],
                           text=[f"{b[1]:,.1f}" for b in bars], textposition="outside",
                           hovertemplate="%{x}: %{y:,.2f} ms per step<extra></extra>"))
    fig.update_yaxes(title_text="ms per step", rangemode="tozero")
    fig.update_xaxes(tickangle=0)
    title, detail = (("Host vs GPU per step", "host busy vs GPU busy time") if gpu else
                     ("Time per step", "CPU: wall time vs inside operators"))
    return _finish(fig, title, detail, device_label)


def memory_bars(profile: dict, device_label: str | None = None):
    """Peak memory above the window's starting level, per phase; None when none was recorded."""
    import plotly.graph_objects as go

    m = profile.get("memory") or {}
    rows = m.get("phases") or []
    if not rows:
        return None
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[r["phase"] for r in rows], y=[r["peak_above_start_mb"] for r in rows],
                         name="most held at once (MB above the start)", marker_color=PALETTE[4]))
    fig.add_trace(go.Bar(x=[r["phase"] for r in rows], y=[r["allocated_mb_per_step"] for r in rows],
                         name="requested per step (MB, all allocations)", marker_color=PALETTE[5]))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="MB", rangemode="tozero")
    return _finish(fig, "Memory by phase", m.get("label", ""), device_label)


def input_note(profile: dict, summary: dict) -> str | None:
    """Why the chart's "data loading" share and the advice's "input wait" share of the same run can
    both be true: they measure different things over different steps. None when the run has not both."""
    loading = next((r["share"] for r in profile.get("categories") or [] if r["category"] == "data loading"), None)
    wait = summary.get("input_wait_share")
    if loading is None or wait is None:
        return None
    timed = summary.get("steady_steps")
    return (f"**Data loading {100 * loading:.0f} %** (this chart) is the share of the time inside operators that the "
            f"{profile.get('steps', '?')} profiled steps spent in the data loader, on the profiled threads. "
            f"**Input wait {100 * wait:.0f} %** (the advice) is the share of each step's wall time the training loop "
            f"waited for its next batch, over {'all ' + str(timed) if timed else 'all'} timed steps. Loading that "
            "overlaps the model's work (in loader workers, or prefetched) makes no wait, and time outside "
            "operators is in neither, so the two differ.")


def top_rows(profile: dict) -> list[dict]:
    """The top kernels (GPU) or CPU operators as table rows."""
    gpu = on_gpu(profile)
    rows = []
    for r in profile.get("top") or []:
        row = {"name": short_name(r["name"]), "category": r["category"], "ms": r["ms"], "calls": r["calls"],
               "mean µs": r["mean_us"], "share %": 100 * r["share"] if r.get("share") is not None else None}
        if gpu:
            row["Tensor Cores"] = bool(r.get("tensor_core"))
        rows.append(row)
    return rows


def profile_figures(profile: dict, device_label: str | None = None) -> dict:
    """Every figure of one profile, by name (memory only when it was recorded)."""
    figures = {"categories": category_bars(profile, device_label), "busy": busy_idle_bar(profile, device_label),
               "host": host_device_bars(profile, device_label)}
    memory = memory_bars(profile, device_label)
    if memory is not None:
        figures["memory"] = memory
    return figures
