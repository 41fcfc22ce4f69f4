"""Runs: the queue and the history; one run's live progress, charts, log and outcome; cancel,
delete, or copy a run into the Lab form to change it and run it again."""
from __future__ import annotations

import streamlit as st

from optlab import charts, repeats, views
from optlab.cli import summary_rows
from optlab.store import Store

REFRESH_S = 2

store = Store()
state = st.session_state

st.title("Runs")
runs = store.list()                      # one query for the whole page
by_id = {r.id: r for r in runs}
active_ids = [r.id for r in runs if r.status in views.ACTIVE]

if not runs:
    st.info("No runs yet. Launch one from the Lab page.", icon=":material/info:")
    st.page_link("app_pages/lab.py", label="Go to the Lab", icon=":material/science:")


# -- the queue, refreshed in place while anything is queued or running ------------------------------
@st.fragment(run_every=REFRESH_S if active_ids else None)
def queue_panel():
    current = store.list(status=views.ACTIVE, newest_first=False)
    if [(r.id, r.status) for r in current] != sorted((i, by_id[i].status) for i in active_ids):
        st.rerun()                       # a run started, finished or arrived: redraw the whole page
    if not current:
        return
    st.subheader(f"In progress · {sum(r.status == 'running' for r in current)} running, "
                 f"{sum(r.status == 'queued' for r in current)} queued")
    for run in current:
        fraction, text = views.progress_of(run)
        who = f" · {run.user}" if run.user else ""
        st.progress(fraction, text=f"**#{run.id}** {views.run_name(run)}{who} — {text}")


def group_panel(run) -> None:
    """The repeat group this run belongs to: each figure's central value and spread."""
    group = repeats.members(store, run)
    unit = repeats.unit_figures(group)
    st.markdown(f"**Repeat {run.repeat_index} of {unit['planned']}** · {unit['done']} done so far")
    rows = views.group_figure_rows(unit)
    st.dataframe(rows, hide_index=True, key=f"group_{run.id}", column_config={
        k: st.column_config.NumberColumn(format="%.4g") for k in ("central", "95 % low", "95 % high")}
        | {"cv %": st.column_config.NumberColumn(format="%.1f")})
    if len(group) > 1:
        st.page_link("app_pages/compare.py", label="Compare the repeats", icon=":material/insights:",
                     query_params={"sweep": run.sweep_id or run.repeat_group})


