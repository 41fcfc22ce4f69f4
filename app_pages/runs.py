"""Runs: the queue and the history; one run's live progress, charts, log and outcome; cancel,
delete, compress a finished run, or copy a run into the Lab form to change it and run it again.

The run shown is the one in the address (?run=N), so a reload or a shared link opens the same
run; without one, the visitor's own newest run, never someone else's."""
from __future__ import annotations

import streamlit as st

from app_pages import _ladder, _room
from optlab import bundle, caveats, charts, naming, repeats, report, views
from optlab.cli import summary_rows
from optlab.ddp import distributed_rows
from optlab.compress import METHODS, available_methods
from optlab.compress.background import CompressBusy, busy_reason, start
from optlab.compress.background import state as compression
from optlab.config import RunConfig
from optlab.store import Store

REFRESH_S = 2

store = Store()
state = st.session_state

st.title("Runs")
with st.expander("Import runs from a bundle", icon=":material/upload_file:"):
    upload = st.file_uploader("A bundle written by `python -m optlab export` (.zip)", type=["zip"], key="runs_bundle")
    if upload is not None and st.button("Import", key="runs_import"):
        ok, message = bundle.import_upload(store, upload.getvalue(), upload.name)
        (st.success if ok else st.error)("Imported:" if ok else "Refused; nothing was imported:")
        st.code(message, language=None, wrap_lines=True)   # names from the bundle, shown as text
runs = store.list()                      # one query for the whole page
by_id = {r.id: r for r in runs}
names = views.run_names(runs)
active_ids = [r.id for r in runs if r.status in views.ACTIVE]

wanted = st.query_params.get("run")
if wanted is not None and not (wanted.isdigit() and int(wanted) in by_id):
    # A link to a run that is not here shows that, and nothing else (no other run in its place).
    st.error(f"There is no run {views.md_text(wanted)} in this store: it was deleted, or the link comes from "
             "another OptLab server.", icon=":material/link_off:")
    st.page_link("app_pages/runs.py", label="See all runs", icon=":material/format_list_bulleted:")
    st.stop()

if not runs:
    st.info("No runs yet. Launch one from the Lab page.", icon=":material/info:")
    st.page_link("app_pages/lab.py", label="Go to the Lab", icon=":material/science:")
    st.stop()


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
        who = f" · {views.md_text(run.user)}" if run.user else ""
        st.progress(fraction, text=f"**#{run.id}** {views.md_text(names.get(run.id, views.run_name(run)))}{who} — {text}")


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


queue_panel()

# -- history -------------------------------------------------------------------------------------------
st.subheader(f"History · {views.count(len(runs), 'run')}")
st.dataframe(
    views.run_rows(runs), hide_index=True, height=min(420, 38 + 35 * len(runs)), placeholder=views.MISSING,
    column_config={
        "id": st.column_config.NumberColumn("run", format="#%d", width="small"),
        "name": st.column_config.TextColumn(width="medium", help="model, precision, batch size, and what differs "
                                                                 "from the runs above and below (the whole name "
                                                                 "in the picker below)"),
        "device": st.column_config.TextColumn(help="where the figures were measured"),
        "images/s": st.column_config.NumberColumn(format="%.0f", help="steady-state training throughput: "
                                                                       "median per-step images/s"),
        "throughput": st.column_config.TextColumn(help="solid, or thin: too few steady steps or too little "
                                                       "steady time to rely on the figure"),
        "accuracy %": st.column_config.NumberColumn(format="%.2f", help="top-1 on the test split"),
        "peak MB": st.column_config.NumberColumn(format="%.0f", help="peak memory (GPU allocator or host RSS)"),
        "wall min": st.column_config.NumberColumn(format="%.1f", help="minutes from start to finish, all phases"),
    })


# -- one run in detail -----------------------------------------------------------------------------------
def default_run() -> int | None:
    """The visitor's own run to open: their newest active run, else their newest run."""
    mine = [r for r in runs if r.user == state.get("user", "")]
    active = [r for r in mine if r.status in views.ACTIVE]
    return (active or mine)[0].id if mine else None


