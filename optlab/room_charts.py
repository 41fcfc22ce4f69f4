"""Plotly figures for the workshop's room board: data in, Figure out (plotly imported lazily)."""
from __future__ import annotations

from optlab.charts import FONT_SIZE, PALETTE, device_note


def lesson_board(rows: list[dict], title: str, better: str) -> "object":
    """Every person's result for one lesson: a dot per person and change at the ratio against
    their own baseline (>1 = better), with its 95 % interval where measured; a line at 1."""
    import plotly.graph_objects as go
    fig = go.Figure()
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for n, label in enumerate(labels):
        mine = [r for r in rows if r["label"] == label]
        has_ci = [r["lo"] is not None for r in mine]
        fig.add_trace(go.Scatter(
            x=[r["ratio"] for r in mine], y=[r["user"] for r in mine], mode="markers", name=label,
            marker={"size": 13, "color": PALETTE[n % len(PALETTE)]},
            error_x={"type": "data", "symmetric": False, "visible": any(has_ci),
                     "array": [(r["hi"] - r["ratio"]) if r["hi"] is not None else 0 for r in mine],
                     "arrayminus": [(r["ratio"] - r["lo"]) if r["lo"] is not None else 0 for r in mine]},
            customdata=[[r["run_id"], r["verdict"]] for r in mine],
            hovertemplate="%{y}: %{x:.2f}x (run #%{customdata[0]}, %{customdata[1]})<extra>" + label + "</extra>"))
    fig.add_vline(x=1, line_dash="dot", line_color="#888")
    fig.update_layout(
        title={"text": f"{title}<br><sup>{device_note(r.get('device_label') for r in rows)} · "
                       f"each dot: one person's change against their own baseline, bars: 95 % interval</sup>"},
        xaxis_title=f"× {better} than the baseline (1 = no change)", yaxis_title=None,
        font={"size": FONT_SIZE}, height=max(340, 160 + 40 * len({r['user'] for r in rows})),
        showlegend=True, legend={"title": {"text": "change"}}, margin={"l": 10, "r": 10, "t": 90, "b": 60})
    fig.update_yaxes(automargin=True, type="category")
    return fig
