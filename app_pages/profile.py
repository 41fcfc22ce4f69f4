"""Profile: where one run's time went in its profiled window, what to try next, and whether the
try did what was predicted. Works offline: the figures come from the run's own profile summary
(or its trace file), not from TensorBoard's page."""
from __future__ import annotations

import streamlit as st

from optlab import advisor, profile_charts, profiling, repeats, report, tensorboard, views
from optlab.config import ConfigError
from optlab.store import Store

store = Store()
state = st.session_state
METRIC_WIDTH, CHART_WIDTH = 200, 400   # px


@st.cache_data(show_spinner="Reading the trace…", max_entries=8)
def trace_summary(path: str, modified: float) -> dict:
    """Summary of a trace file (old runs without one in their summary; shared traces)."""
    return profiling.summarize_trace_file(path)


def draw_profile(profile: dict, device_label: str | None, key: str, summary: dict | None = None) -> None:
    if profile.get("reason"):
        st.info(profile["reason"], icon=":material/info:")
    util, host, tc = profile.get("utilisation") or {}, profile.get("host") or {}, profile.get("tensor_cores") or {}
    gpu = profile_charts.on_gpu(profile)
    # Fixed-width metrics and charts in rows that wrap: two charts side by side from 1280 px wide
    # windows, one a row at 1024 px, never squeezed until their titles and ticks run together.
    metrics = st.container(horizontal=True, gap="small")
    metrics.metric("GPU busy" if gpu else "CPU: inside operators",
                   f"{100 * util['busy_share']:.0f} %" if util.get("busy_share") is not None else "n/a",
                   width=METRIC_WIDTH)
    metrics.metric("Step (wall)", f"{host['step_ms']:,.1f} ms" if host.get("step_ms") else "n/a",
                   help=f"mean of {profile.get('steps')} profiled steps", width=METRIC_WIDTH)
    metrics.metric("Host per step" if gpu else "Outside operators per step",
                   f"{host['host_ms']:,.1f} ms" if gpu else f"{host['step_ms'] - host['device_ms']:,.1f} ms",
                   width=METRIC_WIDTH)
    metrics.metric("Tensor Core share", f"{100 * tc['share']:.0f} %" if tc.get("share") is not None else "n/a",
                   help=tc.get("reason") or ("estimated from kernel names (see below)" if gpu else
                                             "a CPU has no Tensor Cores"), width=METRIC_WIDTH)
    figures = profile_charts.profile_figures(profile, device_label)
    row = st.container(horizontal=True, gap="small")
    left, right = row.container(width=CHART_WIDTH), row.container(width=CHART_WIDTH)
    left.plotly_chart(figures["categories"], theme=None, key=f"{key}_categories")
    note = profile_charts.input_note(profile, summary or {})
    if note:
        left.caption(note)
    right.plotly_chart(figures["busy"], theme=None, key=f"{key}_busy")
    right.plotly_chart(figures["host"], theme=None, key=f"{key}_host")
    if "memory" in figures:
        left.plotly_chart(figures["memory"], theme=None, key=f"{key}_memory")
    elif profile.get("memory_reason"):
        left.caption(profile["memory_reason"])
    st.subheader(f"Top {profile.get('top_kind', 'operators')}")
    st.dataframe(profile_charts.top_rows(profile), hide_index=True, key=f"{key}_top",
                 column_config={"ms": st.column_config.NumberColumn(format="%.2f"),
                                "mean µs": st.column_config.NumberColumn(format="%.1f"),
                                "share %": st.column_config.NumberColumn(format="%.1f")})
    with st.expander("How these figures are defined"):
        for text in (profile.get("definitions") or {}).values():
            st.markdown(f"- {text}")
        st.markdown(f"- **Tensor Cores.** {tc.get('heuristic', '')}")


def draw_advice(run, summary: dict) -> None:
    st.header("What to try next")
    items = advisor.advise(summary, run.config, run.device)
    if not items:
        st.caption("No rule found its evidence in this run's figures.")
    for n, a in enumerate(items):
        with st.container(border=True):
            st.markdown(f"**{a.title}** — {a.why}")
            rng = f" (range x{a.expected_range[0]:.2f} to x{a.expected_range[1]:.2f})" if a.expected_range else ""
            st.markdown(f"Expected: **{a.expected}**{rng}  \n:small[Source: {a.prediction_source}]")
            with st.expander("Evidence"):
                st.json(a.evidence)
            if a.tryable:
                change = advisor.describe_change(a.change, summary.get("device"))
                tried = advisor.tried_child(store, run, a)
                if tried is not None:   # one run per change: a second click (or visitor) finds it here
                    st.success(f"Tried as run #{tried} ({change}); its outcome appears below when it is done.",
                               icon=":material/check:")
                    st.page_link("app_pages/runs.py", label=f"Watch run #{tried}", icon=":material/visibility:",
                                 query_params={"run": str(tried)})
                elif st.button(f"Try it: {change}", key=f"try_{run.id}_{a.rule}_{n}"):
                    try:   # the room's limits (optlab.fairuse) may refuse it, with the reason
                        advisor.try_advice(store, run, a, user=state.get("user", ""))
                    except ConfigError as e:
                        st.error(f"Nothing was queued: {e}", icon=":material/block:")
                        continue
                    st.rerun()
    # A try with repeats queued several children: one outcome per repeat group.
    tried = [r for r in store.list(newest_first=False) if r.parent_id == run.id and store.metrics(r.id, "advice")]
    children = repeats.units(tried)
    if children:
        st.subheader("Tried: predicted vs measured")
    for unit in children:
        child = next((r for r in unit if r.status == "done"), unit[0])
        outcome = advisor.advice_outcome(store, child.id)
        ids = ", ".join(f"#{r.id}" for r in unit)
        if outcome is None:
            st.text(f"{ids} {child.label or ''}: {', '.join(sorted({r.status for r in unit}))}"
                    + (f" ({child.error})" if child.error else ""))
            continue
        st.markdown(views.md_escape(f"{ids} {outcome['title']}: ") + views.outcome_text(outcome))
        if outcome["why"]:
            st.caption(outcome["why"])


