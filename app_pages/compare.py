"""Compare: pick finished runs (or a sweep) and see what each knob did to speed, memory and accuracy."""
from __future__ import annotations

import streamlit as st

from app_pages import _ladder
from optlab import charts, ladder, report, views
from optlab.store import Store

OUTCOMES = [("train_images_per_s", "images/s"), ("test_accuracy", "accuracy %"), ("peak_memory_mb", "peak MB")]
DEFAULT_COUNT = 6

REFRESH_S = 2

store = Store()
state = st.session_state

st.title("Compare")
done = store.list(status="done")         # one query; newest first
by_id = {r.id: r for r in done}
sweeps = views.sweeps(done)

# -- a link to one sweep (?sweep=ID): that sweep only, finished or not ----------------------------------
wanted = st.query_params.get("sweep")
def sweep_members(name: str) -> list:
    """A sweep's runs, or a repeat group's (a single config repeated), in submission order."""
    return store.list(sweep_id=name, newest_first=False) or store.list(repeat_group=name, newest_first=False)


members = sweep_members(wanted) if wanted else []
if wanted is not None and not members:
    st.error(f"There is no sweep {views.md_text(wanted)} in this store: it was deleted, or the link comes from "
             "another OptLab server.", icon=":material/link_off:")
    st.page_link("app_pages/compare.py", label="Compare other runs", icon=":material/insights:")
    st.stop()


@st.fragment(run_every=REFRESH_S if any(r.status in views.ACTIVE for r in members) else None)
def sweep_progress():
    """The linked sweep's runs as they go; the page redraws its charts each time one finishes."""
    now = sweep_members(wanted)
    if [r.status for r in now] != [r.status for r in members]:
        st.rerun()
    done_now = sum(r.status == "done" for r in now)
    if done_now == len(now):
        return
    active = any(r.status in views.ACTIVE for r in now)
    st.info(f"Sweep {views.md_text(wanted)}: {done_now} of {views.count(len(now), 'run')} done. "
            + ("This page adds each run to the charts as it finishes." if active else
               "The others did not finish: see why below." if done_now else
               "None finished, so there is nothing to draw: see why below."),
            icon=":material/hourglass_top:" if active else ":material/info:")
    names = views.run_names(now)
    for run in now:
        name = f"**#{run.id}** {views.md_text(run.label or names[run.id])}"
        if run.finished:
            st.markdown(f"{views.STATUS_ICONS.get(run.status, '')} {name} {views.md_text(views.how_it_ended(run))}")
        else:
            fraction, text = views.progress_of(run)
            st.progress(fraction, text=f"{name} — {text}")


if members:
    sweep_progress()
    if not any(r.status == "done" for r in members):
        st.stop()                        # nothing of this sweep to draw yet, and nothing else belongs here

if not done:
    st.info("Nothing to compare yet: runs appear here once they finish.", icon=":material/info:")
    st.page_link("app_pages/lab.py", label="Launch runs from the Lab", icon=":material/science:")
