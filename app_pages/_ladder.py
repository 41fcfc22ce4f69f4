"""The ablation ladder on the pages: a panel that queues one (Runs, Lab) and the ladder's view (Compare)."""
from __future__ import annotations

import streamlit as st

from optlab import charts, ladder, views
from optlab.config import ConfigError, RunConfig

REPEATS = 3


def launch_panel(store, start: RunConfig, info, key: str) -> None:
    """Rungs in the order they will be climbed (prefilled with this device's order; drop, add or
    reorder them), repeats per rung, and a button that queues the ladder and opens it on Compare."""
    device = "cuda" if info.is_gpu else "cpu"
    offered = [k for k in ladder.RUNGS.names() if info.is_gpu or not ladder.RUNGS.get(k).gpu_only]
    words = {k: ladder.RUNGS.get(k).label(device).removeprefix("+ ") for k in offered}
    st.caption("A baseline in fp32 with the plain loader, then one knob added per rung, each on top of the ones "
               "before. The order below is the order they are climbed: remove a rung and add it back to move it "
               "to the end.")
    chosen = st.multiselect("Rungs", offered, default=[k for k in ladder.default_rungs(info) if k in offered],
                            format_func=words.get, key=f"ladder_rungs_{key}")
    extra = st.text_input("More rungs (optional)", key=f"ladder_extra_{key}", placeholder="num_workers=4, batch_size=512",
                          help="Any setting as knob=value, comma-separated; added after the rungs above.")
    times = st.number_input("Repeats per rung", 1, 5, REPEATS, key=f"ladder_repeats_{key}",
                            help="Three repeats give each rung an interval between repeats, so a rung that did "
                                 "nothing is called noise instead of a speed-up.")
    rungs = chosen + [r.strip() for r in extra.split(",") if r.strip()]
    try:
        steps = ladder.plan(start.replace(repeats=int(times)), rungs, device)
    except ConfigError as e:
        st.error(views.md_text(e), icon=":material/error:")
        return
    st.markdown(f"{views.count(len(steps), 'rung')} × {int(times)} = **{views.count(len(steps) * int(times), 'run')}**: "
                + views.md_text(" → ".join(s.label.split(" · ", 1)[1] for s in steps)))
    if st.button("Climb the ladder", type="primary", key=f"ladder_go_{key}", icon=":material/stairs:"):
        try:
            ladder_id, _ = ladder.submit(store, steps, user=st.session_state.get("user", ""),
                                         device_for=lambda c: views.target_device(c.device, info))
        except ConfigError as e:
            st.error(views.md_text(e), icon=":material/error:")
            return
        st.switch_page("app_pages/compare.py", query_params={"sweep": ladder_id})


def draw(runs: list) -> None:
    """A ladder's chart, table and lesson on Compare."""
    rows = ladder.rows(runs)
    st.subheader("Ablation ladder")
    st.plotly_chart(charts.ladder_bars(rows), theme=None, key="ladder")
    st.dataframe(ladder.table(rows), hide_index=True, placeholder=views.MISSING, column_config={
        "images/s": st.column_config.NumberColumn(format="%,.0f"),
        "x baseline": st.column_config.NumberColumn(format="%.2f×"),
        "x rung below": st.column_config.NumberColumn(format="%.2f×"),
        "time to target s": st.column_config.NumberColumn(format="%,.1f"),
        "peak MB": st.column_config.NumberColumn(format="%,.0f")})
    for line in ladder.lesson(rows):
        st.markdown("- " + views.md_text(line))