if runs:
    queue_panel()

    # -- history ---------------------------------------------------------------------------------
    st.subheader(f"History · {len(runs)} runs")
    st.dataframe(
        views.run_rows(runs), hide_index=True, height=min(420, 38 + 35 * len(runs)),
        column_config={
            "id": st.column_config.NumberColumn("run", format="#%d", width="small"),
            "images/s": st.column_config.NumberColumn(format="%.0f", help="steady-state training throughput: "
                                                                           "median per-step images/s"),
            "throughput": st.column_config.TextColumn(help="solid, or thin: too few steady steps or too little "
                                                           "steady time to rely on the figure"),
            "accuracy %": st.column_config.NumberColumn(format="%.2f", help="top-1 on the test split"),
            "peak MB": st.column_config.NumberColumn(format="%.0f", help="peak memory (GPU allocator or host RSS)"),
            "wall s": st.column_config.NumberColumn(format="%.1f", help="from start to finish, all phases"),
        })

    # -- one run in detail -----------------------------------------------------------------------
    wanted = st.query_params.get("run")
    if wanted and wanted.isdigit() and int(wanted) in by_id and state.get("_runs_from") != wanted:
        state["_runs_from"] = wanted
        state["runs_selected"] = int(wanted)
    if state.get("runs_selected") not in by_id:
        state["runs_selected"] = active_ids[0] if active_ids else runs[0].id
    selected = st.selectbox("Run", list(by_id), key="runs_selected",
                            format_func=lambda i: f"#{i} · {views.run_name(by_id[i])}"
                                                  + (f" · {by_id[i].user}" if by_id[i].user else ""))
    run = by_id[selected]

    buttons = st.container(horizontal=True)
    if buttons.button("Cancel", icon=":material/stop_circle:", disabled=run.finished,
                         help="Stop this run (a queued run is removed from the queue)."):
        from optlab.scheduler import cancel
        st.toast(f"Run #{run.id}: {cancel(store, run.id)}")
        st.rerun()
    if buttons.button("Re-run with changes", icon=":material/edit:",
                         help="Open the Lab form filled with this run's settings."):
        st.switch_page("app_pages/lab.py", query_params={"from_run": str(run.id)})
    with buttons.popover("Delete", icon=":material/delete:", disabled=not run.finished,
                            help="Remove this run, its figures and its files."):
        st.write(f"Delete run #{run.id} and its artifacts? This cannot be undone.")
        if st.button("Delete for good", type="primary", key="runs_delete"):
            store.delete(run.id)
            state.pop("runs_selected", None)
            st.rerun()

    @st.fragment(run_every=REFRESH_S if not run.finished else None)
    def run_panel(run_id: int):
        current = store.get(run_id)
        if current is None:
            st.rerun()
        if current.status != by_id[run_id].status:
            st.rerun()                   # it just finished: refresh the history and the buttons too
        label = views.device_label(current)
        st.markdown(f"### {views.STATUS_ICONS.get(current.status, '')} Run #{run_id} · {current.status}")
        if current.status == "failed":
            st.error(f"**Failed:** {current.error or 'no reason recorded'}", icon=":material/error:")
        elif current.status in ("cancelled", "interrupted"):
            st.warning(f"**{current.status.capitalize()}:** {current.error or ''}", icon=":material/block:")
        elif not current.finished:
            fraction, text = views.progress_of(current)
            st.progress(fraction, text=text)
        if label:
            st.caption(f"Device: **{label}**")

        samples = store.metrics(run_id, "telemetry")
        if current.status == "done":
            for column, (name, value, meaning) in zip(st.columns(4), views.headline(current)):
                column.metric(name, value, help=meaning, border=True)
            st.caption("Training speed: " + views.throughput_detail(current.summary))
            quality = views.quality_text(current.summary)
            if quality.startswith("thin"):
                st.warning(f"**Thin measurement**: {views.md_escape(quality[len('thin: '):])}. Treat the training "
                           "speed as a rough figure; more training images or epochs give more steady steps.",
                           icon=":material/warning:")
            if current.repeat_group:
                group_panel(current)
            per_epoch = [{"step": e["epoch"], "loss": e["train_loss"], "images_per_s": e.get("images_per_s")}
                         for e in store.metrics(run_id, "epoch")]
            if len(per_epoch) > 1:
                fig = charts.training_progress(per_epoch, label)
                fig.update_xaxes(title_text="Epoch")
                st.plotly_chart(fig, theme=None, key=f"epochs_{run_id}")
        elif not current.finished:
            history = store.metrics(run_id, "progress")
            if history:
                st.plotly_chart(charts.training_progress(history, label), theme=None, key=f"live_{run_id}")
        with st.expander("All figures and settings", expanded=current.status != "done"):
            st.dataframe([{"": k, "value": v} for k, v in summary_rows(current)], hide_index=True)
            st.json(current.config, expanded=False)
        if samples:
            st.plotly_chart(charts.telemetry(samples, label), theme=None, key=f"telemetry_{run_id}")
        elif current.finished:
            st.caption("No telemetry was recorded for this run (it ran in-process, or the sampler was "
                       "unavailable: see the events).")
        if current.log_tail:
            with st.expander("Log tail", expanded=current.status == "failed"):
                st.code(current.log_tail, language=None)
        events = store.events(run_id)
        if events:
            with st.expander(f"Events ({len(events)})", expanded=current.status == "failed"):
                for e in events:
                    st.text(f"{views.when(e['t'])} {e['level']}: {e['message']}")

    run_panel(run.id)

