"""Workshop: join the room, follow a lesson, see the room's results; the instructor's view."""
from __future__ import annotations

import streamlit as st

from app_pages import _room
from optlab import people
from optlab.store import Store

store = Store()
state = st.session_state
person = state.get("person")

st.title("Workshop")

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
    if st.button("Leave (forget me in this browser)", key="room_leave", icon=":material/logout:"):
        _room.forget()
        st.rerun()
