"""Workshop: join the room, follow a lesson, see the room's results; the instructor's view."""
from __future__ import annotations

import time

import streamlit as st

from app_pages import _room
from optlab import fairuse, lessons, people, room_charts, share, views
from optlab.config import ConfigError
from optlab.store import Store

METRIC_WORD = "faster"   # every lesson metric is a speed: throughput, time to target, latency

store = Store()
state = st.session_state
person = state.get("person")

st.title("Workshop")


def when(ts):
    return "unknown" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def queue_rows(places, only_user=None):
    return [{"place": p["place"], "run": f"#{p['run'].id} {views.run_name(p['run'])}", "person": p["user"],
             "expected start": when(p["expected_start"]),
             "estimated length": f"{p['estimate'].seconds:.0f} s" if p["estimate"].seconds else "no estimate",
             "estimate from": p["estimate"].basis}
            for p in places if only_user is None or p["user"] == only_user]


# -- who you are -----------------------------------------------------------------------------------
if person is None:
    st.caption("Join with a name: your runs carry it, and only you (and the instructor) can cancel or delete them.")
    with st.form("room_join", border=True):
        name = st.text_input("Name", max_chars=people.NAME_MAX, key="room_name")
        joined = st.form_submit_button("Join", type="primary", icon=":material/login:")
    if joined:
        try:
            person, token = people.join(store, name)
        except people.JoinError as e:
            st.error(str(e).replace("*", "").replace("[", "("), icon=":material/error:")
        else:
            _room.remember(token)
            state["_room_new_token"] = token
            st.rerun()
else:
    token = state.pop("_room_new_token", None)
    st.text(f"You are {person.name}" + (" (instructor)" if person.is_instructor else ""))
    if token:
        st.success("Joined. This browser remembers you. To come back from another browser, keep your "
                   "personal link (it is your key: do not share it):", icon=":material/key:")
        st.code(_room.personal_link(token), language=None)
    if not person.is_instructor:
        with st.expander("Instructor"):
            secret = st.text_input("Instructor secret", type="password", key="room_secret")
            if st.button("I am the instructor", key="room_promote") and secret:
                try:
                    people.promote(store, person, secret)
                    st.rerun()
                except people.JoinError as e:
                    st.error(str(e), icon=":material/error:")
    waiting = queue_rows(fairuse.queue_places(store), only_user=person.name)
    if waiting:
        st.markdown(f"**Your runs in the queue** ({len(waiting)}; the queue is "
                    f"{'paused by the instructor' if fairuse.paused(store) else 'moving'})")
        st.dataframe(waiting, hide_index=True)
    if st.button("Leave (forget me in this browser)", key="room_leave", icon=":material/logout:"):
        _room.forget()
        st.rerun()

# -- lessons ---------------------------------------------------------------------------------------------
info = state["device_info"]
device_class = "gpu" if info.is_gpu else "cpu"
all_lessons = lessons.load()
by_id = {lesson.id: lesson for lesson in all_lessons}
user = person.name if person else state.get("user", "")

tab_names = ["Lessons", "Room board"] + (["Instructor"] if person and person.is_instructor else [])
tabs = dict(zip(tab_names, st.tabs(tab_names)))


with tabs["Lessons"]:
    if not info.is_gpu:
        st.info("**No GPU on this server:** each lesson runs a small CPU version (fewer images, a smaller model). "
                "CPU figures are not GPU figures; each lesson says what to expect on both.", icon=":material/computer:")
    lesson = by_id[st.selectbox("Lesson", list(by_id), key="room_lesson", format_func=lambda i: by_id[i].title)]
    st.markdown(f"**{lesson.question}**")
    expected = lesson.expected[device_class]
    left, right = st.columns(2)
    with left:
        st.markdown("**Runs to launch**")
        for label, cfg in lesson.configs(device_class):
            changes = cfg.changes_from(lesson.configs(device_class)[0][1])
            st.markdown(f"- {label}" + (f" — `{changes}`" if changes else ""))
        st.markdown("**Look at**\n" + "\n".join(f"1. {item}" for item in lesson.look_at))
        st.caption("Knobs that matter here: " + ", ".join(views.KNOBS[k].label if k in views.KNOBS else k
                                                           for k in lesson.knobs))
    with right:
        st.markdown(f"**Expected on {'this GPU' if info.is_gpu else 'the CPU'}:** {expected['verdict']}")
        st.write(expected["text"])
        st.caption(f"Source: {expected['source']}")
    if st.button("Launch this lesson's runs", type="primary", icon=":material/rocket_launch:", key="room_launch"):
        try:
            sweep_id, ids = lessons.launch(store, lesson, user, device_class)
            st.success(f"Queued {len(ids)} runs (#{ids[0]}–#{ids[-1]}).", icon=":material/check_circle:")
        except ConfigError as e:   # fairuse.Refused is a ConfigError
            st.error(f"Nothing was queued: {e}", icon=":material/block:")

    _, baseline = lesson.configs(device_class)[0]
    st.page_link("app_pages/lab.py", label="Open the baseline in the Lab (this lesson's knobs only)",
                 icon=":material/science:", query_params={"setup": share.encode(baseline), "lesson": lesson.id})
    mine = list(lessons.attempts(store, lesson, user).values()) if user else []

    @st.fragment(run_every=3 if mine and not all(r.finished for r in mine[-1]) else None)
    def own_results():
        attempts = list(lessons.attempts(store, lesson, user).values())
        if not attempts:
            st.caption("Your results appear here once you launch the lesson.")
            return
        runs = attempts[-1]
        st.markdown(f"**Your latest attempt** ({len(attempts)} so far)")
        for run in runs:
            fraction, text = views.progress_of(run)
            st.progress(1.0 if run.finished else fraction,
                        text=f"#{run.id} {run.label} — " + (run.status if run.finished else f"{run.status}: {text}"))
        for r in lessons.results(lesson, runs):
            interval = f" (95 % interval {r['ci95'][0]:.2f}x–{r['ci95'][1]:.2f}x)" if r["ci95"] else ""
            st.metric(f"{r['label']} against the baseline", f"{r['ratio']:.2f}x {METRIC_WORD}",
                      help=f"{lessons.METRICS[lesson.metric].label}; >1 is better", border=True)
            st.caption(f"Measured: {r['verdict']}{interval}. Expected: {expected['verdict']}. "
                       f"Device: {r.get('device') or 'not recorded'}.")
            if lessons.surprising(lesson, r, device_class):
                st.warning(f"**A surprise: the opposite of what was expected.** {lesson.surprise}",
                           icon=":material/lightbulb:")
        st.page_link("app_pages/compare.py", label="Compare these runs", icon=":material/insights:",
                     query_params={"sweep": runs[0].sweep_id})

    own_results()