def show_in_address() -> None:
    if state.get("runs_selected") is not None:
        st.query_params["run"] = str(state["runs_selected"])


if wanted is not None and state.get("_runs_from") != wanted:
    state["_runs_from"] = wanted
    state["runs_selected"] = int(wanted)
if state.get("runs_selected") not in by_id:
    state["runs_selected"] = _room.first_own(runs, active_ids) or default_run()
selected = st.selectbox("Run", list(by_id), key="runs_selected", on_change=show_in_address,
                        placeholder="Choose a run to see it in detail",
                        format_func=lambda i: views.run_choice(by_id[i], names[i]))
if selected is None:
    st.caption("No run of yours yet under this name: choose one above.")
    st.stop()
show_in_address()                        # a reload, or the link copied from the address bar, opens this run
run = by_id[selected]

buttons = st.container(horizontal=True)
if buttons.button("Cancel", icon=":material/stop_circle:", disabled=run.finished,
                  help="Stop this run (a queued run is removed from the queue).") and _room.allowed(run):
    from optlab.scheduler import cancel
    st.toast(f"Run #{run.id}: {cancel(store, run.id)}")
    st.rerun()
buttons.download_button("Download report", **report.download(store, [run.id]), on_click="ignore",
                        icon=":material/download:", disabled=not run.finished)
if buttons.button("Re-run with changes", icon=":material/edit:",
                  help="Open the Lab form filled with this run's settings."):
    st.switch_page("app_pages/lab.py", query_params={"from_run": str(run.id)})
if run.status == "done":
    with buttons.popover("Compress", icon=":material/compress:",
                         help="Make smaller or faster variants of this run's trained model and measure each one."):
        info = st.session_state["device_info"]
        methods = [m for m, why in available_methods(info).items() if why is None and not METHODS.get(m).settings_only]
        chosen = st.multiselect("Methods", methods, format_func=naming.method_title, key=f"compress_{run.id}",
                                placeholder="Choose compression methods")
        busy = busy_reason(store, run.id)
        if busy:
            st.caption(busy[:1].upper() + busy[1:] + ".")
        if st.button("Compress now", type="primary", disabled=bool(busy) or not chosen, key="compress_start"):
            try:
                start(store, run.id, [{"method": m} for m in chosen])
                st.rerun()
            except CompressBusy as e:
                st.error(str(e))
with buttons.popover("Ladder", icon=":material/stairs:",
                     help="Climb from this run's settings one knob at a time and see what each one added."):
    _ladder.launch_panel(store, RunConfig.from_dict(run.config), st.session_state["device_info"], f"run{run.id}")
with buttons.popover("Delete", icon=":material/delete:", disabled=not run.finished,
                     help="Remove this run, its figures and its files."):
    st.write(f"Delete run #{run.id} and its artifacts? This cannot be undone.")
    if st.button("Delete for good", type="primary", key="runs_delete") and _room.allowed(run):
        store.delete(run.id)
        state.pop("runs_selected", None)
        st.query_params.pop("run", None)
        st.rerun()


def draw_variants(current) -> None:
    """The run's compressed variants (measured after training, or later from Compress), and a
    background compression that is under way."""
    job = compression(store, current.id)
    if job and job.running:
        st.info(f"Compressing run #{current.id} in the background (pid {job.pid}); the variants appear here "
                "when it is done.", icon=":material/hourglass_top:")
    variants = (current.summary or {}).get("variants")
    if variants:
        from optlab.variant_charts import variants_figure
        st.plotly_chart(variants_figure(variants, title="Compressed variants: accuracy vs latency"), theme=None,
                        key=f"variants_{current.id}")
        notes = sorted({n for v in variants for n in v.get("notes") or [] if "measured while run" in n})
        for note in notes:
            st.warning(views.md_text(note), icon=":material/warning:")
    elif job and not job.running and job.log_tail and "error" in job.log_tail:
        st.error("The background compression ended without variants:", icon=":material/error:")
        st.code(job.log_tail, language=None)