else:
    # -- which runs ------------------------------------------------------------------------------
    # Streamlit forgets a page's widgets while another page is shown; copies under "_" keys keep
    # this visitor's choice of runs across page visits. A sweep is also kept in the address.
    for key in ("compare_mode", "compare_sweep", "compare_ids"):
        if key not in state and "_" + key in state:
            state[key] = state["_" + key]
    if wanted in sweeps:
        state["compare_mode"], state["compare_sweep"] = "A sweep", wanted
    modes = ["A sweep", "Runs I pick"] if sweeps else ["Runs I pick"]
    if state.get("compare_mode") not in modes:
        state["compare_mode"] = modes[0]

    def show_in_address() -> None:
        if state.get("compare_mode") == "A sweep" and state.get("compare_sweep"):
            st.query_params["sweep"] = state["compare_sweep"]
        else:
            st.query_params.pop("sweep", None)

    mode = (st.radio("Compare", modes, key="compare_mode", horizontal=True, label_visibility="collapsed",
                     on_change=show_in_address) if len(modes) > 1 else modes[0])
    if mode == "A sweep":
        if state.get("compare_sweep") not in sweeps:
            state["compare_sweep"] = next(iter(sweeps))
        sweep = st.selectbox("Sweep", list(sweeps), key="compare_sweep", on_change=show_in_address,
                             format_func=lambda s: (
                                 f"{s} · {views.count(len(sweeps[s]), 'finished run')} · "
                                 f"{', '.join(views.varying_knobs(sweeps[s])) or 'one setting'} · "
                                 f"{views.when(sweeps[s][-1].created_at)}"))
        selected = sorted(sweeps[sweep], key=lambda r: r.id)
    else:
        state["compare_ids"] = [i for i in state.get("compare_ids", sorted(list(by_id)[:DEFAULT_COUNT]))
                                if i in by_id]
        names = views.run_names(done)
        ids = st.multiselect("Runs", list(by_id), key="compare_ids", placeholder="Choose finished runs",
                             format_func=lambda i: views.run_choice(by_id[i], names[i]))
        selected = [by_id[i] for i in sorted(ids)]
    for key in ("compare_mode", "compare_sweep", "compare_ids"):
        if key in state:
            state["_" + key] = state[key]

    if not selected:
        st.info("Choose at least one run.")
    else:
        rows = views.figure_rows(selected)     # one row per run, or per repeat group
        label_of = {r["id"]: r["label"] for r in rows}
        run_labels = views.short_labels(selected)
        on = views.devices(selected)
        if len(on) > 1:
            st.warning("**These runs were measured on different devices** (" + "; ".join(on) + "). "
                       "Speed and memory differences mix the knobs with the hardware.", icon=":material/warning:")
        elif on and not on[0].startswith("GPU"):
            st.info(f"All figures below are **CPU figures** ({on[0]}), not GPU figures.", icon=":material/computer:")

        if mode == "A sweep" and ladder.is_ladder(sweep):     # a ladder reads rung by rung first
            _ladder.draw(sweep_members(sweep))
        baseline_id = st.selectbox("Baseline for speed-up", [r["id"] for r in rows], format_func=label_of.get,
                                   help="Speed-ups are this run's (or repeat group's) training throughput divided "
                                        "into each run's.")
        baseline = next(r for r in rows if r["id"] == baseline_id)

        # -- is it a difference? --------------------------------------------------------------------
        if len(rows) > 1:
            st.subheader("Is it a difference?")
            for v in views.speed_verdicts(rows, baseline):
                icon = {"better": ":material/trending_up:", "worse": ":material/trending_down:"}.get(
                    v["verdict"], ":material/drag_handle:")
                st.markdown(f"{icon} {views.md_escape(v['text'])}")
        st.caption(views.interval_note(rows))
        thin = [r for r in rows if r["thin"]]
        if thin:
            st.warning("**Thin measurement** (too few steady steps or too little steady time to rely on; drawn "
                       "hatched): " + views.md_escape("; ".join(f"{r['label']}: {r['thin_why']}" for r in thin)),
                       icon=":material/warning:")

        # -- the charts ---------------------------------------------------------------------------
        st.plotly_chart(charts.pareto_scatter(rows), theme=None, key="pareto")
        for line in views.unmeasured(selected):    # a run missing from a chart is never missing without a word
            st.caption(f":material/info: Left out where a chart needs the figure: {views.md_text(line)}.")
        # one above the other: side by side, a column is too narrow for the runs' names at 1024 px
        st.plotly_chart(charts.throughput_bars(rows), theme=None, key="throughput")
        st.plotly_chart(charts.speedup_bars(rows, baseline), theme=None, key="speedup")
        st.plotly_chart(charts.memory_bars(rows), theme=None, key="memory")
        curves = views.epoch_curves(store, [r.id for r in selected])
        targets = {r.config.get("target_accuracy") for r in selected}
        unit_of = {i: r["label"] for r in rows for i in r["ids"] if r["repeats"] > 1}
        st.plotly_chart(charts.accuracy_curves(
            [{"label": run_labels[r.id], "group": unit_of.get(r.id), "device_label": views.device_label(r),
              "epochs": curves[r.id]} for r in selected],
            target=targets.pop() if len(targets) == 1 else None), theme=None, key="curves")
        knobs = views.varying_knobs(selected)
        if knobs:
            st.plotly_chart(charts.parallel_knobs(rows, [(f"knob:{k}", k) for k in knobs], OUTCOMES),
                            theme=None, key="parallel")
        else:
            st.caption("Choose runs whose settings differ to see which knob led where (parallel coordinates).")

        with_variants = [r for r in selected if (r.summary or {}).get("variants")]
        if with_variants:
            from optlab.variant_charts import variants_figure
            st.subheader("Compressed variants")
            for r in with_variants:
                st.caption(f"Run {views.md_text(run_labels[r.id])}")
                st.plotly_chart(variants_figure(r.summary["variants"], title=f"Variants of #{r.id}: accuracy vs latency"),
                                theme=None, key=f"variants_{r.id}")

        # -- the figures as a table ---------------------------------------------------------------
        st.subheader("Figures")
        table = views.table_rows(selected)
        st.dataframe(table, hide_index=True, placeholder=views.MISSING, column_config={
            k: st.column_config.NumberColumn(format=f) for k, f in views.TABLE_FORMATS.items()})
        st.download_button("Download CSV", views.to_csv(table), file_name="optlab-comparison.csv",
                           mime="text/csv", icon=":material/download:")
        st.download_button("Download report", **report.download(store, [r.id for r in selected]), on_click="ignore",
                           icon=":material/download:", help="One HTML file with these runs' charts; opens offline.")