# -- the room board ------------------------------------------------------------------------------------------
with tabs["Room board"]:
    board_lesson = by_id[st.selectbox("Lesson", list(by_id), key="room_board_lesson",
                                      format_func=lambda i: by_id[i].title)]

    @st.fragment(run_every=5)
    def room_board():
        if board_lesson.metric == "time_to_target_s":
            rows = lessons.leaderboard(store, board_lesson, device_class)
            _, ref = board_lesson.configs(device_class)[0]
            st.markdown(f"**Leaderboard: training seconds to {ref.target_accuracy:.0%} on {ref.dataset}**")
            if not rows:
                st.caption("No finished run with this target yet.")
                return
            st.dataframe([{"#": n, "person": r["user"], "run": r["run_id"], "seconds to target": r["time_to_target_s"],
                           "best accuracy %": 100 * r["best_accuracy"], "epochs": r["epochs"], "settings": r["changes"],
                           "device": r["device_label"]} for n, r in enumerate(rows, start=1)], hide_index=True,
                         column_config={"seconds to target": st.column_config.NumberColumn(format="%.2f"),
                                        "best accuracy %": st.column_config.NumberColumn(format="%.2f")})
            return
        rows = lessons.board(store, board_lesson)
        done = lessons.progress(store, board_lesson)
        st.caption(f"Launched by {done['launched']} {'person' if done['launched'] == 1 else 'people'}; "
                   f"finished: {done['finished']}.")
        if not rows:
            st.caption("No results yet: a result needs the baseline and a change both finished.")
            return
        st.plotly_chart(room_charts.lesson_board(rows, board_lesson.title, METRIC_WORD), theme=None,
                        key="room_board_chart")

    room_board()

# -- the instructor's view -------------------------------------------------------------------------------
if "Instructor" in tabs:
    with tabs["Instructor"]:
        halted = fairuse.paused(store)
        st.text(f"Queue: {'paused' if halted else 'running'} · limits: {fairuse.Limits.from_env().describe()}")
        if st.button("Resume the queue" if halted else "Pause the queue", key="room_pause",
                     icon=":material/play_arrow:" if halted else ":material/pause:"):
            fairuse.set_paused(store, not halted, by=person.name)
            st.rerun()

        pinned = fairuse.setting(store, "lab_focus")
        choice = st.selectbox("Lab settings for every participant", ["all", *by_id], key="room_pin",
                              index=([*by_id].index(pinned) + 1) if pinned in by_id else 0,
                              format_func=lambda i: "every setting" if i == "all" else f"only {by_id[i].title}'s",
                              help="Pin a lesson: every participant's Lab shows only that lesson's settings.")
        if (choice if choice != "all" else None) != pinned:
            fairuse.set_setting(store, "lab_focus", None if choice == "all" else choice)

        @st.fragment(run_every=3)
        def room_status():
            if info.is_gpu:
                snap = views.gpu_snapshot(info.index or 0) or {}
                st.text(f"GPU utilisation {snap.get('gpu_util_pct', 'n/a')} % · memory used "
                        f"{snap.get('mem_used_mb', 'n/a')} MB")
            running = store.list(status="running")
            st.markdown(f"**Running now** ({len(running)})")
            if running:
                st.dataframe([{"person": r.user, "run": f"#{r.id} {views.run_name(r)}",
                               "running for": f"{time.time() - (r.started_at or time.time()):.0f} s",
                               "progress": views.progress_of(r)[1]} for r in running], hide_index=True)
            waiting = queue_rows(fairuse.queue_places(store))
            st.markdown(f"**Queue** ({len(waiting)}, in the order runs will start)")
            if waiting:
                st.dataframe(waiting, hide_index=True)
            st.markdown("**Lesson progress**")
            st.dataframe([{"lesson": l.title, **{k: v for k, v in lessons.progress(store, l).items() if k != "people"},
                           "who": ", ".join(lessons.progress(store, l)["people"])} for l in all_lessons],
                         hide_index=True)
            st.markdown("**People**")
            st.dataframe([{"name": p.name, "role": p.role, "joined": when(p.joined_at)} for p in people.people(store)],
                         hide_index=True)

        room_status()