def draw_traces(run) -> None:
    folder = profiling.run_trace_dir(store, run)
    files = profiling.trace_files(folder)
    st.header("Trace files")
    if not files:
        st.caption(f"No trace: {profiling.why_no_trace(store, run)}")
        return
    st.caption("Open them in Perfetto (ui.perfetto.dev) or chrome://tracing for the full timeline.")
    cols = st.columns(len(files) + 1)
    for col, f in zip(cols, files):
        col.download_button(f"Download {f.name.split('.', 1)[0]} trace", f.read_bytes(), file_name=f.name,
                            mime="application/gzip", key=f"download_{f.name}")
    if cols[-1].button("Open in TensorBoard", key="open_tb"):
        try:
            tb = tensorboard.start(store.home)
            state["tb_link"] = tensorboard.run_link(tb, folder, store.home)
        except tensorboard.TensorBoardError as e:
            st.error(str(e))
    link = state.get("tb_link")
    if link:
        st.markdown(f"[Open TensorBoard]({link['url']}) and choose run **{link['run']}** in its Runs list.")
        st.caption(link["note"] + " The figures on this page need no internet.")


st.title("Profile")
runs = store.list(status="done")
by_id = {r.id: r for r in runs}
wanted = st.query_params.get("run")
if wanted is not None and not (wanted.isdigit() and int(wanted) in by_id):
    # A link to a run with nothing to show says so, and shows nothing else (no other run's profile).
    linked = store.get(int(wanted)) if wanted.isdigit() else None
    if linked is None:
        st.error(f"There is no run {views.md_text(wanted)} in this store: it was deleted, or the link comes from "
                 "another OptLab server.", icon=":material/link_off:")
    else:
        st.warning(f"Run #{linked.id} has no profile: it {views.md_text(views.how_it_ended(linked))}."
                   + (" Its profile appears here when it is done." if not linked.finished else ""),
                   icon=":material/info:")
        st.page_link("app_pages/runs.py", label=f"Run #{linked.id} on the Runs page", icon=":material/visibility:",
                     query_params={"run": str(linked.id)})
    st.page_link("app_pages/profile.py", label="Profiles of finished runs", icon=":material/speed:")
    st.stop()
if not runs:
    st.info("No finished runs yet. Launch one from the Lab page; runs profile a short window by default.",
            icon=":material/info:")


def show_in_address() -> None:
    st.query_params["run"] = str(state["profile_run"])


if wanted is not None and state.get("_profile_from") != wanted:
    state["_profile_from"] = wanted
    state["profile_run"] = int(wanted)
if runs:
    names = views.run_names(runs)
    run_id = st.selectbox("Run", list(by_id), key="profile_run", on_change=show_in_address,
                          format_func=lambda i: views.run_choice(by_id[i], names[i])
                          + f" · {(by_id[i].summary or {}).get('device_label', '')}")
    show_in_address()                    # a reload, or the address shared, opens this run
    run = by_id[run_id]
    summary = dict(run.summary or {})
    label = summary.get("device_label")
    if not summary.get("profile"):
        files = profiling.trace_files(profiling.run_trace_dir(store, run), "train")
        if files:   # an older run: summarise its trace file instead
            summary["profile"] = trace_summary(str(files[-1]), files[-1].stat().st_mtime)
    windows = {name: summary[key] for name, key in (("Training window", "profile"),
                                                    ("Inference window", "profile_inference")) if summary.get(key)}
    if windows:
        choice = st.segmented_control("Window", list(windows), default=list(windows)[0], key="profile_window")
        draw_profile(windows.get(choice) or next(iter(windows.values())), label, "run",
                     summary if choice != "Inference window" else None)
    else:
        st.warning(f"Run #{run.id} has no profile: {views.md_text(profiling.why_no_trace(store, run))}",
                   icon=":material/warning:")
    draw_advice(run, summary)
    draw_traces(run)
    st.download_button("Download report", **report.download(store, [run.id]), on_click="ignore",
                       icon=":material/download:", help="This run's profile, advice and charts in one offline HTML file.")

with st.expander("Open a shared trace file"):
    upload = st.file_uploader("A torch.profiler trace (.pt.trace.json or .json.gz)", type=["json", "gz"])
    if upload is not None:
        try:
            shared = profiling.summarize_uploaded_trace(upload.name, upload.getvalue())
        except ValueError as e:
            st.error(views.md_text(e), icon=":material/error:")
            shared = None
        if shared:
            draw_profile(shared, shared.get("device_name") or ("a GPU (from a trace file)" if shared["device"] == "cuda"
                                                                else "a CPU (from a trace file)"), "shared")