@st.fragment(run_every=REFRESH_S if not run.finished else None)
def run_panel(run_id: int):
    current = store.get(run_id)
    if current is None or current.status != by_id[run_id].status:
        st.rerun()                       # it just finished (or was deleted): refresh the history and buttons too
    label = views.device_label(current)
    st.markdown(f"### {views.STATUS_ICONS.get(current.status, '')} Run #{run_id} · {current.status}")
    st.caption(views.md_text(names[run_id]) + (f" · {views.md_text(current.user)}" if current.user else ""))
    if current.status == "failed":
        st.error(f"**Failed:** {views.md_text(current.error or 'no reason recorded')}", icon=":material/error:")
    elif current.status in ("cancelled", "interrupted"):
        st.warning(f"**{current.status.capitalize()}:** {views.md_text(current.error or '')}", icon=":material/block:")
    elif not current.finished:
        fraction, text = views.progress_of(current)
        st.progress(fraction, text=text)
    if label:
        st.caption(f"Device: **{label}**")

    if current.status == "done":
        figures = st.container(horizontal=True, gap="small")    # wraps instead of cutting values off
        for name, value, meaning in views.headline(current):
            figures.metric(name, value, help=meaning, border=True, width=200)
        st.caption("Training speed: " + views.throughput_detail(current.summary))
        quality = views.quality_text(current.summary)
        if quality.startswith("thin"):
            st.warning(f"**Thin measurement**: {views.md_escape(quality[len('thin: '):])}. Treat the training "
                       "speed as a rough figure; more training images or epochs give more steady steps.",
                       icon=":material/warning:")
        for caveat in caveats.measurement_warnings(current.summary):
            if not caveat.startswith("thin"):      # thin has its own warning above
                st.warning(views.md_text(caveat), icon=":material/warning:")
        for line in views.unmeasured([current]):
            st.caption(f":material/info: Run {views.md_text(line)}.")
        if current.repeat_group:
            group_panel(current)
    # The loss curve from the worker's progress history stays after the run ends; runs trained in
    # the foreground have none, and draw their per-epoch figures instead.
    history = store.metrics(run_id, "progress")
    per_epoch = [{"step": e["epoch"], "loss": e["train_loss"], "images_per_s": e.get("images_per_s")}
                 for e in store.metrics(run_id, "epoch")]
    if history:
        st.plotly_chart(charts.training_progress(history, label), theme=None, key=f"progress_{run_id}")
    elif len(per_epoch) > 1:
        fig = charts.training_progress(per_epoch, label)
        fig.update_xaxes(title_text="Epoch")
        st.plotly_chart(fig, theme=None, key=f"epochs_{run_id}")
    draw_variants(current)
    ranks = distributed_rows(current, store)
    if ranks:
        st.markdown("**Data-parallel ranks**")
        st.table({"": [k for k, _ in ranks], "value": [v for _, v in ranks]})   # wraps its long lines
    with st.expander("All figures and settings", expanded=current.status != "done"):
        st.dataframe([{"": k, "value": v} for k, v in summary_rows(current, store=store)], hide_index=True)
        st.json(current.config, expanded=False)
    samples = store.metrics(run_id, "telemetry")
    if samples:
        st.plotly_chart(charts.telemetry(samples, label), theme=None, key=f"telemetry_{run_id}")
    elif current.finished:
        st.caption(f"No telemetry was recorded for this run: {views.why_no_telemetry(current)}.")
    log, hidden = views.log_lines(current.log_tail)
    if log:
        with st.expander("Log tail", expanded=current.status == "failed"):
            st.code(log, language=None)
            if hidden:
                st.caption(f"{views.count(hidden, 'line')} of profiler and CUDA-probe chatter left out; the whole log "
                           f"is {store.artifacts_dir(run_id, create=False) / 'worker.log'}.")
    events = store.events(run_id)
    if events:
        with st.expander(f"Events ({len(events)})", expanded=current.status == "failed"):
            for e in events:
                st.text(f"{views.when(e['t'])} {e['level']}: {e['message']}")


run_panel(run.id)
job = compression(store, run.id) if run.status == "done" else None
if job and job.running:
    @st.fragment(run_every=REFRESH_S)
    def watch_compression():
        now = compression(store, run.id)
        if not (now and now.running):
            st.rerun()               # done: draw the variants
    watch_compression()
