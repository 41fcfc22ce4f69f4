"""Autotune: "as fast as possible, losing at most X points of accuracy against this run". Start a
tuning (optlab.autotune: Optuna asks, each trial an ordinary run in the queue) and follow it: every
trial's speed against its accuracy, the winner, the Pareto front, and whether the winner really
beats the runner-up. The tuning shown is the one in the address (?tune=ID)."""
from __future__ import annotations

import streamlit as st

from optlab import autotune, charts, views
from optlab.config import ConfigError
from optlab.store import Store

REFRESH_S = 3

store = Store()
state = st.session_state
info = state["device_info"]

st.title("Autotune")
st.caption("Optuna searches the knobs you pick; each trial is an ordinary run in the queue (on Runs and Compare "
           "like any other). A trial that loses more accuracy than the budget is never the winner. At the end the "
           "winner and the runner-up run again, so the verdict between them rests on repeats.")

done = [r for r in store.list(status="done") if (r.summary or {}).get("test_accuracy") is not None]
names = views.run_names(done)
with st.expander("Start a tuning", expanded=not autotune.tunings(store), icon=":material/tune:"):
    if not done:
        st.info("A tuning starts from a finished run: launch one from the Lab first.", icon=":material/info:")
    else:
        by_id = {r.id: r for r in done}
        mine = [r.id for r in done if r.user == state.get("user", "")] or list(by_id)
        reference = st.selectbox("Against run", list(by_id), index=list(by_id).index(mine[0]), key="tune_ref",
                                 format_func=lambda i: views.run_choice(by_id[i], names[i]),
                                 help="Its accuracy sets the budget; its other settings are kept in every trial.")
        objective = st.radio("Make it fast at", autotune.OBJECTIVES.names(), horizontal=True, key="tune_objective",
                             format_func=lambda k: autotune.OBJECTIVES.get(k).title)
        default_knobs = list(autotune.OBJECTIVES.get(objective).knobs)
        offered = [k for k in autotune.KNOBS.names() if objective != "training" or k != "compression"]
        knobs = st.multiselect("Knobs to search", offered, default=default_knobs,
                               key=f"tune_knobs_{objective}", format_func=lambda k: autotune.KNOBS.get(k).title)
        a, b, c, d = st.columns(4)
        budget = a.number_input("Accuracy budget (points)", 0.0, 100.0, 1.0, 0.5, key="tune_budget",
                                help="How many points of test accuracy a trial may lose against the run above.")
        trials = b.number_input("Trials", 1, autotune.MAX_TRIALS, 8, key="tune_trials")
        minutes = c.number_input("At most (minutes, 0 = no limit)", 0, 24 * 60, 0, key="tune_minutes")
        confirm = d.number_input("Confirmation runs", 0, 10, 3, key="tune_confirm",
                                 help="Runs each for the winner and the runner-up at the end: their verdict then "
                                      "rests on repeats, not on one run each.")
        if st.button("Start tuning", type="primary", icon=":material/rocket_launch:", key="tune_start",
                     disabled=not knobs):
            spec = autotune.Spec(reference=reference, budget_points=float(budget), objective=objective, knobs=knobs,
                                 trials=int(trials), minutes=float(minutes) or None, confirm=int(confirm))
            try:
                started = autotune.start(store, spec, user=state.get("user", ""),
                                         device_for=lambda cfg: views.target_device(cfg.device, info))
            except ConfigError as e:
                st.error(views.md_text(e), icon=":material/error:")
            else:
                st.query_params["tune"] = started.id
                st.rerun()

tunings = autotune.tunings(store)
wanted = st.query_params.get("tune")
if wanted is not None and wanted not in {t.id for t in tunings}:
    st.error(f"There is no tuning {views.md_text(wanted)} in this store: it was deleted, or the link comes from "
             "another OptLab server.", icon=":material/link_off:")
    st.stop()
if not tunings:
    st.stop()
ids = [t.id for t in tunings]
chosen = st.selectbox("Tuning", ids, index=ids.index(wanted) if wanted else 0, key="tune_shown",
                      format_func=lambda i: next(f"{t.id} · {t.state} · run #{t.spec.reference} · {t.spec.objective} · "
                                                 f"{t.spec.budget_points:g} points · {views.when(t.created_at)}"
                                                 for t in tunings if t.id == i))
st.query_params["tune"] = chosen


@st.fragment(run_every=REFRESH_S if next(t for t in tunings if t.id == chosen).state in autotune.ACTIVE else None)
def tuning_view(tuning_id: str) -> None:
    out = autotune.result(store, tuning_id)
    t, objective, ref = out["tuning"], autotune.OBJECTIVES.get(out["objective"]["key"]), out["reference"]
    finished = [x for x in out["trials"] if x["state"] in ("complete", "fail")]
    st.markdown(f"**{t['state'].capitalize()}** · {len(finished)} of {t['spec']['trials']} trials finished · "
                f"searching {', '.join(autotune.KNOBS.get(k).title for k in autotune.Spec(**t['spec']).searched)}"
                + (f" · {views.md_text(t['note'])}" if t["note"] else ""))
    if not any(x["speed"] is not None for x in out["trials"]):
        st.info("No trial has finished yet: the chart appears with the first.", icon=":material/hourglass_top:")
    else:
        st.plotly_chart(charts.tuning_scatter(out), theme=None, key="tuning")
    if out["winner"]:
        w = out["winner"]
        st.success(f"**Winner: trial {w['index']}** (run #{w['run_id']}): "
                   f"{views.md_text(autotune.describe(w['params'], out['device']))} · {autotune.speed_word(objective, w['speed'])} · "
                   f"{100 * w['accuracy']:.1f} % accuracy (reference {autotune.speed_word(objective, ref['speed'])}, "
                   f"{100 * ref['accuracy']:.1f} %)", icon=":material/emoji_events:")
        c = out["confidence"]
        basis = {"between repeats": "between the confirmation repeats",
                 "within run": "within-run intervals only: run-to-run noise left out",
                 "no interval": "no interval"}.get(c.get("basis"), c.get("basis") or "")
        st.markdown(f"Against the runner-up: {views.md_text(c['text'])}" + (f" ({basis})" if basis else ""))
    st.dataframe([{"trial": x["index"], "run": x["run_id"], "state": x["state"],
                   "settings": autotune.describe(x["params"], out["device"]), objective.unit: x["speed"],
                   "accuracy %": None if x["accuracy"] is None else round(100 * x["accuracy"], 2),
                   "within budget": x["within_budget"], "Pareto": x["number"] in out["pareto"],
                   "why it failed": x["error"]} for x in out["trials"]], hide_index=True, placeholder=views.MISSING,
                 column_config={objective.unit: st.column_config.NumberColumn(
                     format="%,.0f" if objective.higher_is_better else "%.2f")})
    cols = st.columns(2)
    cols[0].page_link("app_pages/compare.py", label="Compare these trials", icon=":material/insights:",
                      query_params={"sweep": tuning_id})
    if t["state"] in autotune.ACTIVE and cols[1].button("Stop asking for trials", icon=":material/stop_circle:",
                                                       key="tune_stop"):
        st.toast(autotune.stop(store, tuning_id))
        st.rerun()


tuning_view(chosen)
